"""What every layer writer shares: the registry by Keras class name, the LayerWriter lifecycle,
option checkers, and (re-exported from their own rooms) the toolbox: geometry.py (windows and
padding), placement.py (where maps go), stages.py (the formula blocks stages share).

A writer is constructed from a LayerSpec (xlcnn/spec.py), `check`s every option of the layer's config
(refusing by name what it cannot reproduce exactly), `plan`s its footprint and shape refusals before
anything is written, then `write`s its stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import Refusal
from ..layout import SheetNames, Tensor
from . import functions as act
# the writer's toolbox, kept in rooms of its own and offered here in one place
from .geometry import Window, channel_axis, padding_text, pair, same_padding, which_text, window_geometry  # noqa: F401
from .placement import MapSheets, check_layout, padding_format, shade_border, write_copy_maps  # noqa: F401
from .stages import (FORMULA_LIMIT, block_refs, join_terms, sumproduct, write_1d_activation,  # noqa: F401
                     write_activation_blocks, write_cellwise_stage, write_elementwise_block,
                     write_log_softmax_column, write_softmax_column, write_softmax_maps, write_weight_matrix)

HANDLERS: dict[str, type] = {}
Shape = tuple[int, ...]                          # a Keras shape without the batch axis
Border = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))

# Config keys that never change what a trained layer computes at inference.
TRAINING_ONLY = {
    "name", "trainable", "kernel_initializer", "bias_initializer", "kernel_regularizer",
    "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint", "seed",
    "depthwise_initializer", "pointwise_initializer", "beta_initializer", "gamma_initializer",
    "moving_mean_initializer", "moving_variance_initializer", "batch_input_shape", "input_shape",
    "input_dim",
}


def handles(*class_names):
    """Register a writer for the Keras layer classes it reproduces."""
    def register(cls):
        cls.handles = class_names
        for name in class_names:
            HANDLERS[name] = cls
        return cls
    return register


def dtype_name(value):
    if isinstance(value, dict):
        value = value.get("config", {}).get("name", value.get("class_name"))
    return str(value)


@dataclass
class Context:
    """What a writer needs while writing: the workbook, the sheet-name registry, its step label."""
    book: object
    names: SheetNames
    step: str  # e.g. "03"
    # the data_format of the nearest later layer that has one: where a reshaped 3-D tensor must
    # keep its channels so the next layer finds one sheet per channel on the right axis
    next_data_format: str | None = None
    # the blank border ((top, bottom), (left, right)) the stage's output maps keep around them: the
    # padding of the 'same' and 'causal' layers that read them (build.required_borders)
    border: tuple = ((0, 0), (0, 0))

    def sheet_name(self, layer_name, suffix=""):
        return self.names.make(f"{self.step} ", layer_name, suffix)


HEADER_ROWS = 5   # title, explanation, block labels, column indices, and a spare


@dataclass
class Footprint:
    """What one stage adds to the workbook, for the estimate made before anything is written."""
    sheets: int = 0
    formulas: int = 0
    constants: int = 0
    rows: int = 0               # the most rows on one of its sheets
    cols: int = 0               # the most columns on one of its sheets
    longest_formula: int = 0
    where: str = ""             # the sheet that needs those rows or columns

    def grow(self, rows, cols, where):
        if rows > self.rows or cols > self.cols:
            self.where = where
        self.rows, self.cols = max(self.rows, rows), max(self.cols, cols)


class LayerWriter:
    handles: tuple = ()
    kind = ""
    # option name -> function(value, config) returning None when supported, else the reason
    options: dict = {}
    passthrough = False
    multi_input = False  # merge layers receive a list of input tensors
    reuses_input_cells = False  # its output is its input's own cells (pass-through, channel concatenation)
    pads_input = False          # a window layer whose 'same'/'causal' padding its input shows as a blank border

    def __init__(self, spec):
        self.spec = spec              # a LayerSpec (xlcnn/spec.py): plain data, never a Keras object
        self.name = spec.name
        self.config = dict(spec.config)
        self.kind = spec.kind

    # -- checks ------------------------------------------------------------------------------
    def refuse(self, message):
        raise Refusal(self.spec, message)

    def check(self) -> None:
        """Refuse, by name, every option this writer does not reproduce exactly."""
        for key, value in self.config.items():
            if key in TRAINING_ONLY:
                continue
            if key == "dtype":
                if "float32" != dtype_name(value):
                    self.refuse(f"dtype policy {dtype_name(value)!r} is not supported; "
                                "xlcnn reproduces float32 layers only")
                continue
            checker = self.options.get(key)
            if checker is None:
                self.refuse(f"option {key}={value!r} is not supported by xlcnn "
                            f"(it would change the math, and xlcnn never ignores an option)")
            reason = checker(value, self.config)
            if reason:
                self.refuse(reason)

    # -- planning: before anything is written ------------------------------------------------
    def plan(self, input_shapes: list[Shape]) -> Footprint:
        """Refuse what these input shapes make impossible, and say what the stage will add to the
        workbook (limits.estimate sums these; no forward pass is needed)."""
        self.check_inputs(list(input_shapes))
        return self.footprint(list(input_shapes), tuple(self.spec.output_shape))

    def check_inputs(self, input_shapes: list[Shape]) -> None:
        """Shape-dependent refusals (a writer overrides it); the Tensor is checked again in write()."""

    def padding_border(self, input_shapes: list[Shape]) -> Border:
        """The padding ((top, bottom), (left, right)) this layer adds around each map of its input,
        in the (h, w) frame of the maps; its input keeps that many blank cells around its maps."""
        if not self.pads_input or not input_shapes:
            return ((0, 0), (0, 0))
        shape = tuple(input_shapes[0])
        axis = channel_axis(self.config.get("data_format"), len(shape))
        spatial = [n for i, n in enumerate(shape) if i != axis]
        H, W = (spatial[0], 1) if len(spatial) == 1 else spatial
        return self.window.pads(H, W)

    def expect_rank(self, input_shapes: list[Shape], rank: int) -> None:
        """Refuse an input of another rank than `rank` (3 for image maps, 2 for signals)."""
        shape = tuple(input_shapes[0])
        if len(shape) != rank:
            fmt = self.config.get("data_format") or "channels_last"
            self.refuse(f"expects a {rank}-D {fmt} input, got shape {shape}")

    def footprint(self, input_shapes: list[Shape], out: Shape) -> Footprint:
        """A deliberately generous estimate from the output shape: one sheet per channel of an image
        map, one sheet for a signal or a vector, a second block for a fused activation, a weight
        sheet of the parameters' size."""
        fp = Footprint(constants=self.params())
        if self.passthrough or not out:
            return fp
        size = int(np.prod(out))
        fused = str(self.config.get("activation", "linear")) not in ("linear", "None")
        fp.formulas = size * (2 if fused else 1)
        if len(out) == 3:
            axis = channel_axis(self.config.get("data_format"), 3)
            h, w = [n for i, n in enumerate(out) if i != axis]
            fp.sheets += out[axis]
            fp.grow(h + HEADER_ROWS, 2 * (w + 1) + 2, self.name)
        elif len(out) == 2:
            fp.sheets += 1
            fp.grow(max(out) + HEADER_ROWS, 2 * (min(out) + 1) + 2, self.name)
        else:
            fp.sheets += 1
            fp.grow(size + HEADER_ROWS, 4, self.name)
        if input_shapes and len(out) == 1 and len(input_shapes[0]) == 1:
            fp.longest_formula = 90
        if self.params():
            fp.sheets += 1
            biggest = max(self.spec.weights, key=np.size) if self.spec.weights else np.zeros(1)
            shape = biggest.shape or (1,)
            if len(shape) <= 2:        # a vector or a matrix: rows = inputs, columns = outputs
                rows, cols = shape[0], (shape[1] if len(shape) == 2 else 1)
            else:                      # a kernel (k..., in, out): a block per (out, in) pair
                rows = shape[-1] * (shape[0] + 1)
                cols = shape[-2] * (int(np.prod(shape[1:-2])) + 1)
            fp.grow(rows + HEADER_ROWS + 1, cols + 3, f"{self.name} weights")
        return fp

    def describe(self):
        """One line for the overview's 'what it does' column."""
        return ""

    def params(self):
        return self.spec.params

    def weights(self):
        """The layer's weights as float64 arrays, in Keras's order (get_weights)."""
        return list(self.spec.weights)

    def write(self, ctx: Context, x: Tensor) -> Tensor:
        raise NotImplementedError


