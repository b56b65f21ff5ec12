"""D2's ggml type ids against upstream's: read the ``ggml_type`` enum of a ggml.h and refuse a clash.

Our patch series adds ``GGML_TYPE_D2_P8/P16/P32`` (3-bit tails), ``GGML_TYPE_D2_P8B2/P16B2/P32B2``
(2-bit tails) and ``GGML_TYPE_D2_P8I8/P16I8/P32I8`` (int8 protected coefficients, D2-lite) at
the end of the enum (43–51 against llama.cpp 0c1e570). When the
pinned llama.cpp moves and upstream adds types of its own, two types sharing an id would silently
mix two block formats; the build checks the vendored header before patching (upstream's ids must
stay below ours) and after (every id unique, ours one contiguous run with exactly the ids the patch
declares, ``GGML_TYPE_COUNT`` one past the largest) and stops with a message that says what to change.
This module never imports the app.
"""

from __future__ import annotations

import re
from pathlib import Path

OUR_PREFIX = "GGML_TYPE_D2_"
COUNT_NAME = "GGML_TYPE_COUNT"
HEADER_IN_TREE = Path("vendor/llama.cpp/ggml/include/ggml.h")

_ENUM = re.compile(r"enum\s+ggml_type\s*\{(?P<body>.*?)\}\s*;", re.S)
_ENTRY = re.compile(r"^\s*(?P<name>[A-Za-z_]\w*)\s*(?:=\s*(?P<value>[^,]+?))?\s*$")
_PATCH_ID = re.compile(r"^\+\s*(?P<name>" + OUR_PREFIX + r"\w+)\s*=\s*(?P<value>\d+)\s*,", re.M)


class TypeIdClashError(RuntimeError):
    """D2's ggml type ids clash with the vendored upstream enum; the message says what to change."""


def parse_ggml_type_enum(text: str, source: str = "ggml.h") -> dict[str, int]:
    """The ``enum ggml_type`` entries of a C header, in order, with implicit values filled in."""
    match = _ENUM.search(text)
    if match is None:
        raise TypeIdClashError(f"{source} has no `enum ggml_type {{ ... }};`; the vendored ggml moved: update "
                               "engine/ggml_types.py and patch 0002 together.")
    body = re.sub(r"/\*.*?\*/", "", match.group("body"), flags=re.S)
    body = re.sub(r"//[^\n]*", "", body)
    entries: dict[str, int] = {}
    following = 0
    for item in body.split(","):
        if not item.strip():
            continue
        entry = _ENTRY.match(item)
        if entry is None:
            raise TypeIdClashError(f"{source}: cannot read the ggml_type entry {item.strip()!r}; update "
                                   "engine/ggml_types.py for the new header.")
        value = entry.group("value")
        if value is not None:
            try:
                following = int(value.strip(), 0)
            except ValueError:
                if value.strip() not in entries:
                    raise TypeIdClashError(f"{source}: {entry.group('name')} = {value.strip()} is not a number "
                                           "this check can read; update engine/ggml_types.py.") from None
                following = entries[value.strip()]
        name = entry.group("name")
        if name in entries:
            raise TypeIdClashError(f"{source}: {name} appears twice in enum ggml_type.")
        entries[name] = following
        following += 1
    return entries


def our_ids_in_patch(patch_text: str) -> dict[str, int]:
    """The D2 ids a patch adds (``+    GGML_TYPE_D2_P8 = 43,`` lines)."""
    return {m.group("name"): int(m.group("value")) for m in _PATCH_ID.finditer(patch_text)}


