"""LayerNormalization and Conv2DTranspose / Conv1DTranspose, proven against Keras through LibreOffice.

As for every layer: each case is a tiny real Keras model; the cached values equal Keras (and xlcnn
verify agrees); LibreOffice recalculates every formula and each stage equals Keras; a second input
typed into the input cells, recalculated, still equals Keras. The NumPy twins (layer_norm_values,
conv_transpose_values) are also checked against Keras over many geometries, and what is not
reproduced is refused by name.
"""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest

from conftest import sequential, case_tests, keras, needs_libreoffice, stage_values

RANDOM = dict(gamma_initializer="random_normal", beta_initializer="random_normal")


def _cases():
    """name -> (builder returning a Keras model, file suffix)."""
    k = keras()
    L = k.layers

    seq = sequential

    return {
        # -- LayerNormalization --------------------------------------------------------------------
        "ln_dense_last_axis": (seq((6,), lambda: [
            L.Dense(5, activation="tanh"), L.LayerNormalization(**RANDOM), L.Dense(3, activation="softmax")]),
            ".keras"),
        # one group per pixel, spanning the channel sheets
        "ln_image_channels": (seq((3, 4, 2), lambda: [
            L.Conv2D(3, 2, padding="same", bias_initializer="random_normal", name="conv"),
            L.LayerNormalization(name="ln", **RANDOM)]),
            ".keras"),
        # one group: the whole sample; gamma and beta per cell
        "ln_image_axes_123": (seq((4, 5, 2), lambda: [
            L.Conv2D(3, 2, name="conv"), L.LayerNormalization(axis=[1, 2, 3], name="ln", **RANDOM)]), ".keras"),
        "ln_image_height_width_eps": (seq((4, 3, 2), lambda: [
            L.LayerNormalization(axis=[1, 2], epsilon=1e-5, **RANDOM), L.LayerNormalization(axis=2, **RANDOM)]),
            ".keras"),
        "ln_channels_first": (seq((3, 4, 5), lambda: [
            L.Conv2D(3, 2, data_format="channels_first"), L.LayerNormalization(axis=1, **RANDOM),
            L.LayerNormalization(axis=[2, 3], **RANDOM)]), ".keras"),
        "ln_signal": (seq((9, 3), lambda: [
            L.Conv1D(4, 3, bias_initializer="random_normal", name="conv"), L.LayerNormalization(name="ln", **RANDOM),
            L.LayerNormalization(axis=1, epsilon=1e-5), L.LayerNormalization(axis=[1, 2], **RANDOM)]), ".keras"),
        "ln_center_scale_off": (seq((3, 4, 2), lambda: [
            L.LayerNormalization(center=False, scale=False, epsilon=1e-5),
            L.LayerNormalization(center=False, gamma_initializer="random_normal"),
            L.LayerNormalization(axis=[1, 2, 3], scale=False, beta_initializer="random_normal")]), ".keras"),
        # Keras sorts [1, -1] as [-1, 1]: gamma is stored as (channels, height) and read back in C order
        "ln_mixed_sign_axes": (seq((3, 4, 2), lambda: [L.LayerNormalization(axis=[1, -1], **RANDOM)]), ".keras"),
        # Keras 3's deprecated rms_scaling: x / sqrt(var + eps) * gamma
        "ln_rms_scaling": (seq((7, 3), lambda: [
            L.LayerNormalization(rms_scaling=True, gamma_initializer="random_normal")]), ".keras"),
        # -- Conv2DTranspose / Conv1DTranspose ---------------------------------------------------
        "convT_valid": (seq((3, 4, 2), lambda: [
            L.Conv2DTranspose(3, 3, bias_initializer="random_normal")]), ".keras"),
        "convT_same_stride2_relu": (seq((3, 4, 2), lambda: [
            L.Conv2DTranspose(2, 3, strides=2, padding="same", activation="relu",
                              bias_initializer="random_normal", name="up")]), ".keras"),
        # stride 3 beyond a kernel of 2: the default output_padding adds a row only the bias reaches
        "convT_stride3": (seq((2, 3, 2), lambda: [
            L.Conv2DTranspose(2, (2, 3), strides=3, bias_initializer="random_normal"),
            L.Conv2DTranspose(1, 4, strides=3, padding="same")]), ".keras"),
        "convT_output_padding": (seq((3, 3, 2), lambda: [
            L.Conv2DTranspose(2, 3, strides=2, padding="same", output_padding=1),
            L.Conv2DTranspose(2, 2, strides=2, output_padding=(1, 0), bias_initializer="random_normal")]),
            ".keras"),
        "convT_dilation2": (seq((4, 4, 2), lambda: [
            L.Conv2DTranspose(2, 3, dilation_rate=2, padding="same"),
            L.Conv2DTranspose(2, (2, 3), dilation_rate=(2, 1))]), ".keras"),
        "convT_no_bias_mixed_strides": (seq((3, 3, 2), lambda: [
            L.Conv2DTranspose(3, (3, 2), strides=(2, 1), use_bias=False, activation="tanh")]), ".h5"),
        "convT_channels_first": (seq((2, 3, 4), lambda: [
            L.Conv2DTranspose(3, 3, strides=2, padding="same", data_format="channels_first", activation="relu",
                              bias_initializer="random_normal")]), ".keras"),
        # Keras 3 on TensorFlow adds a channels_first bias along the width when width == filters
        "convT_channels_first_width_equals_filters": (seq((2, 3, 3), lambda: [
            L.Conv2DTranspose(4, 2, data_format="channels_first", bias_initializer="random_normal")]), ".keras"),
        # 40 input channels x 9 taps: past Excel's formula limit, the products go to partial sums
        "convT_partial_sums": (seq((3, 3, 40), lambda: [
            L.Conv2DTranspose(1, 3, padding="same", bias_initializer="random_normal")]), ".keras"),
        # an autoencoder's decoder after its encoder
        "decoder_chain": (seq((8, 8, 1), lambda: [
            L.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
            L.Conv2D(6, 3, strides=2, padding="same", activation="relu"),
            L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu"),
            L.Conv2DTranspose(1, 3, strides=2, padding="same", activation="sigmoid")]), ".keras"),
        "conv1d_transpose": (seq((6, 2), lambda: [
            L.Conv1DTranspose(3, 3, strides=2, padding="same", output_padding=1, activation="tanh",
                              bias_initializer="random_normal"),
            L.Conv1DTranspose(2, 2, dilation_rate=2)]), ".keras"),
        "conv1d_transpose_channels_first": (seq((2, 5), lambda: [
            L.Conv1DTranspose(3, 3, strides=2, data_format="channels_first", bias_initializer="random_normal"),
            L.LayerNormalization(axis=1, **RANDOM)]), ".keras"),
        # a Keras 2 file (tf_keras): its transposed convolution and layer normalization compute the same
        "tf_keras_convT_ln": (lambda: _tf_keras_model(), ".h5"),
    }


