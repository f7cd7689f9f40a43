"""'same' and 'causal' padding made visible: every map a padded layer reads keeps the padding as a
border of blank, shaded cells on its own sheet, so every window formula has the full kernel or pool
size. A blank cell is exactly Keras's padding for every reader: SUMPRODUCT reads it as 0 (the
zeros of a convolution), MAX and AVERAGE skip it (max pooling's -infinity, average pooling's
real-cells-only divisor). LibreOffice's recalculation of these workbooks equals Keras
(tests/test_layers*.py); here the shapes of the windows and the border itself are checked."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import SAMPLES, assert_matches_keras, keras, needs_libreoffice, stage_values

RANGE = re.compile(r"'([^']+)'!\$?([A-Z]+)\$?(\d+):\$?([A-Z]+)\$?(\d+)")


def _size(match):
    def col(letters):
        n = 0
        for ch in letters:
            n = n * 26 + ord(ch) - 64
        return n
    _, c0, r0, c1, r1 = match.groups()
    return int(r1) - int(r0) + 1, col(c1) - col(c0) + 1


def _formulas(path, sheets):
    import openpyxl
    wb = openpyxl.load_workbook(path)
    out = {}
    for name in sheets:
        out[name] = [c.value for row in wb[name].iter_rows() for c in row
                     if isinstance(c.value, str) and c.value.startswith("=")]
    return out, wb


def _window_sizes(formulas, function):
    """The (rows, cols) of the first range inside each call of `function` in the formulas."""
    sizes = []
    for f in formulas:
        for call in re.finditer(function + r"\(([^()]*)\)", f):
            m = RANGE.search(call.group(1))
            if m:
                sizes.append(_size(m))
    return sizes


@pytest.fixture(scope="module")
def same_lenet(tmp_path_factory):
    from xlcnn.build import build
    base = tmp_path_factory.mktemp("padding")
    k = keras()
    k.utils.set_random_seed(5)
    L = k.layers
    model = k.Sequential([k.Input((12, 12, 1)),
                          L.Conv2D(4, 5, padding="same", activation="relu", name="conv1"),
                          L.MaxPooling2D(2, padding="same", name="pool1"),
                          L.Conv2D(6, 3, strides=2, padding="same", name="conv2"),
                          L.AveragePooling2D(3, strides=2, padding="same", name="pool2"),
                          L.Flatten(), L.Dense(3, activation="softmax")])
    model.save(str(base / "same.keras"))
    x = np.random.default_rng(0).uniform(0, 1, (12, 12, 1)).astype(np.float32)
    np.save(base / "x.npy", x)
    build(base / "same.keras", base / "x.npy", base / "same.xlsx")
    return base / "same.xlsx", base / "same.keras", x


def test_same_convolutions_and_pools_read_full_windows(same_lenet):
    path, _, _ = same_lenet
    _, entries = stage_values(path)
    sheets = {e.klass: set() for e in entries}
    for e in entries:
        sheets[e.klass].add(e.sheet)
    conv_sheets = sorted(s for s in sheets["Conv2D"])
    formulas, _ = _formulas(path, conv_sheets + sorted(sheets["MaxPooling2D"]) + sorted(sheets["AveragePooling2D"]))
    conv1 = [f for s in conv_sheets if "conv1" in s for f in formulas[s]]
    conv2 = [f for s in conv_sheets if "conv2" in s for f in formulas[s]]
    assert set(_window_sizes(conv1, "SUMPRODUCT")) == {(5, 5)}
    assert set(_window_sizes(conv2, "SUMPRODUCT")) == {(3, 3)}
    assert len(_window_sizes(conv1, "SUMPRODUCT")) == 4 * 12 * 12
    pool1 = [f for s in sheets["MaxPooling2D"] for f in formulas[s]]
    pool2 = [f for s in sheets["AveragePooling2D"] for f in formulas[s]]
    assert set(_window_sizes(pool1, "MAX")) == {(2, 2)} and len(pool1) == 4 * 6 * 6
    assert set(_window_sizes(pool2, "AVERAGE")) == {(3, 3)} and len(pool2) == 6 * 2 * 2


def test_the_border_is_blank_and_shaded_and_the_map_inside_it(same_lenet):
    """conv1 (5x5, 'same') pads 2 on every side of the 12x12 input: the input sheet keeps two blank
    shaded rows and columns around the map; the manifest's range is the map itself."""
    path, _, _ = same_lenet
    _, entries = stage_values(path)
    inp = next(e for e in entries if e.klass == "InputLayer")
    r0, c0, r1, c1 = inp.range
    assert (r1 - r0 + 1, c1 - c0 + 1) == (12, 12)
    import openpyxl
    ws = openpyxl.load_workbook(path)[inp.sheet]
    border = [(r, c) for r in range(r0 - 2, r1 + 3) for c in range(c0 - 2, c1 + 3)
              if not (r0 <= r <= r1 and c0 <= c <= c1)]
    assert len(border) == 16 * 16 - 12 * 12
    for r, c in border:
        cell = ws.cell(row=r + 1, column=c + 1)
        assert cell.value is None, (r, c, cell.value)
        assert cell.fill.fgColor.rgb.endswith("D9D9D9"), (r, c, cell.fill.fgColor.rgb)
    assert ws.cell(row=r0 + 1, column=c0 + 1).value is not None