def ok(*_):
    return None


def positive_ints(value, _config):
    """An int or a tuple of ints, each at least 1 (kernel_size, strides, dilation_rate, size)."""
    try:
        if any(v < 1 for v in pair(value)):
            return f"{value!r} must be positive"
    except (TypeError, ValueError):
        return f"{value!r} is not an int or a tuple of ints"
    return None


def positive_ints_or_none(value, config):
    return None if value is None else positive_ints(value, config)


def must_be_none(option):
    """An option that changes the math unless it is off (lora_rank, quantization_config)."""
    def checker(value, _config):
        return None if value in (None, 0) else f"option {option}={value!r} is not supported"
    return checker


def one_of(*allowed):
    def checker(value, _config):
        if value in allowed:
            return None
        return f"{value!r} is not supported (supported: {', '.join(map(repr, allowed))})"
    return checker


def activation_option(value, _config):
    return act.check(value)


def bias_along_width(spec, data_format, out_last, n_bias):
    """True when Keras adds this channels_first layer's bias along its last axis, not the channels.

    Keras 3's TensorFlow backend (keras.src.backend.tensorflow.numpy.add) turns
    `x + bias.reshape(1, C, 1, ...)` into tf.nn.bias_add and picks data_format NHWC whenever the
    tensor's last axis has the bias's length. For a channels_first map whose width (or, for a 1-D
    layer, whose length) equals its channel count, bias[j] is therefore added at position j of
    that axis in every channel. That is what the trained model computes in Keras, so the workbook
    does the same, and says so on the sheet. model.py probes the running Keras for it (the spec's
    fact "bias_quirk"), so a Keras that fixes this, or a layer loaded with tf_keras (which adds per
    channel), is not shifted.
    """
    if data_format != "channels_first" or n_bias < 2 or out_last != n_bias:
        return False
    return bool(spec.fact("bias_quirk", False))
