"""Trace sheets (xlcnn/trace.py): their contract (sheet-scoped names), their values at random positions
as LibreOffice and xlcnn's own engine recalculate them, against Keras; verify passes every workbook."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import keras, needs_libreoffice, random_input, save_model

CONTRACT = ("layer", "channel", "row", "col", "value")
TRACED = {"Conv1D", "Conv2D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
          "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "Dense"}


def _models():
    kk = keras()
    L = kk.layers

    def seq(shape, layers):
        return lambda: kk.Sequential([kk.Input(shape), *layers()])

    def two_d(fmt):
        shape = (9, 9, 3) if fmt == "channels_last" else (3, 9, 9)
        return seq(shape, lambda: [
            L.Conv2D(14, 3, strides=2, padding="same", activation="relu", data_format=fmt,
                     bias_initializer="random_normal"),
            # 14 input channels: more than the blocks a trace shows, so its side column reads the rest
            L.Conv2D(4, 3, padding="same", activation="tanh", data_format=fmt, bias_initializer="random_normal"),
            L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu", data_format=fmt,
                              bias_initializer="random_normal"),
            L.MaxPooling2D(2, padding="same", data_format=fmt),
            L.SeparableConv2D(3, 2, padding="same", activation="relu", data_format=fmt,
                              bias_initializer="random_normal"),
            L.Flatten(data_format=fmt),
            L.Dense(6, activation="relu", bias_initializer="random_normal"),
            L.Dense(3, activation="softmax"),
        ])

    def one_d(fmt):
        shape = (12, 2) if fmt == "channels_last" else (2, 12)
        return seq(shape, lambda: [
            L.Conv1D(3, 3, padding="causal" if fmt == "channels_last" else "same", activation="relu",
                     data_format=fmt, bias_initializer="random_normal"),
            L.AveragePooling1D(2, padding="same", data_format=fmt),
            L.SeparableConv1D(2, 3, padding="same", data_format=fmt, bias_initializer="random_normal"),
            L.Flatten(),
            L.Dense(2),
        ])

    # 33 channels: a trace picks its channel's map from more sheets than LibreOffice's CHOOSE takes (30)
    wide = seq((6, 6, 2), lambda: [
        L.Conv2D(33, 1, activation="relu", bias_initializer="random_normal"),
        L.MaxPooling2D(2),
        L.DepthwiseConv2D(2, padding="same", bias_initializer="random_normal"),
        L.Flatten(),
        L.Dense(2),
    ])
    return {"2d_last": two_d("channels_last"), "2d_first": two_d("channels_first"),
            "1d_last": one_d("channels_last"), "1d_first": one_d("channels_first"), "2d_wide": wide}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from xlcnn.build import build
    base = tmp_path_factory.mktemp("trace")
    out = {}
    for k, (name, make) in enumerate(_models().items()):
        model = make()
        path = save_model(model, base / f"{name}.keras")
        x = random_input(model.input_shape[1:], seed=k)
        np.save(base / f"{name}.npy", x)
        book = base / f"{name}.xlsx"
        build(path, base / f"{name}.npy", book)
        out[name] = dict(model=model, x=x, book=book, base=base)
    return out


def _keras_outputs(model, x):
    kk = keras()
    probe = kk.Model(model.inputs, [layer.output for layer in model.layers])
    return {layer.name: np.asarray(v[0], np.float64) for layer, v in zip(model.layers, probe(x[None]))}


def _traces(path):
    """{trace sheet: {name: (sheet, row, col)}} from the workbook's defined names."""
    from xlcnn.formula import read_workbook
    from xlcnn.verify.checks import _name_cell
    book = read_workbook(path)
    found = {}
    for (scope, name), target in book.defined_names.items():
        if scope is not None and name in CONTRACT:
            found.setdefault(scope, {})[name] = _name_cell(target)
    return book, found


def _at(out, layer, fmt, channel, row, col):
    """Keras's output of a layer at (channel, row, col) in its own layout."""
    if out.ndim == 1:
        return out[channel]
    if out.ndim == 2:
        return out[row, channel] if fmt == "channels_last" else out[channel, row]
    return out[row, col, channel] if fmt == "channels_last" else out[channel, row, col]


def _layer_format(model, name):
    layer = model.get_layer(name)
    return getattr(layer, "data_format", None) or "channels_last"


def test_every_traced_stage_has_a_trace_sheet_with_the_contract(built):
    for case in built.values():
        book, traces = _traces(case["book"])
        kinds = {layer.name: type(layer).__name__ for layer in case["model"].layers}
        traced = {book.value(s, *cells["layer"][1:]) for s, cells in traces.items()}
        assert traced == {n for n, k in kinds.items() if k in TRACED}
        for sheet, cells in traces.items():
            assert sheet.endswith(" trace")
            layer = book.value(sheet, *cells["layer"][1:])
            need = ("layer", "channel", "value") if kinds[layer] == "Dense" else CONTRACT
            assert set(need) <= set(cells), (sheet, cells)
            for name in need:
                assert cells[name][0] == sheet                      # each name is one cell of its own sheet
            for name in set(need) & {"channel", "row", "col"}:
                assert isinstance(book.value(*cells[name]), float)  # the input cells hold typed numbers
            assert (sheet, *cells["value"][1:]) in book.formulas    # value is computed