def _tf_keras_model():
    from xlcnn.model import quiet_keras
    tfk = quiet_keras("tf_keras")
    L = tfk.layers
    return tfk.Sequential([
        tfk.Input((3, 4, 2)),
        L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1, activation="relu",
                          bias_initializer="random_normal"),
        L.LayerNormalization(axis=[1, 2, 3], **RANDOM), L.Conv2DTranspose(2, 2, dilation_rate=2),
        L.LayerNormalization()])


built, test_cached_values_equal_keras, test_libreoffice_recalculation_equals_keras, \
    test_new_input_typed_into_cells_still_equals_keras = case_tests(_cases, "layers_new")


@needs_libreoffice
@pytest.mark.skipif(shutil.which("ssconvert") is None, reason="Gnumeric (ssconvert) is not installed")
@pytest.mark.filterwarnings("ignore:Workbook contains no default style")
def test_gnumeric_recalculates_the_new_layers_to_keras(built, tmp_path):
    """A second spreadsheet engine: Gnumeric recalculates the second input's workbooks (the stats
    sheet's AVERAGE and SUMPRODUCT((range - mean)^2), the products of the transposed convolutions)."""
    from conftest import assert_matches_keras
    from xlcnn.gnumeric import recalculate
    names = ["ln_image_channels", "ln_image_axes_123", "ln_signal", "ln_rms_scaling", "convT_output_padding",
             "convT_channels_first", "conv1d_transpose"]
    cases = [built[n] for n in names]
    for case, path in zip(cases, recalculate([c["edited"] for c in cases], tmp_path)):
        values, _ = stage_values(path)
        assert_matches_keras(values, case["model"], case["x2"])


# -- what the formulas look like -------------------------------------------------------------------

def _sheet(case, suffix):
    import openpyxl
    wb = openpyxl.load_workbook(case["book"])
    return next(wb[n] for n in wb.sheetnames if n.endswith(suffix))


