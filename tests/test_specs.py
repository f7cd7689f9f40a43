"""Writers from plain specs, without TensorFlow: a layer is one room.

Every writer in xlcnn/layers/ reads a LayerSpec (xlcnn/spec.py: kind, config, weights as arrays,
shapes, facts), never a Keras object. So a writer can be planned, written and its formulas
recalculated by xlcnn's own engine with nothing but NumPy, in a fraction of a second: these tests
are the fast tier (`make test-fast`). The last one adds a toy layer in a few lines, the way
CONTRIBUTING.md says a new layer is added.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from xlcnn.errors import Refusal
from xlcnn.layers import writer_for
from xlcnn.layers.base import Context, LayerWriter, handles, write_cellwise_stage
from xlcnn.layout import FIRST_COL, FIRST_ROW, SheetNames, Tensor
from xlcnn.spec import LayerSpec
from xlcnn.workbook import Book

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def conv1d_spec(kernel, bias, padding="causal", strides=1, dilation=1, name="conv", activation="linear"):
    k, cin, cout = kernel.shape
    return LayerSpec(kind="Conv1D", name=name, config={
        "filters": cout, "kernel_size": (k,), "strides": (strides,), "padding": padding,
        "data_format": "channels_last", "dilation_rate": (dilation,), "groups": 1, "activation": activation,
        "use_bias": bias is not None, "dtype": "float32"},
        weights=[kernel] + ([bias] if bias is not None else []),
        weight_names=["kernel"] + (["bias"] if bias is not None else []),
        params=kernel.size + (bias.size if bias is not None else 0))


def signal_input(book, names, x):
    """A (steps, channels) input on one sheet, a column per channel (as build writes it)."""
    name = names.make("01 ", "input")
    sheet = book.add_sheet(name)
    sheet.numbers(FIRST_ROW, FIRST_COL, x)
    return Tensor("input", x, 1, [(name, FIRST_ROW, FIRST_COL + c) for c in range(x.shape[1])])


def write_and_evaluate(tmp_path, spec, x):
    """Write one stage from a spec onto a fresh workbook; recalculate it with xlcnn.formula."""
    from xlcnn.formula import evaluate, read_workbook
    writer = writer_for(spec)
    writer.check()
    path = tmp_path / "stage.xlsx"
    book = Book(path)
    names = SheetNames()
    t_in = signal_input(book, names, x)
    out = writer.write(Context(book, names, "02"), t_in)
    book.close()
    result = evaluate(read_workbook(path))
    got = np.empty(out.values.shape)
    for index in np.ndindex(*out.values.shape):
        ref = out.cell_at(index)            # 'sheet'!B5
        sheet, cell = ref.rsplit("!", 1)
        from xlcnn.manifest import parse_cell
        r, c = parse_cell(cell)
        got[index] = result.value(sheet.strip("'").replace("''", "'"), r, c)
    return out, got


def numpy_causal_conv1d(x, kernel, bias, dilation=1):
    k = kernel.shape[0]
    pad = (k - 1) * dilation
    xp = np.pad(x, ((pad, 0), (0, 0)))
    out = np.zeros((x.shape[0], kernel.shape[2]))
    for t in range(x.shape[0]):
        for a in range(k):
            out[t] += xp[t + a * dilation] @ kernel[a]
    return out + (bias if bias is not None else 0)


def test_conv1d_from_a_spec_equals_numpy_through_the_formulas(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 2))
    kernel, bias = rng.normal(size=(3, 2, 4)), rng.normal(size=4)
    out, got = write_and_evaluate(tmp_path, conv1d_spec(kernel, bias, dilation=2), x)
    want = numpy_causal_conv1d(x, kernel, bias, dilation=2)
    np.testing.assert_allclose(out.values, want, rtol=1e-12)     # the cached values
    np.testing.assert_allclose(got, want, rtol=1e-12)            # the formulas, recalculated


def test_plan_refuses_by_shape_before_writing():
    spec = conv1d_spec(np.ones((5, 1, 1)), None, padding="valid")
    writer = writer_for(spec)
    with pytest.raises(Refusal, match="kernel does not fit the 4-step input"):
        writer.plan([(4, 1)])
    with pytest.raises(Refusal, match="expects a 2-D channels_last input"):
        writer.plan([(4, 4, 1)])


def test_plan_footprint_of_a_signal_stage_is_one_sheet_plus_weights():
    spec = conv1d_spec(np.ones((3, 2, 4)), np.zeros(4), activation="relu")
    spec.output_shape = (10, 4)
    fp = writer_for(spec).plan([(10, 2)])
    assert fp.sheets == 2                 # the stage's sheet and the weights
    assert fp.formulas == 2 * 10 * 4      # z and relu(z)
    assert fp.constants == 3 * 2 * 4 + 4


def test_writers_never_need_tensorflow():
    """Importing the writers and building a stage from a spec imports no TensorFlow or Keras."""
    code = ("import sys; import xlcnn.build, xlcnn.layers, xlcnn.limits, xlcnn.spec; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_adding_a_toy_layer_is_one_class(tmp_path):
    """The CONTRIBUTING.md checklist in miniature: a writer class, registered by the Keras class
    name it handles, with its options declared, gives a stage the engine recalculates."""

    @handles("ToyDouble")
    class ToyDoubleWriter(LayerWriter):
        options = {"factor": lambda v, _c: None if isinstance(v, (int, float)) else f"{v!r} is not a number"}

        def write(self, ctx, x):
            f = self.config["factor"]
            return write_cellwise_stage(ctx, self, x, x.values * f, lambda i: f"{f}*{x.cell_at(i)}",
                                        lambda c: f"{ctx.step} {self.name} · ToyDouble")

    try:
        x = np.arange(6.0).reshape(3, 2)
        out, got = write_and_evaluate(tmp_path, LayerSpec("ToyDouble", "toy", {"factor": 2}), x)
        np.testing.assert_array_equal(got, 2 * x)
        with pytest.raises(Refusal, match="option colour='red' is not supported"):
            writer_for(LayerSpec("ToyDouble", "toy", {"factor": 2, "colour": "red"})).check()
    finally:
        from xlcnn.layers.base import HANDLERS
        HANDLERS.pop("ToyDouble", None)


def test_footprint_of_a_wide_convolution_counts_kernel_blocks_not_a_flat_row():
    """A 3x3 Conv2D from 96 to 96 channels: its weight sheet is 96 blocks down and 96 across
    (389 rows x 387 columns), far inside Excel's 16,384 columns; a flat estimate would refuse it."""
    spec = LayerSpec(kind="Conv2D", name="wide", config={
        "filters": 96, "kernel_size": (3, 3), "strides": (1, 1), "padding": "valid", "data_format": "channels_last",
        "dilation_rate": (1, 1), "groups": 1, "activation": "linear", "use_bias": True},
        weights=[np.zeros((3, 3, 96, 96)), np.zeros(96)], weight_names=["kernel", "bias"],
        params=3 * 3 * 96 * 96 + 96, output_shape=(6, 6, 96))
    fp = writer_for(spec).plan([(8, 8, 96)])
    assert fp.cols < 16_384 and fp.cols == 96 * (3 + 1) + 3
    assert fp.rows == 96 * (3 + 1) + 6 and fp.sheets == 96 + 1   # the header rows and the bias row