def test_verify_passes_and_checks_every_trace(built):
    from xlcnn.verify import verify
    for name, case in built.items():
        report = verify(case["book"])
        _, traces = _traces(case["book"])
        assert report.passed, (name, report.trace_problems, report.lint, [s for s in report.stages if not s.passed])
        assert report.traces_checked == len(traces) > 0
        assert report.trace_problems == []


def _random_positions(path, dst, model, seed):
    """A copy of the workbook with every trace set to a random position; returns {sheet: (layer, c, r, q)}."""
    import openpyxl
    book, traces = _traces(path)
    rng = np.random.default_rng(seed)
    wb = openpyxl.load_workbook(path)
    chosen = {}
    for sheet, cells in traces.items():
        layer = book.value(sheet, *cells["layer"][1:])
        shape = model.get_layer(layer).output.shape[1:]
        fmt = _layer_format(model, layer)
        if len(shape) == 1:
            pos = (int(rng.integers(shape[0])), 0, 0)
        else:
            axis = len(shape) - 1 if fmt == "channels_last" else 0
            spatial = [n for i, n in enumerate(shape) if i != axis] + [1]
            pos = (int(rng.integers(shape[axis])), int(rng.integers(spatial[0])), int(rng.integers(spatial[1])))
        for name, v in zip(("channel", "row", "col"), pos):
            if name in cells and (name != "col" or len(shape) == 3):
                _, r, c = cells[name]
                wb[sheet].cell(r + 1, c + 1).value = v
        chosen[sheet] = (layer, *pos)
    wb.save(dst)
    return chosen


def _check_positions(values, traces, chosen, outs, model, who):
    checked = 0
    for sheet, (layer, c, r, q) in chosen.items():
        got = values(*traces[sheet]["value"])
        want = _at(outs[layer], layer, _layer_format(model, layer), c, r, q)
        scale = max(1.0, float(np.max(np.abs(outs[layer]))))
        assert abs(got - want) <= 1e-5 * scale, (who, sheet, (c, r, q), got, want)
        checked += 1
    return checked


def test_engine_recomputes_traces_at_random_positions(built):
    from xlcnn.formula import evaluate, read_workbook
    from xlcnn.verify.checks import trace_checks
    from xlcnn import manifest as mf
    from xlcnn.verify.reading import read_contract
    for k, (name, case) in enumerate(built.items()):
        dst = case["base"] / f"{name}-moved.xlsx"
        chosen = _random_positions(case["book"], dst, case["model"], seed=10 + k)
        book, traces = _traces(dst)
        result = evaluate(read_workbook(dst))
        outs = _keras_outputs(case["model"], case["x"])
        n = _check_positions(lambda s, r, c: result.value(s, r, c), traces, chosen, outs, case["model"], "engine")
        assert n == len(traces)
        entries, _ = read_contract(book, dst)
        problems, checked = trace_checks(book, entries, result.cells)
        assert problems == [] and checked == n
        assert mf.layers(entries)


@needs_libreoffice
def test_libreoffice_recomputes_traces_at_random_positions(built):
    import openpyxl
    from xlcnn.libreoffice import recalculate
    moved, chosen_all = [], {}
    for k, (name, case) in enumerate(built.items()):
        dst = case["base"] / f"{name}-lo-in.xlsx"
        chosen_all[name] = _random_positions(case["book"], dst, case["model"], seed=100 + k)
        moved.append(dst)
    base = next(iter(built.values()))["base"]
    for (name, case), path in zip(built.items(), recalculate(moved, base / "lo")):
        _, traces = _traces(moved[list(built).index(name)])
        wb = openpyxl.load_workbook(path, data_only=True)

        def values(sheet, r, c, wb=wb):
            v = wb[sheet].cell(r + 1, c + 1).value
            return float("nan") if v is None or isinstance(v, str) else float(v)

        outs = _keras_outputs(case["model"], case["x"])
        assert _check_positions(values, traces, chosen_all[name], outs, case["model"], "LibreOffice") == len(traces)


def test_no_trace_leaves_them_out(built, tmp_path):
    from xlcnn.build import build
    case = built["1d_last"]
    path = case["base"] / "1d_last.keras"
    out = tmp_path / "plain.xlsx"
    build(path, case["base"] / "1d_last.npy", out, trace=False)
    book, traces = _traces(out)
    assert traces == {} and not any(s.endswith(" trace") for s in book.sheets)


def test_reader_name_substitution_fast_path_equals_regex(built, monkeypatch):
    """The reader tests only formulas holding a name's letters (joined texts, str.find): the same
    formulas as one case-insensitive regex per formula, on workbooks with trace sheets."""
    from xlcnn.formula import read_workbook, reader
    for item in built.values():
        fast = read_workbook(item["book"])
        with monkeypatch.context() as m:
            m.setattr(reader, "_name_candidates", lambda texts, names: None)
            slow = read_workbook(item["book"])
        assert fast.defined_names and fast.formulas == slow.formulas