def check_upstream_below_ours(upstream: dict[str, int], ours: dict[str, int], source: str) -> None:
    """Before patching: every upstream id (and its COUNT) must lie below our first id."""
    if not ours:
        raise TypeIdClashError("the patch series adds no GGML_TYPE_D2_* ids (patch 0002 changed?); "
                               "engine/ggml_types.py cannot check them.")
    first = min(ours.values())
    reaching = {name: value for name, value in upstream.items() if name != COUNT_NAME and value >= first}
    count = upstream.get(COUNT_NAME)
    if reaching or (count is not None and count > first):
        listed = ", ".join(f"{n} = {v}" for n, v in sorted(reaching.items(), key=lambda kv: kv[1]))
        top = max([v for n, v in upstream.items() if n != COUNT_NAME], default=first)
        raise TypeIdClashError(
            f"upstream ggml_type in {source} reaches D2's ids {_span(ours)}: "
            f"{listed or f'{COUNT_NAME} = {count}'}. Two block formats would share an id. Move "
            f"GGML_TYPE_D2_* in engine/llama.cpp-fraqtl/patches/0002-ggml-d2-block-types.patch to start at "
            f"{top + 1} (and {COUNT_NAME} to one past the last), then rebuild.")


def check_patched_enum(entries: dict[str, int], source: str) -> dict[str, int]:
    """After patching: ours present, every id unique, COUNT one past the largest. Returns our ids."""
    ours = {name: value for name, value in entries.items() if name.startswith(OUR_PREFIX)}
    if not ours:
        raise TypeIdClashError(f"{source} has no GGML_TYPE_D2_* entries: patch 0002 did not apply as expected.")
    by_value: dict[int, list[str]] = {}
    for name, value in entries.items():
        if name != COUNT_NAME:
            by_value.setdefault(value, []).append(name)
    shared = {value: names for value, names in by_value.items() if len(names) > 1
              and any(n.startswith(OUR_PREFIX) for n in names)}
    if shared:
        clash = "; ".join(f"{' and '.join(names)} = {value}" for value, names in sorted(shared.items()))
        raise TypeIdClashError(
            f"D2's ggml type ids clash with upstream's in {source}: {clash}. Move GGML_TYPE_D2_* in "
            "engine/llama.cpp-fraqtl/patches/0002-ggml-d2-block-types.patch past upstream's last type, then rebuild.")
    upstream = {n: v for n, v in entries.items() if not n.startswith(OUR_PREFIX)}
    check_upstream_below_ours({n: v for n, v in upstream.items() if n != COUNT_NAME}, ours, source)
    values = sorted(ours.values())
    if values != list(range(values[0], values[0] + len(values))):
        raise TypeIdClashError(
            f"{source}: D2's ggml type ids {_span(ours)} are not one contiguous run ({', '.join(map(str, values))}); "
            "number GGML_TYPE_D2_* consecutively in engine/llama.cpp-fraqtl/patches/0002-ggml-d2-block-types.patch.")
    largest = max(v for n, v in entries.items() if n != COUNT_NAME)
    if entries.get(COUNT_NAME) != largest + 1:
        raise TypeIdClashError(
            f"{source}: {COUNT_NAME} is {entries.get(COUNT_NAME)}, but the largest ggml_type is {largest}; "
            f"set it to {largest + 1} in patch 0002 (ggml sizes its type tables by it).")
    return ours


def check_tree(tree: Path, patched: bool, patch_text: str = "") -> dict[str, int]:
    """Check the vendored header in ``tree``: before patching against ``patch_text``'s ids, or after."""
    header = tree / HEADER_IN_TREE
    try:
        text = header.read_text(encoding="utf-8")
    except OSError as exc:
        raise TypeIdClashError(f"cannot read {header} ({exc.strerror}); the sdist layout changed.") from exc
    entries = parse_ggml_type_enum(text, str(header))
    if patched:
        ours = check_patched_enum(entries, str(header))
        declared = our_ids_in_patch(patch_text) if patch_text else ours
        if declared != ours:
            raise TypeIdClashError(
                f"{header} holds the D2 types {_listing(ours)} but the patch series declares {_listing(declared)}: "
                "the tree is stale or patch 0002 applied partly; rebuild with `python -m engine.build --force`.")
        return ours
    ours = our_ids_in_patch(patch_text)
    check_upstream_below_ours(entries, ours, str(header))
    return ours


def _span(ours: dict[str, int]) -> str:
    values = sorted(ours.values())
    return f"{values[0]}–{values[-1]}" if len(values) > 1 else str(values[0])


def _listing(ids: dict[str, int]) -> str:
    return ", ".join(f"{n} = {v}" for n, v in sorted(ids.items(), key=lambda kv: kv[1])) or "none"
