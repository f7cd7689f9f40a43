"""Layer names that are hostile to sheet names still give valid, unique sheets and formulas that
LibreOffice parses: quotes, brackets, colons, names past 31 characters, names equal ignoring case,
and Japanese text."""

from __future__ import annotations

import re

import pytest

from conftest import assert_matches_keras, build_cases, keras, needs_libreoffice, stage_values

NAMES = ["conv'quote", "a[1]:b?*", "日本語の畳み込み層という非常に長い名前の層です", "x" * 40, "X" * 40,
         "Pool 1", "pool 1"]


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


def test_cached_values_equal_keras(built):
    case = built["hostile"]
    assert_matches_keras(stage_values(case["book"])[0], case["model"], case["x"])


@needs_libreoffice
def test_libreoffice_parses_and_recalculates_every_formula(built):
    case = built["hostile"]
    assert_matches_keras(stage_values(case["lo"])[0], case["model"], case["x"])
    assert_matches_keras(stage_values(case["lo2"])[0], case["model"], case["x2"])
