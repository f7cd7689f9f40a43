"""Every engine that reads xlsx computes the same numbers (issue #9).

Gnumeric is a second real spreadsheet program beside LibreOffice: a sample of workbooks gets a new
input typed into its input cells, Gnumeric recalculates every formula (`ssconvert --recalc`), and
every manifest stage must equal Keras's output for the new input, within the same tolerance as
LibreOffice. And xlcnn writes no SUMPRODUCT over single cells (pycel cannot evaluate it): a 1×1
kernel, a window clipped to one cell or a Dense layer with one input is a plain product."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from conftest import (SAMPLES, assert_excel_opens_cleanly, assert_matches_keras, check_case, keras, random_input,
                      stage_values, write_input_cells)

# Gnumeric's xlsx has no default cell style; openpyxl says so when it reads the recalculated copy
pytestmark = pytest.mark.filterwarnings("ignore:Workbook contains no default style")

needs_gnumeric = pytest.mark.skipif(shutil.which("ssconvert") is None,
                                    reason="Gnumeric (ssconvert) is not installed: apt-get install gnumeric")

LENET = (SAMPLES / "lenet.keras", SAMPLES / "digits" / "digit_7.png", SAMPLES / "digits" / "digit_3.png")


def _models():
    k = keras()
    L = k.layers

    def same_conv_pool():
        return k.Sequential([
            k.Input((7, 9, 2)),
            L.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="conv"),
            L.MaxPooling2D(2, padding="same", name="maxpool"),
            L.Conv2D(2, 2, padding="same", name="conv_even"),
            L.AveragePooling2D(2, strides=1, padding="same", name="avgpool"),
            L.Flatten(), L.Dense(4, activation="softmax", name="probs"),
        ])

    def channels_first():
        return k.Sequential([
            k.Input((2, 7, 8)),
            L.Conv2D(3, 3, padding="same", activation="tanh", data_format="channels_first", name="conv"),
            L.MaxPooling2D(2, padding="same", data_format="channels_first", name="pool"),
            L.Conv2D(3, 3, data_format="channels_first", name="conv_valid"),
            L.Flatten(data_format="channels_first"), L.Dense(3, activation="softmax", name="probs"),
        ])

    def branching():
        inp = k.Input((6, 6, 2))
        a = L.Conv2D(3, 3, padding="same", activation="relu", name="a")(inp)
        b = L.Conv2D(3, 1, name="b")(inp)
        added = L.Add(name="add")([a, b])
        c = L.Conv2D(2, 3, padding="same", name="c")(inp)
        cat = L.Concatenate(name="cat")([added, c])
        pooled = L.GlobalAveragePooling2D(name="gap")(cat)
        return k.Model(inp, L.Dense(3, activation="softmax", name="probs")(pooled))

    def pointwise():
        # every way to a one-cell weighted sum: 1×1 Conv2D, 1×1 depthwise, separable with a 1×1
        # depthwise, a 3×3 'same' window clipped to a 1×1 map, Dense on one input
        return k.Sequential([
            k.Input((4, 5, 3)),
            L.Conv2D(4, 1, activation="relu", name="conv1x1"),
            L.DepthwiseConv2D(1, name="dw1x1"),
            L.SeparableConv2D(2, 1, name="sep1x1"),
            L.MaxPooling2D(4, name="pool"),
            L.Conv2D(2, 3, padding="same", name="conv_on_1x1"),
            L.Flatten(), L.Dense(1, name="one"), L.Dense(3, activation="softmax", name="probs"),
        ])

    return {"same_conv_pool": same_conv_pool, "channels_first": channels_first, "branching": branching,
            "pointwise": pointwise}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """{name: dict(model, x, x2, book, edited)}: each workbook built from x, and a copy with x2 typed
    into its input cells (not recalculated)."""
    from xlcnn.build import build, default_scale
    from xlcnn.image import prepare
    from xlcnn.model import input_layout, load
    base = tmp_path_factory.mktemp("engines")
    k = keras()
    out = {}
    for i, (name, make) in enumerate(_models().items()):
        k.utils.set_random_seed(300 + i)
        model_path = base / f"{name}.keras"
        model = make()
        model.save(str(model_path))
        x = random_input(model.input_shape[1:], seed=300 + i)
        np.save(base / f"{name}.npy", x)
        build(model_path, base / f"{name}.npy", base / f"{name}.xlsx")
        out[name] = dict(model=model_path, x=x, x2=random_input(model.input_shape[1:], seed=400 + i),
                         book=base / f"{name}.xlsx")
    model_path, image, image2 = LENET
    loaded = load(model_path)
    build(model_path, image, base / "lenet.xlsx")
    x, x2 = (prepare(p, loaded.input_shape, input_layout(loaded), default_scale=default_scale(loaded)).tensor
             for p in (image, image2))
    out["lenet"] = dict(model=model_path, x=x, x2=x2, book=base / "lenet.xlsx")
    (base / "edited").mkdir()
    for name, case in out.items():
        _, entries = stage_values(case["book"])
        case["edited"] = write_input_cells(case["book"], base / "edited" / f"{name}.xlsx", entries,
                                           load(case["model"]).input_name, case["x2"])
    return out


@pytest.fixture(scope="module")
def gnumeric(cases, tmp_path_factory):
    """{name: the edited workbook as Gnumeric recalculated it}."""
    if shutil.which("ssconvert") is None:
        pytest.skip("Gnumeric (ssconvert) is not installed: apt-get install gnumeric")
    from xlcnn.gnumeric import recalculate
    outdir = tmp_path_factory.mktemp("gnumeric")
    names = list(cases)
    return dict(zip(names, recalculate([cases[n]["edited"] for n in names], outdir)))


_SUMPRODUCT = re.compile(r"SUMPRODUCT\(([^(),]*),([^(),]*)\)")


def test_no_sumproduct_over_single_cells(cases):
    from xlcnn.formula import read_workbook
    products = 0
    for name, case in cases.items():
        formulas = read_workbook(case["book"]).formulas
        for cell, f in formulas.items():
            if cell[0].endswith(" trace"):    # trace sheets pick columns with INDEX (tests/test_trace.py)
                continue
            for args in _SUMPRODUCT.findall(f):
                assert all(":" in a.rpartition("!")[2] for a in args), (name, cell, f)
            assert "SUMPRODUCT(" not in _SUMPRODUCT.sub("", f), (name, cell, f)  # every one was checked
        products += sum(1 for f in formulas.values() if "SUMPRODUCT" not in f and "*" in f)
    assert products, "the 1×1 layers wrote no plain products"


def test_one_cell_sums_are_products_that_equal_keras(cases):
    from xlcnn.formula import read_workbook
    case = cases["pointwise"]
    formulas = read_workbook(case["book"]).formulas
    first = {s: f for (s, r, c), f in formulas.items() if (r, c) == (4, 1)}   # each sheet's B5
    assert first["02 conv1x1 c0"].startswith("'01 input c0'!B5*'02 conv1x1 w'!$D$5+"), first["02 conv1x1 c0"]
    assert first["03 dw1x1 c0"].startswith("'02 conv1x1 c0'!H5*'03 dw1x1 w'!$D$5+"), first["03 dw1x1 c0"]
    assert first["04 sep1x1 dw c0"] == "'03 dw1x1 c0'!B5*'04 sep1x1 w'!$D$5", first["04 sep1x1 dw c0"]
    # a 3x3 'same' kernel on a 1x1 map reads its whole window: the map's blank border is the padding
    assert first["06 conv_on_1x1 c0"].startswith("SUMPRODUCT('05 pool c0'!B5:D7,'06 conv_on_1x1 w'!$D$5:$F$7)+")
    assert first["09 probs"].startswith("'08 one'!$B$5*'09 probs w'!"), first["09 probs"]
    check_case(case, "book")   # cached values and xlcnn verify agree with Keras


@pytest.mark.parametrize("name", ["same_conv_pool", "channels_first", "branching", "pointwise", "lenet"])
def test_excel_would_not_repair_the_workbook(cases, name):
    assert_excel_opens_cleanly(cases[name]["book"])


@needs_gnumeric
@pytest.mark.parametrize("name", ["same_conv_pool", "channels_first", "branching", "pointwise", "lenet"])
def test_gnumeric_recalculates_a_new_input_to_keras(cases, gnumeric, name):
    case = cases[name]
    values, _ = stage_values(gnumeric[name])
    outs = assert_matches_keras(values, case["model"], case["x2"])
    old, _ = stage_values(case["book"])
    last = list(outs)[-1]
    assert not np.allclose(values[last], old[last]), "the new input did not change the output"
