"""A Keras layer as plain data: what the writers in xlcnn/layers/ see, so no writer imports Keras.

model.py reads each layer once into a LayerSpec: its class name, its config, its weights as
float64 arrays (by Keras's short names: kernel, bias, gamma, moving_mean, ...), the shapes it reads
and makes, and the few facts about the running Keras that change the math (the backend epsilon,
the image data format, the channels_first bias quirk). Writers can be built and tested from specs
alone (tests/test_specs.py does, without TensorFlow).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LayerSpec:
    kind: str                          # Keras class name, e.g. "Conv2D"
    name: str                          # the layer's name in the model
    config: dict                       # layer.get_config()
    weights: list = field(default_factory=list)          # float64 arrays in Keras's order
    weight_names: list = field(default_factory=list)     # their short names ("kernel", "bias", ...)
    input_shapes: list = field(default_factory=list)     # shapes read, without the batch axis
    output_shape: tuple = ()                             # shape made, without the batch axis
    params: int = 0                                      # layer.count_params()
    package: str = "keras"                               # "keras" or "tf_keras"
    # Facts of the running Keras: "epsilon" (backend epsilon), "image_data_format",
    # "bias_quirk" (True when Keras adds a channels_first bias along the last axis whenever that
    # axis is as long as the channel count, see layers/base.py bias_along_width), and layer
    # attributes that are not weights ("mean", "variance", "scale", "offset").
    facts: dict = field(default_factory=dict)

    def weight(self, name):
        """The weight called `name` (e.g. "moving_mean"), or None."""
        for short, value in zip(self.weight_names, self.weights):
            if short == name:
                return value
        return None

    def fact(self, name, default=None):
        return self.facts.get(name, default)


def short_weight_name(name):
    """'conv2d/kernel:0' (tf_keras) or 'kernel' (Keras 3) -> 'kernel'."""
    return str(name).split("/")[-1].split(":")[0]


def as_array(value):
    value = value.numpy() if hasattr(value, "numpy") else value
    return np.asarray(value, dtype=np.float64)
