"""Layer names that are hostile to sheet names still give valid, unique sheets and formulas that
LibreOffice and Gnumeric parse: quotes, brackets, colons, names past 31 characters, names equal
ignoring case, and Japanese text. An apostrophe becomes the typographic ’ in sheet names (Gnumeric
and the `formulas` package cannot parse 'it''s'!A1), while the manifest keeps the Keras name."""

from __future__ import annotations

import re
import shutil

import pytest

from conftest import (assert_excel_opens_cleanly, assert_matches_keras, build_cases, keras, needs_libreoffice,
                      stage_values, write_input_cells)

NAMES = ["conv'quote", "a[1]:b?*", "日本語の畳み込み層という非常に長い名前の層です", "x" * 40, "X" * 40,
         "Pool 1", "pool 1", "it's", "IT’S"]


def _cases():
    k = keras()
    L = k.layers

    def hostile():
        return k.Sequential([
            k.Input((5, 6, 2)),
            L.Conv2D(2, 3, padding="same", name=NAMES[0]),
            L.Conv2D(2, 1, name=NAMES[1]),
            L.Conv2D(2, 1, activation="relu", name=NAMES[2]),
            L.Conv2D(2, 1, name=NAMES[3]),
            L.Conv2D(2, 1, name=NAMES[4]),
            L.MaxPooling2D(2, padding="same", name=NAMES[5]),
            L.AveragePooling2D(1, name=NAMES[6]),
            L.Conv2D(2, 1, name=NAMES[7]),
            L.Conv2D(2, 1, name=NAMES[8]),
            L.Flatten(name="フラット"), L.Dense(3, activation="softmax", name="出力"),
        ])
    return {"hostile": (hostile, ".keras")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_cases(_cases(), tmp_path_factory.mktemp("names"))


def test_sheet_names_are_valid_and_unique(built):
    import openpyxl
    names = openpyxl.load_workbook(built["hostile"]["book"], read_only=True).sheetnames
    assert len({n.lower() for n in names}) == len(names)
    for n in names:
        assert 1 <= len(n) <= 31 and not re.search(r"[\\/?*\[\]:]", n), n
        assert not n.startswith("'") and not n.endswith("'"), n
    assert any("日本語" in n for n in names)
    assert not [n for n in names if "'" in n], "an apostrophe in a sheet name breaks Gnumeric and formulas"
    assert "02 conv’quote c0" in names and "09 it’s c0" in names
    assert "10 IT’S c0" in names


def test_manifest_keeps_the_keras_layer_names(built):
    _, entries = stage_values(built["hostile"]["book"])
    layers = {e.layer for e in entries}
    assert set(NAMES) <= layers, set(NAMES) - layers
    sheets = {e.sheet for e in entries if e.layer == "it's"}
    assert sheets == {"09 it’s c0", "09 it’s c1"}


def test_workbook_verifies(built):
    from xlcnn.verify import verify
    report = verify(built["hostile"]["book"])
    assert report.passed, (report.first_failure, report.lint[:3])
    assert_excel_opens_cleanly(built["hostile"]["book"])


def test_cached_values_equal_keras(built):
    case = built["hostile"]
    assert_matches_keras(stage_values(case["book"])[0], case["model"], case["x"])


@needs_libreoffice
def test_libreoffice_parses_and_recalculates_every_formula(built):
    case = built["hostile"]
    assert_matches_keras(stage_values(case["lo"])[0], case["model"], case["x"])
    assert_matches_keras(stage_values(case["lo2"])[0], case["model"], case["x2"])


@pytest.mark.skipif(shutil.which("ssconvert") is None, reason="Gnumeric (ssconvert) is not installed")
@pytest.mark.filterwarnings("ignore:Workbook contains no default style")   # Gnumeric's xlsx, read by openpyxl
def test_gnumeric_parses_and_recalculates_every_formula(built, tmp_path):
    from xlcnn.gnumeric import recalculate
    from xlcnn.model import load
    case = built["hostile"]
    _, entries = stage_values(case["book"])
    edited = write_input_cells(case["book"], tmp_path / "hostile_edited.xlsx", entries,
                               load(case["model"]).input_name, case["x2"])
    (out,) = recalculate(edited, tmp_path / "gnumeric")
    assert_matches_keras(stage_values(out)[0], case["model"], case["x2"])
