"""D2's ggml type ids against the vendored upstream enum: a clash must stop the build, loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import build, ggml_types
from engine.ggml_types import TypeIdClashError, check_patched_enum, check_upstream_below_ours, parse_ggml_type_enum

UPSTREAM = """
    // NOTE: always add types at the end of the enum to keep backward compatibility
    enum ggml_type {
        GGML_TYPE_F32     = 0,
        GGML_TYPE_F16     = 1,
        GGML_TYPE_Q4_0    = 2,
        GGML_TYPE_Q4_1    = 3,
        // GGML_TYPE_Q4_2 = 4, support has been removed
        // GGML_TYPE_Q4_3 = 5, support has been removed
        GGML_TYPE_Q5_0    = 6,
        GGML_TYPE_Q5_1,       /* implicit: 7 */
        GGML_TYPE_Q8_0    = 8,
        GGML_TYPE_Q1_0    = 41,
        GGML_TYPE_Q2_0    = 42,
{extra}        GGML_TYPE_COUNT   = {count},
    }};

    enum ggml_prec {{ GGML_PREC_DEFAULT = 0, GGML_PREC_F32 = 10 }};
"""
OURS = """        GGML_TYPE_D2_P8   = 43, // fraqtl D2 KV block: 8 fp16 + 56 INT3
        GGML_TYPE_D2_P16  = 44,
        GGML_TYPE_D2_P32  = 45,
        GGML_TYPE_D2_P8B2  = 46, // fraqtl D2-lite KV block: 8 fp16 + 56 INT2
        GGML_TYPE_D2_P16B2 = 47,
        GGML_TYPE_D2_P32B2 = 48,
        GGML_TYPE_D2_P8I8  = 49, // fraqtl D2-lite KV block: 8 INT8 + 56 INT3
        GGML_TYPE_D2_P16I8 = 50,
        GGML_TYPE_D2_P32I8 = 51,
"""
D2_IDS = {"GGML_TYPE_D2_P8": 43, "GGML_TYPE_D2_P16": 44, "GGML_TYPE_D2_P32": 45,
          "GGML_TYPE_D2_P8B2": 46, "GGML_TYPE_D2_P16B2": 47, "GGML_TYPE_D2_P32B2": 48,
          "GGML_TYPE_D2_P8I8": 49, "GGML_TYPE_D2_P16I8": 50, "GGML_TYPE_D2_P32I8": 51}


def header(extra: str = "", count: int = 43) -> str:
    return UPSTREAM.replace("{extra}", extra).replace("{count}", str(count)).replace("{{", "{").replace("}}", "}")


def real_patch_text() -> str:
    return "".join(p.read_text(encoding="utf-8") for p in build.patch_files())


def test_the_enum_is_read_with_comments_and_implicit_values() -> None:
    entries = parse_ggml_type_enum(header(OURS, 52))
    assert entries["GGML_TYPE_Q5_1"] == 7 and "GGML_TYPE_Q4_2" not in entries
    assert {n: v for n, v in entries.items() if n.startswith("GGML_TYPE_D2_")} == D2_IDS
    assert entries["GGML_TYPE_COUNT"] == 52 and "GGML_PREC_F32" not in entries


def test_our_patch_adds_43_to_51_and_the_pinned_shape_passes() -> None:
    assert ggml_types.our_ids_in_patch(real_patch_text()) == D2_IDS
    check_upstream_below_ours(parse_ggml_type_enum(header()), D2_IDS, "ggml.h")
    assert check_patched_enum(parse_ggml_type_enum(header(OURS, 52)), "ggml.h") == D2_IDS


def test_upstream_reaching_our_ids_before_patching_says_where_to_move_them() -> None:
    newer = header("        GGML_TYPE_Q3_0    = 43,\n        GGML_TYPE_MXFP6   = 44,\n", 45)
    with pytest.raises(TypeIdClashError) as caught:
        check_upstream_below_ours(parse_ggml_type_enum(newer), D2_IDS, "vendor/ggml.h")
    message = str(caught.value)
    assert "reaches D2's ids 43–51: GGML_TYPE_Q3_0 = 43, GGML_TYPE_MXFP6 = 44" in message
    assert "0002-ggml-d2-block-types.patch to start at 45" in message


def test_upstream_count_alone_reaching_ours_is_a_clash() -> None:
    with pytest.raises(TypeIdClashError, match="GGML_TYPE_COUNT = 44"):
        check_upstream_below_ours(parse_ggml_type_enum(header(count=44)), D2_IDS, "ggml.h")


def test_a_shared_id_after_patching_names_both_types() -> None:
    # upstream's new type landed at 44 elsewhere in the enum and the patch still applied
    patched = header("        GGML_TYPE_NEW     = 44,\n" + OURS, 46)
    with pytest.raises(TypeIdClashError, match="GGML_TYPE_NEW and GGML_TYPE_D2_P16 = 44"):
        check_patched_enum(parse_ggml_type_enum(patched), "ggml.h")


def test_a_count_that_does_not_follow_the_last_type_is_refused() -> None:
    with pytest.raises(TypeIdClashError, match="GGML_TYPE_COUNT is 43, but the largest ggml_type is 51; set it to 52"):
        check_patched_enum(parse_ggml_type_enum(header(OURS, 43)), "ggml.h")


def test_our_ids_must_be_one_contiguous_run() -> None:
    # a gap would let a later upstream type land between two D2 types unnoticed by the "below ours" check
    gapped = "".join(line.replace("= 4", "= 6").replace("= 5", "= 7") + "\n" if ("B2" in line or "I8" in line)
                     else line + "\n" for line in OURS.splitlines())
    with pytest.raises(TypeIdClashError, match="not one contiguous run"):
        check_patched_enum(parse_ggml_type_enum(header(gapped, 72)), "ggml.h")


def test_a_patched_tree_missing_a_declared_type_is_refused(tmp_path: Path) -> None:
    # a stale tree from before the D2-lite types: the header has 43-45, the patch series declares 43-51
    target = tmp_path / ggml_types.HEADER_IN_TREE
    target.parent.mkdir(parents=True)
    old = "".join(line + "\n" for line in OURS.splitlines() if "B2" not in line and "I8" not in line)
    target.write_text(header(old, 46))
    with pytest.raises(TypeIdClashError, match="patch series declares .*GGML_TYPE_D2_P32I8 = 51"):
        ggml_types.check_tree(tmp_path, patched=True, patch_text=real_patch_text())
    target.write_text(header(OURS, 52))
    assert ggml_types.check_tree(tmp_path, patched=True, patch_text=real_patch_text()) == D2_IDS


def test_a_header_without_our_types_or_without_the_enum_is_refused() -> None:
    with pytest.raises(TypeIdClashError, match="no GGML_TYPE_D2_"):
        check_patched_enum(parse_ggml_type_enum(header()), "ggml.h")
    with pytest.raises(TypeIdClashError, match="no `enum ggml_type"):
        parse_ggml_type_enum("enum ggml_prec { GGML_PREC_DEFAULT = 0 };")


def test_the_build_stops_with_the_clash_as_a_build_error(tmp_path: Path) -> None:
    target = tmp_path / ggml_types.HEADER_IN_TREE
    target.parent.mkdir(parents=True)
    target.write_text(header("        GGML_TYPE_Q3_0    = 43,\n", 44))
    with pytest.raises(build.BuildError, match="reaches D2's ids 43–51: GGML_TYPE_Q3_0 = 43"):
        build.check_type_ids(tmp_path, patched=False)
    target.write_text(header())
    assert build.check_type_ids(tmp_path, patched=False) == D2_IDS
