"""The activation layers, as Keras's layers/activations/: Activation (any named function, see
functions.py), ReLU, LeakyReLU, PReLU, ELU and Softmax."""

from __future__ import annotations

import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, Tensor, text
from . import functions as act
from .base import (LayerWriter, activation_option, handles, ok, write_1d_activation, write_cellwise_stage,
                   write_softmax_column, write_softmax_maps)
from .elementwise import ParamSheet, as_float32, config_number, expand_param, real_number, single_axis, \
    write_elementwise_stage


@handles("Activation")
class ActivationWriter(LayerWriter):
    options = {"activation": activation_option}

    def describe(self):
        return act.activation_name(self.config["activation"])

    def write(self, ctx, x):
        fn = act.activation_name(self.config["activation"])
        book = ctx.book
        if x.rank == 1:
            name = ctx.sheet_name(self.name)
            sheet = book.add_sheet(name, text("stage.activation_1d", step=ctx.step, name=self.name,
                                              kind=self.kind, fn=fn))
            src, r0, c0 = x.places[0]
            values, col = write_1d_activation(sheet, FIRST_COL, r0, x.values, fn, c0, src)
            sheet.axis_labels(FIRST_ROW, FIRST_COL, len(values), 0)
            return Tensor(self.name, values, None, [(name, FIRST_ROW, col)])
        if x.rank not in (2, 3):
            self.refuse(f"inputs of rank {x.rank} are not supported")
        if fn == "softmax" and x.rank == 3:
            return write_softmax_maps(ctx, self, x)
        if fn in act.NOT_ELEMENTWISE:
            self.refuse(f"{fn} over a {x.rank - 1}-D feature map is not supported yet; apply it after Flatten "
                        "or Dense")
        formula, fn_values = act.ELEMENTWISE[fn]

        def title(channel):
            if channel is None:
                return text("stage.activation_1d", step=ctx.step, name=self.name, kind=self.kind, fn=fn)
            return text("stage.activation", step=ctx.step, name=self.name, kind=self.kind, fn=fn,
                        channel=channel, channels=x.channels)
        return write_cellwise_stage(ctx, self, x, fn_values(x.values), lambda index: formula(x.cell_at(index)), title)


def relu_values(x, max_value=None, negative_slope=0.0, threshold=0.0):
    """Keras 3's relu(x, negative_slope, max_value, threshold) (keras/src/activations/activations.py):
    x where x > threshold else 0, clipped to [0, max_value], minus negative_slope * relu(threshold - x).
    Note the jump at the threshold: just below it the output is -negative_slope * (threshold - x)."""
    if negative_slope != 0.0 and max_value is None and threshold == 0.0:
        return np.where(x > 0, x, negative_slope * x)
    out = np.where(x > threshold, x, 0.0) if threshold != 0.0 else np.maximum(x, 0.0)
    if max_value is not None:
        out = np.clip(out, 0.0, max_value)
    if negative_slope != 0.0:
        out = out - negative_slope * np.maximum(threshold - x, 0.0)
    return out


def _scalar_params(ctx, writer, x, named):
    """A parameter sheet of scalars; returns {label: absolute reference}."""
    if not named:
        return None, {}
    params = ParamSheet(ctx, writer.name, writer.kind, x, [(k, np.full((1,) * x.rank, v)) for k, v in named])
    zero = (0,) * x.rank
    return params.name, {k: params.ref(n, zero) for n, (k, _) in enumerate(named)}


@handles("ReLU")
class ReLUWriter(LayerWriter):
    options = {"max_value": real_number, "negative_slope": real_number, "threshold": real_number}

    def settings(self):
        c = self.config
        mv = as_float32(config_number(c.get("max_value")))
        slope = as_float32(config_number(c.get("negative_slope")) or 0.0)
        return mv, slope, as_float32(config_number(c.get("threshold")) or 0.0)

    def describe(self):
        mv, ns, t = self.settings()
        return "relu" + "".join(f", {k}={v:g}" for k, v in
                                (("max_value", mv), ("negative_slope", ns), ("threshold", t)) if v)

    def write(self, ctx, x):
        mv, ns, t = self.settings()
        named = [(text(f"elementwise.relu_{k}"), v) for k, v in
                 (("max_value", mv), ("negative_slope", ns), ("threshold", t))
                 if v is not None and (v != 0.0 or k == "max_value")]  # max_value=0 still clips
        psheet, p = _scalar_params(ctx, self, x, named)
        MV, NS, T = (p.get(text(f"elementwise.relu_{k}")) for k in ("max_value", "negative_slope", "threshold"))

        def formula(src, _idx):
            if NS and MV is None and T is None:      # Keras takes the leaky_relu path here
                return f"IF({src}>=0,{src},{NS}*{src})"
            f = f"IF({src}>{T},{src},0)" if T else f"MAX(0,{src})"
            if MV:
                f = f"MIN({f},{MV})"
            if NS:
                f += f"-{NS}*MAX({T}-{src},0)" if T else f"-{NS}*MAX(-{src},0)"
            return f

        out = relu_values(x.values, mv, ns, t)
        options = ", ".join(f"{k}={v:g}" for k, v in named)
        explain = (text("elementwise.relu_explain", psheet=psheet) if psheet else
                   text("elementwise.relu_plain_explain"))
        return write_elementwise_stage(ctx, self, x, out, formula,
                                       text("elementwise.relu_what", options=options).strip(), explain)