def test_layer_norm_stats_are_average_and_mean_squared_deviation(built):
    """The stats sheet: =AVERAGE over the group's cells on every channel sheet, the variance as the
    sum of squared deviations / n; each output cell reads its group's mean, variance and epsilon."""
    case = built["ln_image_channels"]
    stats = _sheet(case, " stats")
    assert stats["B5"].value == 0.001                      # epsilon, in a cell
    mean, var = stats["D5"].value, stats["I5"].value       # the group of pixel (0, 0); width 4
    assert mean == "=AVERAGE('02 conv c0'!B5,'02 conv c1'!B5,'02 conv c2'!B5)"
    assert var == "=(('02 conv c0'!B5-D5)^2+('02 conv c1'!B5-D5)^2+('02 conv c2'!B5-D5)^2)/3"
    out = _sheet(case, "03 ln c1")["C6"].value             # channel 1, pixel (1, 1)
    assert out == ("=('02 conv c1'!C6-'03 ln stats'!$E$6)/SQRT('03 ln stats'!$J$6+'03 ln stats'!$B$5)"
                   "*'03 ln params'!$B$6+'03 ln params'!$C$6"), out

    whole = _sheet(built["ln_image_axes_123"], " stats")
    assert whole["D5"].value == "=AVERAGE('02 conv c0'!B5:E7,'02 conv c1'!B5:E7,'02 conv c2'!B5:E7)"
    assert whole["F5"].value.startswith("=(SUMPRODUCT(('02 conv c0'!B5:E7-D5)^2)+") and \
        whole["F5"].value.endswith(")/36")


def test_conv_transpose_cells_are_explicit_products(built):
    """Output cell (1, 1) of a stride-2 'same' transposed convolution gathers x*w products: input
    cell (0, 0) meets kernel tap (1, 1) there (1 = 0*2 + 1 - 0), for each input channel, + bias."""
    ws = _sheet(built["convT_same_stride2_relu"], "02 up c0")
    formula = ws["C6"].value
    w = "'02 up w'"
    assert formula == f"='01 input c0'!B5*{w}!$E$6+'01 input c1'!B5*{w}!$I$6+{w}!$B$5", formula


def test_long_sums_are_split_into_partial_sums(built):
    import openpyxl
    case = built["convT_partial_sums"]
    wb = openpyxl.load_workbook(case["book"])
    ws = next(wb[n] for n in wb.sheetnames if n.endswith(" c0") and "transpose" in n)
    z = ws["B5"].value
    # z adds partial-sum cells of its own sheet (blocks to the right) and the bias
    parts = [ws.cell(row=5, column=c).value for c in range(2, ws.max_column + 1)]
    partials = [p for p in parts[1:] if isinstance(p, str) and p.startswith("='01 input")]
    assert len(partials) >= 2 and "'01 input" not in z, z
    assert all(len(p) <= 8192 for p in partials)


# -- the NumPy twins against Keras, over many geometries (no workbook) -----------------------------

def _conv_transpose_grid():
    for n_h, k, s, padding, op, d in itertools.product(
            [3, 4], [1, 2, 3, 4], [1, 2, 3], ["valid", "same"], [None, 0, 1, 2], [1, 2]):
        if (d > 1 and s > 1) or (op is not None and op >= s):
            continue
        yield n_h, k, s, padding, op, d


