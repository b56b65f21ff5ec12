"""The test session never touches the person's own data and settings folders."""

from __future__ import annotations

from pathlib import Path

import platformdirs

from engine import locations, models, sidecar


def test_data_and_config_dirs_are_private_to_the_session() -> None:
    for folder, default in ((locations.data_dir(), platformdirs.user_data_dir(locations.APP_NAME)),
                            (locations.config_dir(), platformdirs.user_config_dir(locations.APP_NAME))):
        assert folder.resolve() != Path(default).resolve()
    assert locations.data_dir() / "sidecars" in sidecar.sidecar_dirs()


def test_the_default_model_and_its_shipped_sidecars_are_still_found() -> None:
    path = models.packaged_path(models.SMOLLM2)
    if not path.exists():  # nothing fetched before the session: nothing to link
        return
    assert models.resolve(None) == path
    found = sidecar.find_sidecars(models.model_sha256(path))
    assert found is not None and sidecar.sidecar_origin(found[0]).startswith("shipped")
