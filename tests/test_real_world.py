"""Real-world CNN blocks, each built from a real image file, recalculated by LibreOffice and checked
against Keras on every layer, then again after a second input is typed into the input cells:
a MobileNetV2-style block, a ResNet-style block with a projection shortcut, an Inception-style
Concatenate, and a model that starts with Rescaling(1/255) and so takes raw 0..255 pixels."""

from __future__ import annotations

import numpy as np

from conftest import case_tests, SAMPLES, keras, stage_values


def _cases():
    k = keras()
    L = k.layers

    def mobilenet_v2_block():
        i = k.Input((16, 16, 3), name="image")
        x = L.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(i)
        x = L.Conv2D(8, 3, strides=2, use_bias=False, name="stem")(x)
        x = L.BatchNormalization(epsilon=1e-3, name="stem_bn")(x)
        x = L.ReLU(6.0, name="stem_relu6")(x)
        shortcut = x
        x = L.Conv2D(16, 1, use_bias=False, name="expand")(x)
        x = L.BatchNormalization(name="expand_bn")(x)
        x = L.ReLU(6.0, name="expand_relu6")(x)
        x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(x)
        x = L.BatchNormalization(epsilon=1.001e-5, name="depthwise_bn")(x)
        x = L.ReLU(6.0, name="depthwise_relu6")(x)
        x = L.Conv2D(8, 1, use_bias=False, name="project")(x)
        x = L.BatchNormalization(name="project_bn")(x)
        x = L.Add(name="residual")([shortcut, x])
        x = L.GlobalAveragePooling2D(name="gap")(x)
        return k.Model(i, L.Dense(10, activation="softmax", name="classes")(x))

    def resnet_block():
        i = k.Input((12, 12, 1), name="digit")
        x = L.Conv2D(4, 3, padding="same", name="conv_a")(i)
        x = L.BatchNormalization(name="bn_a")(x)
        x = L.Activation("relu", name="relu_a")(x)
        y = L.Conv2D(8, 3, strides=2, padding="same", name="conv_b")(x)
        y = L.BatchNormalization(name="bn_b")(y)
        y = L.Activation("relu", name="relu_b")(y)
        y = L.Conv2D(8, 3, padding="same", name="conv_c")(y)
        y = L.BatchNormalization(name="bn_c")(y)
        projection = L.Conv2D(8, 1, strides=2, name="projection")(x)
        projection = L.BatchNormalization(name="projection_bn")(projection)
        z = L.Add(name="add")([y, projection])
        z = L.Activation("relu", name="relu_out")(z)
        z = L.GlobalMaxPooling2D(name="gmp")(z)
        return k.Model(i, L.Dense(10, activation="softmax", name="classes")(z))

    def inception_block():
        i = k.Input((10, 10, 1), name="digit")
        a = L.Conv2D(3, 1, activation="relu", name="b1x1")(i)
        b = L.Conv2D(2, 1, activation="relu", name="b3x3_reduce")(i)
        b = L.Conv2D(4, 3, padding="same", activation="relu", name="b3x3")(b)
        c = L.Conv2D(2, 1, activation="relu", name="b5x5_reduce")(i)
        c = L.Conv2D(3, 5, padding="same", activation="relu", name="b5x5")(c)
        d = L.MaxPooling2D(3, strides=1, padding="same", name="pool")(i)
        d = L.Conv2D(2, 1, activation="relu", name="pool_proj")(d)
        x = L.Concatenate(name="inception")([a, b, c, d])
        x = L.AveragePooling2D(2, name="avg")(x)
        x = L.Flatten(name="flatten")(x)
        return k.Model(i, L.Dense(10, activation="softmax", name="classes")(x))

    def rescaling_first():
        return k.Sequential([
            k.Input((14, 14, 1), name="raw_pixels"),
            L.Rescaling(1.0 / 255, name="rescale"),
            L.Conv2D(4, 3, activation="relu", name="conv"),
            L.MaxPooling2D(2, name="pool"),
            L.Flatten(name="flatten"),
            L.Dense(10, activation="softmax", name="classes"),
        ])

    return {"mobilenet_v2_block": (mobilenet_v2_block, ".keras"), "resnet_block": (resnet_block, ".keras"),
            "inception_block": (inception_block, ".h5"), "rescaling_first": (rescaling_first, ".keras")}


IMAGES = {"mobilenet_v2_block": SAMPLES / "digits" / "digit_3.png",   # grayscale, made RGB by xlcnn
          "resnet_block": SAMPLES / "digits" / "digit_5.png",
          "inception_block": SAMPLES / "digits" / "digit_1.jpg",
          "rescaling_first": SAMPLES / "digits" / "digit_9.png"}


def _randomise_batchnorm(model, seed):
    """Trained-looking moving statistics, so batch norm is not the identity."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.2, 2.0, n)])
    return model


def _randomised_cases():
    return {name: (lambda make=make, i=i: _randomise_batchnorm(make(), i), suffix)
            for i, (name, (make, suffix)) in enumerate(_cases().items())}


built, test_cached_values_equal_keras, test_libreoffice_recalculation_equals_keras, \
    test_new_input_typed_into_cells_still_equals_keras = case_tests(_randomised_cases, "real_world", images=IMAGES)


def test_rescaling_model_gets_raw_pixels(built):
    """A model that begins with Rescaling expects 0..255, so xlcnn does not scale by 1/255."""
    x = built["rescaling_first"]["x"]
    assert x.max() > 200 and x.min() >= 0
    values, _ = stage_values(built["rescaling_first"]["book"])
    assert float(np.max(values["rescale"])) <= 1.0


def test_mobilenet_input_is_rgb_from_a_grayscale_file(built):
    x = built["mobilenet_v2_block"]["x"]
    assert x.shape == (16, 16, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 1])