def test_conv_transpose_values_equal_keras_over_many_geometries():
    """conv_transpose_values (the twin that fills the cached values) equals Keras wherever Keras can
    run the layer; where TensorFlow cannot, tensorflow_can_run says so too."""
    from xlcnn.layers.conv_transpose import conv_transpose_values, tensorflow_can_run
    k = keras()
    rng = np.random.default_rng(1)
    checked = 0
    for n_h, ks, s, padding, op, d in _conv_transpose_grid():
        layer = k.layers.Conv2DTranspose(2, (ks, 2), strides=(s, 1), padding=padding, dilation_rate=(d, 1),
                                         output_padding=None if op is None else (op, 0),
                                         bias_initializer="random_normal")
        x = rng.normal(size=(1, n_h, 3, 3)).astype(np.float32)
        can = tensorflow_can_run(n_h, ks, s, d, padding, op) and \
            tensorflow_can_run(3, 2, 1, 1, padding, None if op is None else 0)
        try:
            want = np.asarray(layer(x))[0]
        except Exception:  # noqa: BLE001  (TensorFlow refuses this geometry)
            assert not can, (n_h, ks, s, padding, op, d)
            continue
        assert can, (n_h, ks, s, padding, op, d)
        kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
        got = conv_transpose_values(np.moveaxis(x[0], -1, 0), kernel, bias, (s, 1), (d, 1), padding,
                                    (op, 0 if op is not None else None))
        np.testing.assert_allclose(np.moveaxis(got, 0, -1), want, rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("shape,axis", [((5,), -1), ((6, 3), -1), ((6, 3), 1), ((6, 3), [1, 2]),
                                        ((3, 4, 2), -1), ((3, 4, 2), [1, 2]), ((3, 4, 2), [1, 2, 3]),
                                        ((3, 4, 2), [1, -1]), ((3, 4, 2), [-2, 3]), ((3, 4, 2), 2)])
@pytest.mark.parametrize("rms", [False, True])
def test_layer_norm_values_equal_keras(shape, axis, rms):
    from xlcnn.layers.layer_normalization import keras_broadcast, layer_norm_values
    k = keras()
    layer = k.layers.LayerNormalization(axis=axis, rms_scaling=rms, **RANDOM)
    x = np.random.default_rng(2).normal(1.0, 2.0, size=(1, *shape)).astype(np.float32)
    want = np.asarray(layer(x))[0]
    weights = [np.asarray(w, np.float64) for w in layer.get_weights()]
    axes = sorted(a % (len(shape) + 1) - 1 for a in ([axis] if isinstance(axis, int) else axis))
    gamma = keras_broadcast(weights[0], layer.get_config()["axis"], shape)
    beta = None if rms else keras_broadcast(weights[1], layer.get_config()["axis"], shape)
    got = layer_norm_values(x[0], axes, gamma, beta, layer.epsilon, rms)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- refusals by name, before a file is left behind ------------------------------------------------

@pytest.mark.parametrize("shape,layers,needle", [
    # a group spanning 300 channel sheets: its AVERAGE would pass Excel's 255 arguments
    ((1, 2, 300), lambda L: [L.LayerNormalization()], "255-argument"),
    ((4, 4, 2), lambda L: [L.Conv2DTranspose(2, 3, activation="softmax")], "fused softmax"),
    ((4, 4, 2), lambda L: [L.Conv2DTranspose(2, 3, dtype="float16")], "dtype policy 'float16'"),
    ((4, 4, 2), lambda L: [L.LayerNormalization(dtype="float16")], "dtype policy 'float16'"),
])
def test_unsupported_options_are_refused_by_name(tmp_path, shape, layers, needle):
    from xlcnn.build import build
    from xlcnn.errors import XlcnnError
    k = keras()
    model = k.Sequential([k.Input(shape), *layers(k.layers)])
    model.save(str(tmp_path / "m.keras"))
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    with pytest.raises(XlcnnError) as info:
        build(tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "never.xlsx")
    assert needle in str(info.value), str(info.value)
    assert not (tmp_path / "never.xlsx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_layer_norm_axis_checks_refuse_by_name():
    """Axes checked against the input's rank before anything is written: the batch axis, an axis
    that does not exist, an axis named twice."""
    from xlcnn.errors import Refusal
    from xlcnn.layers import writer_for
    from xlcnn.spec import LayerSpec
    for axis, needle in [(0, "batch axis"), ([1, 4], "does not exist"), ([1, -3], "names an axis twice")]:
        spec = LayerSpec(kind="LayerNormalization", name="ln", config=dict(axis=axis, epsilon=1e-3, center=True,
                                                                        scale=True, rms_scaling=False),
                         input_shapes=[(3, 4, 2)], output_shape=(3, 4, 2))
        writer = writer_for(spec)
        writer.check()
        with pytest.raises(Refusal, match=needle):
            writer.check_inputs(spec.input_shapes)


def test_signal_stats_read_a_row_of_neighbouring_channel_columns(built):
    """A signal's channels are neighbouring columns of one sheet: a group over the channels is one
    range, a row of that sheet."""
    stats = _sheet(built["ln_signal"], "03 ln stats")
    assert stats["D5"].value == "=AVERAGE('02 conv'!B5:E5)", stats["D5"].value
    _, entries = stage_values(built["ln_signal"]["book"])
    assert [e.klass for e in entries].count("LayerNormalization") == 3 * 4
