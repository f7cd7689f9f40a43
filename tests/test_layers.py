"""Every supported layer and option, proven against Keras through a real spreadsheet program.

Each case is a tiny real Keras model. xlcnn builds its workbook; LibreOffice recalculates every
formula from scratch (cached values discarded); each stage must equal Keras's layer output. Then a
second input is typed into the input cells, LibreOffice recalculates again, and the stages must
equal Keras's outputs for that new input: the formulas are live.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import (sequential, case_tests, SHARED_MODELS, assert_matches_keras, keras, needs_libreoffice,
                      stage_values)

ACTIVATIONS = ["relu", "tanh", "sigmoid", "linear", "elu", "selu", "softplus", "softsign", "swish",
               "silu", "relu6", "hard_sigmoid", "exponential", "gelu", "leaky_relu"]


def _cases():
    """name -> (builder returning a Keras model, file suffix). Kept tiny: LibreOffice runs them all."""
    L = keras().layers

    seq = sequential

    cases = {
        # 'same' with stride 2 on odd sizes: Keras's asymmetric padding
        "conv_same_stride2": (seq((9, 11, 2), lambda: [L.Conv2D(3, 3, strides=2, padding="same", activation="relu",
                                                                bias_initializer="random_normal")]), ".keras"),
        "conv_same_even_kernel_nobias": (seq((8, 7, 1), lambda: [L.Conv2D(2, (4, 2), padding="same",
                                                                         use_bias=False)]), ".h5"),
        "conv_dilated": (seq((10, 10, 2), lambda: [L.Conv2D(2, 3, dilation_rate=2, padding="same",
                                                            activation="tanh")]), ".keras"),
        "conv_dilated_valid": (seq((9, 8, 1), lambda: [L.Conv2D(2, (2, 3), dilation_rate=(2, 1))]), ".keras"),
        "conv_valid_strides": (seq((9, 9, 3), lambda: [L.Conv2D(4, (3, 2), strides=(2, 1),
                                                                activation="sigmoid")]), ".h5"),
        "pools": (seq((7, 9, 2), lambda: [L.MaxPooling2D(2, padding="same"),
                                          L.AveragePooling2D((2, 3), strides=(1, 2), padding="same"),
                                          L.MaxPooling2D(2, strides=1),
                                          L.AveragePooling2D(2, padding="valid")]), ".keras"),
        "pools_same_stride3": (seq((8, 10, 1), lambda: [L.AveragePooling2D(2, strides=3, padding="same"),
                                                        L.MaxPooling2D((3, 2), strides=(2, 3), padding="same")]),
                               ".keras"),
        "channels_first": (seq((2, 9, 8), lambda: [
            L.Conv2D(3, 3, strides=2, padding="same", data_format="channels_first", activation="elu"),
            L.MaxPooling2D(2, padding="same", data_format="channels_first"),
            L.AveragePooling2D(1, data_format="channels_first"),
            L.Flatten(data_format="channels_first"),
            L.Dense(5, activation="softmax")]), ".h5"),
        # grouped convolutions: output block g reads only input block g
        "conv_groups": (seq((6, 7, 4), lambda: [L.Conv2D(6, 3, groups=2, padding="same", activation="relu",
                                                        bias_initializer="random_normal")]), ".keras"),
        "conv_groups_cf_dilated": (seq((6, 8, 9), lambda: [L.Conv2D(3, 2, groups=3, dilation_rate=2,
                                                                    data_format="channels_first")]), ".h5"),
        # Keras 3 on TensorFlow adds a channels_first bias along the width when width == channels
        "channels_first_width_equals_channels": (seq((2, 7, 6), lambda: [
            L.Conv2D(3, (3, 4), data_format="channels_first", bias_initializer="random_normal")]), ".keras"),
        # Flatten() with no data_format flattens a channels_first tensor in plain C order
        "channels_first_flatten_default": (seq((2, 5, 4), lambda: [
            L.Conv2D(3, 2, data_format="channels_first", activation="relu6"),
            L.Flatten(), L.Dense(4, activation="softplus")]), ".keras"),
        "flatten_cf_on_channels_last": (seq((3, 4, 2), lambda: [L.Flatten(data_format="channels_first"),
                                                                L.Dense(3)]), ".keras"),
        "identity_layers": (seq((6, 6, 2), lambda: [
            L.Dropout(0.5), L.SpatialDropout2D(0.3), L.GaussianNoise(1.0), L.GaussianDropout(0.4),
            L.ActivityRegularization(l1=0.1), L.Conv2D(2, 3, activation="selu"), L.Flatten(),
            L.Dropout(0.2), L.Dense(3, activation="softmax")]), ".keras"),
        "dense_chain": (seq((4, 4, 1), lambda: [L.Flatten(), L.Dense(7, activation="gelu"),
                                                L.Dense(5, activation="swish"), L.Activation("softmax")]),
                        ".h5"),
    }
    # softmax over the last axis of a 3-D map: across channel sheets, or along a channels_first row
    cases["softmax_maps"] = (seq((5, 6, 2), lambda: [L.Conv2D(3, 3, padding="same"), L.Activation("softmax"),
                                                     L.Flatten(), L.Dense(2)]), ".keras")
    cases["softmax_maps_channels_first"] = (seq((2, 5, 6), lambda: [
        L.Conv2D(3, 2, data_format="channels_first"), L.Activation("softmax"), L.Flatten()]), ".keras")
    cases["log_softmax"] = (seq((3, 4, 2), lambda: [
        L.Flatten(), L.Dense(5, activation="log_softmax", bias_initializer="random_normal"),
        L.Dense(4), L.Activation("log_softmax")]), ".keras")
    for fn in ACTIVATIONS:
        cases[f"activation_{fn}"] = (seq((4, 5, 2), lambda fn=fn: [
            L.Conv2D(3, 2, padding="same", kernel_initializer="random_normal", bias_initializer="random_normal"),
            L.Activation(fn), L.Flatten(), L.Dense(4, activation=fn), L.Activation("softmax")]), ".keras")
    return cases




built, test_cached_values_equal_keras, test_libreoffice_recalculation_equals_keras, \
    test_new_input_typed_into_cells_still_equals_keras = case_tests(_cases, "layers")


def test_padding_notes_example_maxpool_avgpool_conv_same():
    """The exact examples of ../shared/notes/keras-semantics.md: 'same' is not zero padding for pooling."""
    from xlcnn.layers.base import window_geometry
    from xlcnn.layers.conv import conv_values
    from xlcnn.layers.pooling import pool_values
    x = np.array([[-1, -2, 3, -4, -5], [-6, -7, -8, -9, -10], [-11, -12, 13, -14, -15]], dtype=float)[None]
    _, th, _ = window_geometry(3, 2, 2, 1, "same")
    _, tw, _ = window_geometry(5, 2, 2, 1, "same")
    np.testing.assert_array_equal(pool_values(x, th, tw, np.max)[0], [[-1, 3, -5], [-11, 13, -15]])
    np.testing.assert_array_equal(pool_values(x, th, tw, np.mean)[0], [[-4, -4.5, -7.5], [-11.5, -0.5, -15]])
    kernel = np.ones((2, 2, 1, 1))
    pads = ((0, 1), (0, 1))
    np.testing.assert_array_equal(conv_values(x, kernel, None, (2, 2), (1, 1), pads)[0],
                                  [[-16, -18, -15], [-23, -1, -15]])


@needs_libreoffice
@pytest.mark.parametrize("model_file", ["lenet_7oksh.h5", "mnist_frankpolak.h5"])
def test_shared_third_party_models(tmp_path, model_file):
    """Real MNIST models trained by other people (see ../shared/models/README.md for sources)."""
    from PIL import Image
    from xlcnn.build import build
    from xlcnn.libreoffice import recalculate
    model_path = SHARED_MODELS / model_file
    if not model_path.exists():
        pytest.skip("../shared/models is not present")
    # a hand-drawn-style "7": dark strokes on a light ground, as people draw
    img = np.full((84, 84), 250, np.uint8)
    img[14:22, 16:68] = 20
    for t in range(50):
        y, x = 22 + t, 64 - t // 2
        img[y:y + 6, x - 4:x + 4] = 20
    Image.fromarray(img).save(tmp_path / "seven.png")
    out = tmp_path / "book.xlsx"
    result = build(model_path, tmp_path / "seven.png", out)
    lo = recalculate([out], tmp_path / "lo")[0]
    values, entries = stage_values(lo)
    from xlcnn.image import prepare
    from xlcnn.model import load
    loaded = load(model_path)
    x = prepare(tmp_path / "seven.png", loaded.input_shape, "channels_last").tensor
    outs = assert_matches_keras(values, model_path, x)
    assert result.predicted == int(np.argmax(outs[loaded.layers[-1].name][0]))
