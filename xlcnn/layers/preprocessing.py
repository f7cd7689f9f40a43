"""Preprocessing layers inside a model: Normalization (stored mean and variance) and Rescaling."""

from __future__ import annotations

import numpy as np

from ..layout import text
from .base import LayerWriter, handles, ok
from .elementwise import ParamSheet, expand_param, write_elementwise_stage


@handles("Normalization")
class NormalizationWriter(LayerWriter):
    options = {
        # any axis: the stored mean and variance are broadcast exactly as Keras broadcasts them
        "axis": ok, "mean": ok, "variance": ok,
        "invert": lambda v, c: None if not v else
            "invert=True (undoing a normalization) is not supported; only invert=False is",
    }

    def describe(self):
        return text("describe.normalization")

    def write(self, ctx, x):
        spec = self.spec
        stored_mean, stored_var = spec.fact("mean"), spec.fact("variance")   # as the layer broadcasts them
        if stored_mean is None or stored_var is None:
            self.refuse("the layer holds no mean and variance (it was never adapted nor given them)")
        mean = expand_param(stored_mean, x.values.shape)
        var = expand_param(stored_var, x.values.shape)
        if mean is None or var is None:
            self.refuse(f"its mean of shape {np.shape(stored_mean)} does not broadcast over one "
                        f"sample of shape {x.values.shape}")
        eps = float(spec.fact("epsilon"))
        params = ParamSheet(ctx, self.name, self.kind, x, [
            (text("elementwise.norm_mean"), mean), (text("elementwise.norm_variance"), var),
            (text("elementwise.norm_epsilon"), np.full((1,) * x.rank, eps))])

        def formula(src, idx):
            return f"({src}-{params.ref(0, idx)})/MAX(SQRT({params.ref(1, idx)}),{params.ref(2, idx)})"

        out = (x.values - mean) / np.maximum(np.sqrt(var), eps)
        return write_elementwise_stage(ctx, self, x, out, formula, text("elementwise.norm_what"),
                                       text("elementwise.norm_explain", psheet=params.name))


def _finite_numbers(value, _config):
    try:
        arr = np.asarray(value.get("config", {}).get("value") if isinstance(value, dict) else value,
                         dtype=np.float64)
    except (TypeError, ValueError):
        return f"{value!r} is not a number or a list of numbers"
    if not np.all(np.isfinite(arr)):
        return f"{value!r} holds a value that is not finite"
    return None


@handles("Rescaling")
class RescalingWriter(LayerWriter):
    options = {"scale": _finite_numbers, "offset": _finite_numbers}

    def describe(self):
        return text("elementwise.rescaling_what")

    def _param(self, value, x):
        """scale or offset as Keras 3 broadcasts it: a list under channels_first image_data_format
        is reshaped to (C, 1, 1) first; otherwise numpy broadcasting against the last axis."""
        p = np.asarray(value, dtype=np.float64)
        # tf_keras's Rescaling has no such reshape
        if p.ndim > 0 and self.spec.package == "keras" and self.spec.fact("image_data_format") == "channels_first":
            p = p.reshape(p.shape + (1,) * (3 - p.ndim))
        return p

    def write(self, ctx, x):
        scale = self._param(self.spec.fact("scale", self.config.get("scale")), x)
        offset = self._param(self.spec.fact("offset", self.config.get("offset")), x)
        # what Keras computes, as numpy broadcasts it over the batched input
        out = (x.values[None] * scale + offset)
        if out.shape != (1,) + x.values.shape:
            self.refuse(f"scale of shape {scale.shape} and offset of shape {offset.shape} change the shape "
                        f"of the {x.values.shape} input")
        out = out[0]
        s, o = expand_param(scale, x.values.shape), expand_param(offset, x.values.shape)
        arrays = [(text("elementwise.rescaling_scale"), s)]
        with_offset = bool(np.any(o != 0)) or o.size > 1
        if with_offset:
            arrays.append((text("elementwise.rescaling_offset"), o))
        params = ParamSheet(ctx, self.name, self.kind, x, arrays)

        def formula(src, idx):
            f = f"{src}*{params.ref(0, idx)}"
            return f + f"+{params.ref(1, idx)}" if with_offset else f

        return write_elementwise_stage(ctx, self, x, out, formula, text("elementwise.rescaling_what"),
                                       text("elementwise.rescaling_explain", psheet=params.name))
