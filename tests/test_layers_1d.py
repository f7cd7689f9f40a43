"""1-D CNNs (signals: audio, sensors, ECG) and rank-2 tensors, proven against Keras through LibreOffice.

Each case is a tiny real Keras model on a (steps, channels) or (channels, steps) input. As for the
image layers: the cached values equal Keras; LibreOffice recalculates every formula and each stage
equals Keras; a second input typed into the input cells, recalculated, still equals Keras.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import sequential, case_tests, keras, stage_values


def _cases():
    """name -> (builder returning a Keras model, file suffix)."""
    k = keras()
    L = k.layers

    seq = sequential

    def functional(make_graph):
        def make():
            return make_graph(keras())
        return make

    def resnet_reshape(kk):
        # Dense features reshaped to a (5, 1) signal, a residual Conv1D block, as small ResNet-style nets do
        x_in = kk.Input((4, 4, 1))
        y = kk.layers.Conv2D(2, 2, activation="relu")(x_in)
        y = kk.layers.Flatten()(y)
        y = kk.layers.Dense(5)(y)
        y = kk.layers.Reshape((5, 1))(y)
        a = kk.layers.Conv1D(2, 3, padding="same", activation="relu")(y)
        b = kk.layers.Conv1D(2, 1)(y)
        y = kk.layers.Add()([a, b])
        y = kk.layers.Concatenate(axis=1)([y, b])          # along the steps
        y = kk.layers.Concatenate(axis=-1)([y, y])         # along the channels
        y = kk.layers.Flatten()(y)
        return kk.Model(x_in, kk.layers.Dense(2, activation="softmax")(y))

    return {
        "conv1d_causal_relu": (seq((12, 2), lambda: [
            L.Conv1D(3, 3, padding="causal", activation="relu", bias_initializer="random_normal")]), ".keras"),
        "conv1d_causal_dilated_stride2": (seq((13, 1), lambda: [
            L.Conv1D(2, 3, padding="causal", dilation_rate=2), L.Conv1D(2, 2, strides=2, padding="causal")]),
            ".keras"),
        "conv1d_same_stride2_odd": (seq((11, 2), lambda: [
            L.Conv1D(3, 4, strides=2, padding="same", activation="tanh", bias_initializer="random_normal")]), ".h5"),
        "conv1d_valid_dilated_groups": (seq((14, 4), lambda: [
            L.Conv1D(6, 3, dilation_rate=2, groups=2, use_bias=False), L.Conv1D(2, 2, strides=3)]), ".keras"),
        "conv1d_channels_first": (seq((2, 15), lambda: [
            L.Conv1D(3, 3, padding="same", data_format="channels_first", activation="elu"),
            L.MaxPooling1D(2, padding="same", data_format="channels_first"),
            L.AveragePooling1D(3, strides=2, data_format="channels_first"),
            L.Flatten(data_format="channels_first"), L.Dense(3, activation="softmax")]), ".keras"),
        # Keras 3 on TensorFlow adds the bias along the steps when a channels_first output's
        # length equals its channel count (as for Conv2D's width)
        "conv1d_channels_first_steps_equal_channels": (seq((2, 5), lambda: [
            L.Conv1D(3, 3, data_format="channels_first", bias_initializer="random_normal")]), ".keras"),
        "pools_1d": (seq((13, 2), lambda: [
            L.MaxPooling1D(2, padding="same"), L.AveragePooling1D(3, strides=2, padding="same"),
            L.MaxPooling1D(2, strides=1)]), ".keras"),
        "global_pools_1d": (functional(lambda kk: (lambda x: kk.Model(x, kk.layers.Concatenate()([
            kk.layers.GlobalAveragePooling1D()(x), kk.layers.GlobalMaxPooling1D()(x)])))(kk.Input((9, 3)))),
            ".keras"),
        "global_pools_1d_keepdims_cf": (seq((3, 8), lambda: [
            L.GlobalMaxPooling1D(data_format="channels_first", keepdims=True), L.Flatten()]), ".keras"),
        "pad_crop_upsample_1d": (seq((7, 2), lambda: [
            L.ZeroPadding1D((1, 2)), L.Conv1D(2, 3), L.UpSampling1D(2), L.Cropping1D((1, 3))]), ".keras"),
        "zero_padding_1d_channels_first": (seq((2, 6), lambda: [
            L.ZeroPadding1D(2, data_format="channels_first"),
            L.Conv1D(2, 3, data_format="channels_first")]), ".keras"),
        "depthwise_separable_1d": (seq((12, 3), lambda: [
            L.DepthwiseConv1D(3, depth_multiplier=2, padding="same", activation="relu",
                              bias_initializer="random_normal"),
            L.SeparableConv1D(4, 3, strides=2, padding="same", depth_multiplier=1, activation="swish")]),
            ".keras"),
        "cellwise_1d": (seq((10, 3), lambda: [
            L.Conv1D(4, 3), L.BatchNormalization(beta_initializer="random_normal",
                                                  moving_mean_initializer="random_normal",
                                                  moving_variance_initializer="ones"),
            L.LeakyReLU(negative_slope=0.2), L.Activation("sigmoid"), L.Dropout(0.3),
            L.PReLU(alpha_initializer="random_normal", shared_axes=[1])]), ".keras"),
        # a 2-D image without a channel axis, reshaped to (6, 5, 1), as old MNIST tutorials do
        "rank2_image_input": (seq((6, 5), lambda: [
            L.Reshape((6, 5, 1)), L.Conv2D(2, 3, padding="same", activation="relu"), L.Flatten(),
            L.Dense(3, activation="softmax")]), ".keras"),
        "reshape_map_to_signal": (seq((4, 4, 2), lambda: [
            L.Conv2D(2, 2), L.Reshape((9, 2)), L.Conv1D(3, 2, activation="relu"), L.GlobalAveragePooling1D(),
            L.Dense(2)]), ".keras"),
        "resnet_reshape_5x1": (functional(resnet_reshape), ".keras"),
        # past Excel's 8,192-character formula limit the sums go to partial-sum cells, blocks of
        # columns to the right on the stage's one sheet
        "conv1d_partial_sums": (seq((4, 160), lambda: [
            L.Conv1D(2, 3, padding="same", activation="relu", bias_initializer="random_normal")]), ".keras"),
        "separable1d_partial_sums": (seq((3, 240), lambda: [L.SeparableConv1D(2, 2)]), ".keras"),
        "conv2d_partial_sums": (seq((3, 3, 160), lambda: [L.Conv2D(2, 3, padding="same")]), ".keras"),
    }


built, test_cached_values_equal_keras, test_libreoffice_recalculation_equals_keras, \
    test_new_input_typed_into_cells_still_equals_keras = case_tests(_cases, "layers_1d")


def test_signal_stage_is_one_sheet_with_a_column_per_channel(built):
    """A 1-D stage is one sheet; channel c is column B+c, time running down; the manifest says so."""
    case = built["conv1d_causal_relu"]
    _, entries = stage_values(case["book"])
    conv = [e for e in entries if e.klass == "Conv1D"]
    assert [e.channel for e in conv] == [0, 1, 2]
    assert len({e.sheet for e in conv}) == 1
    # relu is fused: the output block is the second group of columns, one column per channel
    starts = [e.range[1] for e in conv]
    assert starts == [starts[0], starts[0] + 1, starts[0] + 2]
    assert all(e.range[0] == 4 and e.range[2] == 4 + 12 - 1 and e.range[1] == e.range[3] for e in conv)
    assert conv[0].shape == (12, 3) and conv[0].channel_axis == 1


def test_causal_padding_reads_only_the_past(built):
    """Output step t of a causal convolution reads input steps t-2..t; before t = 0 the window
    reaches into the two blank rows kept above the signal (the causal padding, made visible)."""
    import openpyxl
    case = built["conv1d_causal_relu"]
    _, entries = stage_values(case["book"])
    conv = next(e for e in entries if e.klass == "Conv1D" and e.channel == 0)
    ws = openpyxl.load_workbook(case["book"])[conv.sheet]
    first, fifth = ws["B5"].value, ws["B9"].value      # z of steps 0 and 4, channel 0
    # the input signal starts two rows down (row 7), below its two blank padding rows
    assert "'01 input'!B5:B7" in first and "'01 input'!C5:C7" in first
    assert "'01 input'!B9:B11" in fifth and "'01 input'!C9:C11" in fifth
    _, entries = stage_values(case["book"])
    assert [e.range[0] for e in entries if e.klass == "InputLayer"] == [6, 6]


@pytest.mark.parametrize("name", ["conv1d_partial_sums", "separable1d_partial_sums", "conv2d_partial_sums"])
def test_long_sums_go_to_partial_sum_cells_within_excels_limit(built, name):
    import openpyxl
    case = built[name]
    _, entries = stage_values(case["book"])
    stage = [e for e in entries if e.klass in ("Conv1D", "SeparableConv1D", "Conv2D")]
    wb = openpyxl.load_workbook(case["book"])
    formulas = [c.value for e in stage for row in wb[e.sheet].iter_rows() for c in row
                if isinstance(c.value, str) and c.value.startswith("=")]
    assert formulas and max(map(len, formulas)) <= 8192
    z = wb[stage[0].sheet].cell(row=stage[0].range[0] + 1, column=stage[0].range[1] + 1).value
    if name == "conv1d_partial_sums":   # relu's output block; z is the block before it
        z = wb[stage[0].sheet].cell(row=5, column=2).value
    # the stage cell sums partial-sum cells of its own sheet, which read the inputs
    assert "SUMPRODUCT" not in z and "*" not in z, z
    assert len(z.split("+")) >= 2


def test_a_csv_and_a_wav_signal_build_and_equal_keras(tmp_path):
    """Signal inputs end to end: a CSV with a header (one column per channel) and a 16-bit WAV go
    into 1-D models; the stages equal Keras and xlcnn verify passes, the channel names label the
    input sheet."""
    import wave

    import openpyxl

    from conftest import assert_matches_keras
    from xlcnn.build import build
    from xlcnn.image import prepare
    from xlcnn.model import input_layout, load
    from xlcnn.verify import verify
    k = keras()
    L = k.layers
    k.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    csv_model = k.Sequential([k.Input((16, 2)), L.Conv1D(3, 3, padding="causal", activation="relu"),
                              L.GlobalAveragePooling1D(), L.Dense(2, activation="softmax")])
    csv_model.save(str(tmp_path / "imu.keras"))
    rows = rng.normal(size=(16, 2)).round(4)
    (tmp_path / "imu.csv").write_text("ax,ay\n" + "\n".join(f"{a},{b}" for a, b in rows) + "\n")
    wav_model = k.Sequential([k.Input((16, 1)), L.Conv1D(2, 5, strides=2, padding="same"), L.Flatten(), L.Dense(2)])
    wav_model.save(str(tmp_path / "kws.keras"))
    samples = rng.integers(-32768, 32767, size=16).astype("<i2")
    with wave.open(str(tmp_path / "word.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    for model, signal in (("imu.keras", "imu.csv"), ("kws.keras", "word.wav")):
        book = build(tmp_path / model, tmp_path / signal, tmp_path / f"{signal}.xlsx").path
        loaded = load(tmp_path / model)
        x = prepare(tmp_path / signal, loaded.input_shape, input_layout(loaded)).tensor
        values, _ = stage_values(book)
        assert_matches_keras(values, tmp_path / model, x)
        assert verify(book).passed
    np.testing.assert_allclose(x[:, 0], samples / 32768.0)
    ws = openpyxl.load_workbook(tmp_path / "imu.csv.xlsx")["01 input"]
    assert [ws.cell(row=4, column=c).value for c in (2, 3)] == ["c0 ax", "c1 ay"]