@needs_libreoffice
def test_libreoffice_reads_the_blank_border_as_keras_padding(same_lenet, tmp_path):
    from xlcnn.libreoffice import recalculate
    path, model, x = same_lenet
    lo = recalculate([path], tmp_path)[0]
    values, _ = stage_values(lo)
    assert_matches_keras(values, model, x)


def test_channels_first_sample_reads_full_windows(tmp_path):
    """The 650-parameter channels_first sample: every 'same' convolution and pool window is whole."""
    from xlcnn.build import build
    from xlcnn.verify import verify
    path = build(SAMPLES / "padding_cf.h5", SAMPLES / "digits" / "digit_7.png", tmp_path / "cf.xlsx").path
    _, entries = stage_values(path)
    from xlcnn.model import load
    loaded = load(SAMPLES / "padding_cf.h5")
    kinds = {spec.name: spec for spec in loaded.specs}
    sheets = {}
    for e in entries:
        sheets.setdefault(e.layer, set()).add(e.sheet)
    checked = 0
    for name, spec in kinds.items():
        if spec.config.get("padding") != "same":
            continue
        formulas, _ = _formulas(path, sorted(sheets[name]))
        flat = [f for fs in formulas.values() for f in fs]
        if spec.kind == "Conv2D":
            want = tuple(spec.config["kernel_size"])
            assert set(_window_sizes(flat, "SUMPRODUCT")) == {want}, name
        else:
            want = tuple(spec.config["pool_size"])
            assert set(_window_sizes(flat, "MAX") + _window_sizes(flat, "AVERAGE")) == {want}, name
        checked += 1
    assert checked >= 2
    assert verify(path).passed


def test_causal_padding_is_blank_rows_before_the_signal(tmp_path):
    from xlcnn.build import build
    k = keras()
    model = k.Sequential([k.Input((10, 2)), k.layers.Conv1D(3, 4, padding="causal", dilation_rate=2)])
    model.save(str(tmp_path / "c.keras"))
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(10, 2)).astype(np.float32))
    path = build(tmp_path / "c.keras", tmp_path / "x.npy", tmp_path / "c.xlsx").path
    values, entries = stage_values(path)
    inp = [e for e in entries if e.klass == "InputLayer"]
    assert [e.range[0] for e in inp] == [4 + 6, 4 + 6]          # (4 - 1) x 2 = 6 blank rows above
    formulas, _ = _formulas(path, sorted({e.sheet for e in entries if e.klass == "Conv1D"}))
    flat = [f for fs in formulas.values() for f in fs]
    # dilated: explicit products, 4 taps per input channel, blank cells for the steps before t = 0
    assert all(f.count("*") == 4 * 2 for f in flat)
    assert_matches_keras(values, tmp_path / "c.keras", np.load(tmp_path / "x.npy"))