@handles("LeakyReLU")
class LeakyReLUWriter(LayerWriter):
    # Keras 3 calls the slope negative_slope; Keras 2 files (tf_keras) call it alpha
    options = {"negative_slope": real_number, "alpha": real_number}

    def slope(self):
        c = self.config
        value = c.get("negative_slope", c.get("alpha"))
        return as_float32(0.3 if value is None else config_number(value))

    def describe(self):
        return text("describe.leaky", slope=f"{self.slope():g}")

    def write(self, ctx, x):
        slope = self.slope()
        psheet, p = _scalar_params(ctx, self, x, [(text("elementwise.leaky_slope"), slope)])
        s = p[text("elementwise.leaky_slope")]
        out = np.where(x.values > 0, x.values, slope * x.values)
        return write_elementwise_stage(ctx, self, x, out, lambda src, _: f"IF({src}>=0,{src},{s}*{src})",
                                       text("elementwise.leaky_what"),
                                       text("elementwise.leaky_explain", psheet=psheet))


@handles("PReLU")
class PReLUWriter(LayerWriter):
    # shared_axes is reproduced by the shape of the learned alpha (1 along each shared axis)
    options = {"alpha_initializer": ok, "alpha_regularizer": ok, "alpha_constraint": ok, "shared_axes": ok}

    def describe(self):
        shared = self.config.get("shared_axes")
        return text("describe.prelu", shared=text("describe.prelu_shared", axes=shared) if shared else "")

    def write(self, ctx, x):
        alpha = expand_param(self.spec.weight("alpha"), x.values.shape)
        if alpha is None:
            self.refuse(f"its alpha of shape {np.shape(self.spec.weight('alpha'))} does not match the "
                        f"{x.values.shape} input")
        params = ParamSheet(ctx, self.name, self.kind, x, [(text("elementwise.prelu_alpha"), alpha)])
        # Keras: relu(x) - alpha * relu(-x), which is exactly x for x >= 0 and alpha * x below
        out = np.where(x.values >= 0, x.values, alpha * x.values)
        return write_elementwise_stage(ctx, self, x, out,
                                       lambda src, idx: f"IF({src}>=0,{src},{params.ref(0, idx)}*{src})",
                                       text("elementwise.prelu_what"),
                                       text("elementwise.prelu_explain", psheet=params.name))


@handles("ELU")
class ELUWriter(LayerWriter):
    options = {"alpha": real_number}

    def alpha(self):
        value = self.config.get("alpha")
        return as_float32(1.0 if value is None else config_number(value))

    def describe(self):
        return text("describe.elu", alpha=f"{self.alpha():g}")

    def write(self, ctx, x):
        alpha = self.alpha()
        psheet, p = _scalar_params(ctx, self, x, [(text("elementwise.elu_alpha"), alpha)])
        a = p[text("elementwise.elu_alpha")]
        out = np.where(x.values > 0, x.values, alpha * np.expm1(np.minimum(x.values, 0.0)))
        return write_elementwise_stage(ctx, self, x, out, lambda src, _: f"IF({src}>0,{src},{a}*(EXP({src})-1))",
                                       text("elementwise.elu_what"),
                                       text("elementwise.elu_explain", psheet=psheet))


def _softmax_axis(value, _config):
    axis = single_axis(value)
    if axis in (-1, 1, 3):   # the last axis of a 1-D or 3-D tensor; write() checks which it is
        return None
    return (f"axis={value!r} is not supported: xlcnn writes a Softmax layer over the last axis "
            "(axis=-1)")


@handles("Softmax")
class SoftmaxWriter(LayerWriter):
    options = {"axis": _softmax_axis}

    def describe(self):
        return text("describe.softmax")

    def write(self, ctx, x):
        axis = single_axis(self.config["axis"])
        if axis not in (-1, x.rank):
            self.refuse(f"axis={self.config['axis']!r} on a {x.rank}-D tensor is not its last axis; xlcnn writes "
                        "softmax over the last axis only")
        if x.rank == 3:
            return write_softmax_maps(ctx, self, x)
        if x.rank != 1:
            self.refuse(f"softmax over a {x.rank}-D tensor of shape {x.values.shape} is not supported")
        name = ctx.sheet_name(self.name)
        sheet = ctx.book.add_sheet(name, text("elementwise.column_title", step=ctx.step, name=self.name,
                                              kind=self.kind, what=text("elementwise.softmax_what",
                                                                        n=len(x.values))))
        src, r0, c0 = x.places[0]
        sheet.label(FIRST_ROW - 1, FIRST_COL, text("stage.exp_header"), ctx.book.fmt_header)
        sheet.label(FIRST_ROW - 1, FIRST_COL + 1, text("stage.softmax_header"), ctx.book.fmt_header)
        values, col = write_softmax_column(sheet, FIRST_COL, r0, x.values, c0, src)
        sheet.axis_labels(FIRST_ROW, FIRST_COL, len(values), 0)
        return Tensor(self.name, values, None, [(name, FIRST_ROW, col)])
