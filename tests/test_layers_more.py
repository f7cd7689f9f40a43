"""The layers of real-world CNNs, every option proven against Keras through a real spreadsheet program:
BatchNormalization, DepthwiseConv2D, SeparableConv2D, the global poolings, ZeroPadding2D,
Cropping2D, UpSampling2D, Reshape, Rescaling, Normalization, ReLU, LeakyReLU, PReLU, ELU, Softmax,
and the mish and log_softmax activations.

As in test_layers.py: each case is a tiny real Keras model with non-trivial weights (moving means and
variances included); xlcnn builds its workbook; LibreOffice recalculates every formula from scratch;
every stage must equal Keras's layer output; then a second input is typed into the input cells,
LibreOffice recalculates again, and every stage must equal Keras's outputs for that input.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import case_tests, assert_matches_keras, keras, needs_libreoffice, stage_values

RANDOMIZED = ("BatchNormalization", "DepthwiseConv2D", "SeparableConv2D", "PReLU", "Conv2D", "Dense")


def _randomize(model, seed):
    """Non-trivial weights everywhere: biases, gamma and beta, moving means, PReLU alphas; positive
    variances (and renorm's standard deviations) of very different sizes per channel."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ not in RANDOMIZED or not layer.weights:
            continue
        new = []
        for var, value in zip(layer.weights, layer.get_weights()):
            name = var.name.split("/")[-1]
            if "variance" in name or "stddev" in name:
                new.append(rng.uniform(0.05, 4.0, value.shape).astype(value.dtype))
            else:
                new.append(rng.normal(0.0, 0.8, value.shape).astype(value.dtype))
        layer.set_weights(new)
    return model


def _cases():
    """name -> (builder returning a Keras model, file suffix). Kept tiny: LibreOffice runs them all."""
    k = keras()
    L = k.layers

    def seq(shape, layers, randomize=True):
        def make():
            model = k.Sequential([k.Input(shape), *layers()])
            return _randomize(model, seed=len(model.layers)) if randomize else model
        return make

    def adapted(shape, axis):
        def make():
            norm = L.Normalization(axis=axis)
            norm.adapt(np.random.default_rng(7).normal(0.5, 2.0, (20, *shape)).astype(np.float32))
            return k.Sequential([k.Input(shape), norm, L.Conv2D(2, 2)])
        return make

    cf = "channels_first"
    cases = {
        # -- BatchNormalization: per-layer epsilon, center/scale off, channels_first axis=1, 1-D, renorm
        "bn_channels_last": (seq((7, 9, 3), lambda: [
            L.Conv2D(4, 3, padding="same"), L.BatchNormalization(epsilon=1.001e-5, name="bn"),
            L.BatchNormalization(center=False, momentum=0.9), L.BatchNormalization(scale=False, epsilon=0.01),
            L.BatchNormalization(center=False, scale=False, axis=3)]), ".keras"),
        "bn_channels_first_and_1d": (seq((2, 6, 6), lambda: [
            L.Conv2D(3, 3, data_format=cf), L.BatchNormalization(axis=1), L.Flatten(), L.Dense(4),
            L.BatchNormalization(), L.BatchNormalization(axis=1, epsilon=0.5)]), ".h5"),
        "bn_renorm_synchronized": (seq((5, 4, 2), lambda: [
            L.BatchNormalization(renorm=True, renorm_clipping={"rmax": 3.0, "rmin": 0.3, "dmax": 5.0},
                                 renorm_momentum=0.9, synchronized=True)]), ".keras"),
        # -- DepthwiseConv2D: Keras's asymmetric 'same', strides, dilation, multiplier, both formats
        "depthwise_same_stride2_multiplier": (seq((9, 8, 2), lambda: [
            L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, activation="relu")]), ".keras"),
        "depthwise_cf_dilated_nobias": (seq((2, 9, 10), lambda: [
            L.DepthwiseConv2D((2, 3), dilation_rate=2, padding="same", use_bias=False, data_format=cf,
                              activation="tanh"), L.Flatten(data_format=cf), L.Dense(3, activation="softmax")]),
                                        ".h5"),
        "depthwise_valid_even_kernel": (seq((8, 7, 3), lambda: [
            L.DepthwiseConv2D((4, 2), strides=(1, 2), depth_multiplier=3, activation="mish")]), ".keras"),
        "depthwise_same_stride3": (seq((7, 10, 1), lambda: [
            L.DepthwiseConv2D((2, 4), strides=3, padding="same", depth_multiplier=2)]), ".keras"),
        # Keras 3 on TensorFlow adds a channels_first bias along the width when width == channels
        "depthwise_cf_width_equals_channels": (seq((2, 6, 6), lambda: [
            L.DepthwiseConv2D((1, 5), data_format=cf)]), ".keras"),
        # -- SeparableConv2D: depthwise helper sheets, pointwise output
        "separable_same_stride2": (seq((9, 7, 2), lambda: [
            L.SeparableConv2D(3, 3, strides=2, padding="same", depth_multiplier=2, activation="elu")]), ".keras"),
        "separable_cf_dilated_nobias": (seq((2, 8, 8), lambda: [
            L.SeparableConv2D(4, (3, 2), dilation_rate=(2, 1), padding="same", use_bias=False, data_format=cf),
            L.SeparableConv2D(2, 2, data_format=cf, activation="relu")]), ".h5"),
        "separable_cf_width_equals_filters": (seq((2, 6, 6), lambda: [
            L.SeparableConv2D(3, (1, 4), data_format=cf)]), ".keras"),
        # -- global poolings, keepdims or not, both formats
        "global_average": (seq((5, 6, 3), lambda: [
            L.Conv2D(4, 2), L.GlobalAveragePooling2D(), L.Dense(3, activation="softmax")]), ".keras"),
        "global_max_keepdims_cf": (seq((3, 5, 4), lambda: [
            L.GlobalMaxPooling2D(data_format=cf, keepdims=True), L.Conv2D(2, 1, data_format=cf),
            L.Flatten()]), ".keras"),
        "global_keepdims_last_then_1d": (seq((4, 3, 2), lambda: [
            L.Conv2D(3, 2, padding="same"), L.GlobalAveragePooling2D(keepdims=True),
            L.GlobalMaxPooling2D(), L.Dense(2)]), ".h5"),
        # -- copies: padding, cropping, nearest upsampling
        "pad_crop_upsample": (seq((5, 6, 2), lambda: [
            L.ZeroPadding2D(((1, 2), (0, 3))), L.Conv2D(2, 3), L.Cropping2D(((1, 0), (2, 1))),
            L.UpSampling2D((2, 3)), L.MaxPooling2D(2), L.ZeroPadding2D(1), L.Cropping2D(2)]), ".keras"),
        "pad_crop_upsample_cf": (seq((2, 4, 5), lambda: [
            L.ZeroPadding2D((2, 1), data_format=cf), L.UpSampling2D(2, data_format=cf),
            L.Cropping2D(((0, 3), 1), data_format=cf), L.Conv2D(2, 2, data_format=cf)]), ".h5"),
        # -- Reshape in Keras's C order, 3-D -> 1-D -> 3-D (channels_last and channels_first next layers)
        "reshape_last": (seq((4, 3, 2), lambda: [
            L.Reshape((24,)), L.Dense(12), L.Reshape((2, 3, 2)), L.Conv2D(2, 2, padding="same"),
            L.Reshape((3, 2, 2)), L.Reshape((-1,))]), ".keras"),
        "reshape_to_channels_first": (seq((3, 4, 2), lambda: [
            L.Reshape((4, 3, 2)), L.Conv2D(2, 2, data_format=cf), L.Flatten()]), ".keras"),
        # -- Rescaling (scalar, per channel, broadcast along the last axis of a channels_first tensor)
        "rescaling": (seq((4, 5, 3), lambda: [
            L.Rescaling(1 / 127.5, offset=-1.0), L.Rescaling([0.5, 2.0, -1.0], offset=[0.1, 0.2, 0.3]),
            L.Rescaling(3.0), L.Conv2D(2, 2)]), ".keras"),
        "rescaling_cf_last_axis": (seq((2, 3, 4), lambda: [
            L.Rescaling([1.0, -2.0, 0.5, 4.0], offset=0.25), L.Conv2D(2, 2, data_format=cf)]), ".keras"),
        # -- Normalization: given mean/variance (a zero variance hits the epsilon guard), adapted ones
        "normalization_given": (seq((4, 5, 3), lambda: [
            L.Normalization(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.25, 1.0]), L.Conv2D(2, 2)]), ".keras"),
        "normalization_zero_variance_1d": (seq((6,), lambda: [
            L.Normalization(mean=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], variance=[1.0, 0.0, 2.0, 0.5, 9.0, 0.01])]),
                                           ".keras"),
        "normalization_adapted_per_position": (adapted((4, 5, 2), axis=(1, 2)), ".keras"),
        "normalization_adapted_scalar": (adapted((3, 4, 2), axis=None), ".keras"),
        # -- activation layers (the inputs span -2..2, so every branch is taken)
        "relu_plain_and_max": (seq((4, 5, 2), lambda: [L.ReLU(), L.ReLU(max_value=1.2)]), ".keras"),
        "relu_threshold_slope": (seq((4, 5, 2), lambda: [L.ReLU(negative_slope=0.2, threshold=0.5)]), ".keras"),
        "relu_slope_max6": (seq((4, 5, 2), lambda: [
            L.Rescaling(4.0), L.ReLU(negative_slope=0.1, max_value=6.0)]), ".keras"),
        "relu_all_options": (seq((4, 5, 2), lambda: [
            L.ReLU(negative_slope=0.3, threshold=0.4, max_value=1.1)]), ".h5"),
        "relu_leaky_path_max0": (seq((4, 5, 2), lambda: [
            L.Conv2D(2, 2), L.ReLU(negative_slope=0.25), L.ReLU(max_value=0.0, negative_slope=0.5)]), ".keras"),
        "leaky_relu": (seq((4, 5, 2), lambda: [L.LeakyReLU(), L.Conv2D(3, 2), L.LeakyReLU(negative_slope=1.5)]),
                       ".keras"),
        "prelu_shared_and_not": (seq((5, 4, 2), lambda: [
            L.Conv2D(3, 2), L.PReLU(shared_axes=[1, 2]), L.PReLU(), L.PReLU(shared_axes=[2]), L.Flatten(),
            L.Dense(4), L.PReLU()]), ".keras"),
        "prelu_cf_shared_spatial": (seq((2, 4, 5), lambda: [
            L.Conv2D(3, 2, data_format=cf), L.PReLU(shared_axes=[2, 3])]), ".h5"),
        "elu_layers": (seq((4, 5, 2), lambda: [L.ELU(), L.Conv2D(2, 2), L.ELU(alpha=0.5)]), ".keras"),
        "softmax_layer": (seq((3, 4, 2), lambda: [L.Flatten(), L.Dense(5), L.Softmax()]), ".keras"),
        "softmax_layer_maps": (seq((3, 4, 2), lambda: [L.Conv2D(3, 2, padding="same"), L.Softmax(axis=-1)]), ".keras"),
        # -- mish, elementwise and fused
        "mish": (seq((4, 5, 2), lambda: [
            L.Conv2D(3, 2, padding="same", activation="mish"), L.Activation("mish"), L.Flatten(),
            L.Dense(4, activation="mish")]), ".keras"),
    }
    return cases




built, test_cached_values_equal_keras, test_libreoffice_recalculation_equals_keras, \
    test_new_input_typed_into_cells_still_equals_keras = case_tests(_cases, "layers_more")


def test_workbook_reads_parameters_from_cells(built):
    """No parameter is baked into a formula: BatchNormalization reads gamma, beta, the moving
    statistics and epsilon from its parameter sheet, one row per channel."""
    import re

    import openpyxl
    wb = openpyxl.load_workbook(built["bn_channels_last"]["book"])
    params = next(n for n in wb.sheetnames if n.endswith(" bn params"))
    rows = [[c.value for c in r] for r in wb[params].iter_rows(min_row=4, max_row=8, max_col=6)]
    assert rows[0][1:] == ["gamma", "beta", "moving mean", "moving variance", "epsilon"]
    assert [r[5] for r in rows[1:]] == pytest.approx([1.001e-5] * 4)
    stage = next(n for n in wb.sheetnames if n.endswith(" bn c2"))
    formula = wb[stage]["B5"].value
    assert f"'{params}'!$F$7" in formula and f"'{params}'!$B$7*" in formula and "SQRT(" in formula
    assert not re.search(r"\d", re.sub(r"'(?:[^']|'')*'!\$?[A-Z]+\$?\d+|\b[A-Z]+\d+\b", "", formula))


# -- numpy twins against Keras, edge points included (no spreadsheet needed) ----------------------

EDGE = np.array([-3.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.4, 0.5, 0.75, 1.0, 1.1, 1.2, 2.0, 6.0, 7.0],
                np.float32)


@pytest.mark.parametrize("options", [
    {}, {"max_value": 1.2}, {"threshold": 0.5}, {"negative_slope": 0.1}, {"negative_slope": 0.1, "threshold": 0.5},
    {"negative_slope": 0.1, "max_value": 6.0}, {"max_value": 6.0}, {"max_value": 0.0},
    {"negative_slope": 0.2, "threshold": 0.4, "max_value": 1.1}, {"negative_slope": 1.5},
    {"threshold": 1.0, "max_value": 0.5}])
def test_relu_twin_equals_keras_at_edges(options):
    """Keras 3's ReLU layer is piecewise with a jump at the threshold; the twin must agree at the kinks."""
    from xlcnn.layers import writer_for
    from xlcnn.layers.activations import relu_values
    want = np.asarray(keras().layers.ReLU(**options)(EDGE[None]))[0]
    from xlcnn.model import spec_of
    writer = writer_for(spec_of(keras().layers.ReLU(**options)))
    got = relu_values(EDGE.astype(np.float64), *writer.settings())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_mish_and_log_softmax_twins_equal_keras():
    from xlcnn.layers import functions as act
    x = np.concatenate([EDGE, np.float32([-40.0, 30.0, 88.0])])
    np.testing.assert_allclose(act.ELEMENTWISE["mish"][1](x.astype(np.float64)),
                               np.asarray(keras().activations.mish(x)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(act.log_softmax(x.astype(np.float64)),
                               np.asarray(keras().activations.log_softmax(x)), rtol=1e-6, atol=1e-5)


# -- edge inputs through LibreOffice: values exactly at thresholds, log_softmax's column ----------

@pytest.fixture(scope="module")
def edge_books(tmp_path_factory):
    """A ReLU model fed values exactly at its threshold and max_value, and a log_softmax column
    written on its own; LibreOffice recalculates both in one start."""
    from xlcnn.build import build
    from xlcnn.layers.base import write_log_softmax_column
    from xlcnn.layout import FIRST_COL, FIRST_ROW
    from xlcnn.libreoffice import recalculate
    from xlcnn.workbook import Book
    k = keras()
    L = k.layers
    base = tmp_path_factory.mktemp("edges")
    model = k.Sequential([k.Input((3, 5, 1)), L.ReLU(negative_slope=0.2, threshold=0.5, max_value=1.0),
                          L.LeakyReLU(0.5), L.ELU(0.7), L.Flatten(), L.Softmax()])
    model.save(str(base / "relu.keras"))
    x = np.array([-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, -0.25, 2.0, 0.5, 1.0, 0.0, -2.0, 0.5],
                 np.float32).reshape(3, 5, 1)
    np.save(base / "relu.npy", x)
    build(base / "relu.keras", base / "relu.npy", base / "relu.xlsx")
    z = np.array([3.0, -1.0, 0.5, 700.0, 699.0, -50.0])   # EXP(700) alone overflows in float64 sheets
    book = Book(base / "log_softmax.xlsx")
    sheet = book.add_sheet("z", back_link=False)
    sheet.numbers(FIRST_ROW, FIRST_COL, z[:, None])
    out_sheet = book.add_sheet("out", back_link=False)
    cached, col = write_log_softmax_column(out_sheet, FIRST_COL, FIRST_ROW, z, FIRST_COL, "z")
    book.close()
    lo = recalculate([base / "relu.xlsx", base / "log_softmax.xlsx"], base / "lo")
    return dict(model=base / "relu.keras", x=x, lo=lo[0], log_softmax=lo[1], z=z, cached=cached, col=col)


@needs_libreoffice
def test_activation_layers_at_their_kinks_through_libreoffice(edge_books):
    values, _ = stage_values(edge_books["lo"])
    assert_matches_keras(values, edge_books["model"], edge_books["x"])


@needs_libreoffice
def test_log_softmax_column_through_libreoffice(edge_books):
    from conftest import openpyxl_block_reader
    from xlcnn.layout import FIRST_ROW
    block, _, _ = openpyxl_block_reader(edge_books["log_softmax"])
    z = edge_books["z"]
    got = block("out", FIRST_ROW, edge_books["col"], FIRST_ROW + len(z) - 1, edge_books["col"])[:, 0]
    want = np.asarray(keras().activations.log_softmax(z.astype(np.float32)), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(edge_books["cached"], want, rtol=1e-6, atol=1e-5)


# -- refusals by name, before a file is left behind -------------------------------------------------

@pytest.mark.parametrize("shape,layers,needle", [
    ((6, 6, 2), lambda L: [L.BatchNormalization(axis=1)], "axis=1"),
    ((6, 6, 2), lambda L: [L.BatchNormalization(axis=2)], "height axis"),
    ((6, 6, 2), lambda L: [L.UpSampling2D(interpolation="bilinear")], "interpolation='bilinear'"),
    ((6, 6, 2), lambda L: [L.Normalization(mean=[0.0, 1.0], variance=[1.0, 2.0], invert=True)], "invert=True"),
    ((6, 6, 2), lambda L: [L.Reshape((3, 2, 6, 2))], "target_shape=(3, 2, 6, 2)"),
    ((6, 6, 2), lambda L: [L.Softmax(axis=1)], "is not its last axis"),
    ((6, 6, 2), lambda L: [L.Flatten(), L.Softmax(axis=0)], "axis=0"),
    ((6, 6, 2), lambda L: [L.DepthwiseConv2D(3, activation="softmax")], "fused softmax"),
    ((6, 6, 2), lambda L: [L.SeparableConv2D(2, 3, dtype="float16")], "dtype policy 'float16'"),
    ((2, 6, 6), lambda L: [L.ZeroPadding2D(1)], "expects a 3-D channels_last input"),
])
def test_unsupported_options_are_refused_by_name(tmp_path, shape, layers, needle):
    from xlcnn.build import build
    from xlcnn.errors import XlcnnError
    k = keras()
    first = {"data_format": "channels_first"} if shape[0] == 2 else {}
    model = k.Sequential([k.Input(shape), k.layers.Conv2D(2, 1, **first), *layers(k.layers)])
    model.save(str(tmp_path / "m.keras"))
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    with pytest.raises(XlcnnError, match=None) as info:
        build(tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "never.xlsx")
    assert needle in str(info.value), str(info.value)
    assert not (tmp_path / "never.xlsx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _bias_shift(layer):
    """What a channels_first layer's bias (+1 on channel 0, -1 on channel 1) adds to its first row."""
    x = np.random.default_rng(0).normal(size=(1, 2, 6, 6)).astype(np.float32)
    layer.build(x.shape)
    kernel, _ = layer.get_weights()
    layer.set_weights([kernel, np.float32([1.0, -1.0])])
    with_bias = np.asarray(layer(x))[0]
    layer.set_weights([kernel, np.float32([0.0, 0.0])])
    return (with_bias - np.asarray(layer(x))[0])[:, 0, :]


def test_keras_channels_first_bias_quirk_is_detected():
    """The probe behind the *_width_equals_* cases agrees with what the layer really does: this Keras
    adds a channels_first bias along the width when the output has as many columns as channels."""
    from xlcnn.layers.base import bias_along_width
    from xlcnn.model import spec_of
    k = keras()
    layer = k.layers.DepthwiseConv2D((1, 5), data_format="channels_first")
    shift = _bias_shift(layer)
    quirk = bias_along_width(spec_of(layer, output_shape=(2, 1, 2)), "channels_first", 2, 2)
    expected = np.float32([[1.0, -1.0], [1.0, -1.0]]) if quirk else np.float32([[1.0, 1.0], [-1.0, -1.0]])
    np.testing.assert_allclose(shift, expected, atol=1e-5)


def test_tf_keras_layers_add_their_bias_per_channel_and_are_not_shifted():
    from xlcnn.layers.base import bias_along_width
    from xlcnn.model import quiet_keras
    tfk = quiet_keras("tf_keras")
    layer = tfk.layers.Conv2D(2, (1, 5), data_format="channels_first")
    np.testing.assert_allclose(_bias_shift(layer), [[1.0, 1.0], [-1.0, -1.0]], atol=1e-5)
    from xlcnn.model import spec_of
    assert not bias_along_width(spec_of(layer, output_shape=(2, 1, 2)), "channels_first", 2, 2)


def test_unknown_option_of_a_new_layer_is_refused_not_ignored():
    from xlcnn.errors import Refusal
    from xlcnn.layers import writer_for
    from xlcnn.model import spec_of
    writer = writer_for(spec_of(keras().layers.BatchNormalization()))
    writer.config["some_new_option"] = True
    with pytest.raises(Refusal, match="some_new_option"):
        writer.check()
