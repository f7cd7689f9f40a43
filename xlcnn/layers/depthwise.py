"""DepthwiseConv2D and SeparableConv2D, and their 1-D twins DepthwiseConv1D and SeparableConv1D.

A depthwise convolution never mixes channels: output channel c × depth_multiplier + m is input
channel c convolved with its own kernel m. The geometry ('same' padding, strides, dilation, clipped
border windows) is exactly Conv2D's, so conv.py's helpers are used as they are: the depthwise kernel
(kh, kw, C, M) is written as a Conv2D kernel (kh, kw, 1, C·M) whose block o is the kernel of output
channel o.

SeparableConv2D is one Keras layer doing two steps: that depthwise convolution (no bias), then a
pointwise 1×1 convolution mixing the C·M depthwise maps (+ bias, + activation). The depthwise maps
go on helper sheets ('NN name dw c0'), the pointwise result is the layer's output.
"""

from __future__ import annotations

import numpy as np

from dataclasses import dataclass

from ..layout import FIRST_COL, FIRST_ROW, Tensor, rng, text
from . import functions as act
from .base import (HEADER_ROWS, LayerWriter, MapSheets, Window, activation_option, bias_along_width, channel_axis,
                   check_layout, handles, join_terms, must_be_none, ok, one_of, positive_ints, which_text,
                   write_activation_blocks, write_weight_matrix)
from .conv import add_bias, conv_term, conv_values, write_conv_weights


def _groups_one(value, _config):
    # Keras 2 files (tf_keras) store groups=1 for depthwise layers: the depthwise grouping itself
    return None if value in (None, 1) else f"groups={value!r} is not supported"


COMMON_OPTIONS = {
    "kernel_size": positive_ints, "strides": positive_ints, "dilation_rate": positive_ints,
    "padding": one_of("valid", "same"), "data_format": one_of("channels_last", "channels_first"),
    "depth_multiplier": lambda v, c: None if isinstance(v, int) and v >= 1 else f"depth_multiplier={v!r} must be ≥ 1",
    "activation": activation_option, "use_bias": ok, "groups": _groups_one,
    # training only
    "depthwise_regularizer": ok, "depthwise_constraint": ok,
    "lora_rank": must_be_none("lora_rank"), "lora_alpha": ok,
    "quantization_config": must_be_none("quantization_config"),
}


class _DepthwiseBase(LayerWriter):
    """The depthwise step, shared by the four layers; a 1-D layer's maps are (steps x 1) columns."""
    pads_input = True
    one_d = False

    @property
    def rank(self):
        return 2 if self.one_d else 3

    @property
    def window(self):
        return Window.from_config(self.config, "kernel_size", self.one_d)

    def as4(self, kernel):
        """A 1-D kernel (k, in, out) as (k, 1, in, out), the 2-D frame of the maps."""
        kernel = np.asarray(kernel, dtype=np.float64)
        return kernel[:, None] if self.one_d else kernel

    def bias_axis(self, channels, oh, ow):
        """Keras 3 on TensorFlow adds bias[j] at position j of the last axis when a channels_first
        output is as long there as it has channels (see base.bias_along_width): the axis of the
        (channels, h, w) maps it lands on, 0 when it is added per channel as usual."""
        c = self.config
        last = oh if self.one_d else ow
        if c["use_bias"] and bias_along_width(self.spec, c["data_format"], last, channels):
            return 1 if self.one_d else 2
        return 0

    def check_inputs(self, input_shapes):
        self.expect_rank(input_shapes, self.rank)

    def footprint(self, input_shapes, out):
        fp = super().footprint(input_shapes, out)
        kernel = self.as4(self.spec.weight("depthwise_kernel") if self.spec.weight("depthwise_kernel") is not None
                          else self.weights()[0])
        kh, kw, cin, dm = kernel.shape
        fp.grow(cin * dm * (kh + 1) + HEADER_ROWS, kw + 4, f"{self.name} weights")
        if self.spec.weight("pointwise_kernel") is not None:   # separable: depthwise helper maps, 1x1 weights
            fp.sheets += (1 if self.one_d else cin * dm) + 1
            fp.formulas += int(np.prod(out)) // max(out[self.channel_axis_of(out)], 1) * cin * dm
        return fp

    def channel_axis_of(self, out):
        return channel_axis(self.config["data_format"], len(out))

    def geometry(self, x):
        c = self.config
        axis = check_layout(self, x, self.rank)
        fn = act.activation_name(c["activation"])
        if fn in ("softmax", "log_softmax"):
            self.refuse(f"a fused {fn} on a convolution ({fn} over channels) is not supported yet; "
                        "use a Dense layer or an Activation after Flatten")
        geo = self.window
        H, W = x.hw
        (oh, taps_h, pads_h), (ow, taps_w, pads_w) = geo.taps_for(x)
        if oh < 1 or ow < 1:
            self.refuse(f"the kernel does not fit the {H}×{W} input")
        return Geometry(axis, fn, geo, (oh, ow), (taps_h, taps_w), (pads_h, pads_w))

    def write_depthwise_weights(self, ctx, kernel, bias):
        """conv.py's weight sheet, for a kernel (kh, kw, C, M) seen as (kh, kw, 1, C·M), relabelled."""
        kh, kw, cin, dm = kernel.shape
        flat = kernel.reshape(kh, kw, 1, cin * dm)   # block o = c*dm + m holds kernel[:, :, c, m]
        kernel_text = f"{kh}" if self.one_d else f"{kh}×{kw}"
        wsheet, kernel_range, bias_cell = write_conv_weights(ctx, self.name, flat, bias, kind=self.kind,
                                                             kernel_text=kernel_text)
        sheet = ctx.book.sheets[wsheet]
        note = text("depthwise.bias_note") if bias is not None else text("depthwise.no_bias_note")
        sheet.ws.write(0, FIRST_COL, text("depthwise.weights_title", name=self.name, kind=self.kind,
                                          kernel=kernel_text, cin=cin, dm=dm, bias_note=note), ctx.book.fmt_title)
        sheet.label(FIRST_ROW - 1, FIRST_COL + 2, text("depthwise.kernel_label"), ctx.book.fmt_header)
        if bias is None:
            sheet.label(FIRST_ROW - 1, FIRST_COL, "", ctx.book.fmt_label)
        for o in range(cin * dm):
            sheet.label(FIRST_ROW + o * (kh + 1), 0, text("depthwise.block_label", o=o, c=o // dm),
                        ctx.book.fmt_header)
        sheet.ws.set_column(0, 0, 12)
        return wsheet, (lambda o, _ci, a0, a1, b0, b1: kernel_range(o, 0, a0, a1, b0, b1)), bias_cell

    def write_depthwise_maps(self, ctx, x, kernel, bias, geo, title_of, explain_of, suffix, bias_axis=0):
        """Depthwise output channel o reads input channel o // M only; with bias_axis 1 or 2 the
        bias goes along that axis of the maps (Keras's quirk, see bias_axis).
        Returns (z of shape (C·M, oh, ow), places, maps)."""
        (oh, ow), (taps_h, taps_w) = geo.out, geo.taps
        (dh, dw) = geo.window.dilation
        cin, dm = kernel.shape[2], kernel.shape[3]
        wsheet, kernel_range, bias_cell = self.write_depthwise_weights(ctx, kernel, bias)
        x_chw = x.chw()
        z = np.empty((cin * dm, oh, ow))
        for o in range(cin * dm):
            c, m = divmod(o, dm)
            z[o] = conv_values(x_chw[c:c + 1], kernel[:, :, c:c + 1, m:m + 1], None, geo.window.strides,
                               geo.window.dilation, geo.pads)[0]
        z = add_bias(z, bias, bias_axis)
        maps = MapSheets(ctx, self.name, cin * dm, oh, ow, self.rank, title_of,
                         lambda o: explain_of(o, wsheet), suffix, bordered=not suffix)  # helper maps: none
        places = []
        for o in range(cin * dm):
            c = o // dm
            sheet, r0, c0 = maps.start(o)
            for i in range(oh):
                for j in range(ow):
                    term = conv_term(x, c, o, taps_h[i], taps_w[j], kernel_range, dh, dw)
                    b = o if bias_axis == 0 else (i if bias_axis == 1 else j)
                    tail = bias_cell(b) if bias is not None else ""
                    formula = "+".join(t for t in (term, tail) if t) or "0"
                    sheet.formula(r0 + i, c0 + j, formula, z[o, i, j])
            places.append((sheet.name, r0, c0))
        maps.color_all(0, z)
        return z, places, maps

    def describe(self):
        c = self.config
        fn = act.activation_name(c["activation"])
        then = text("describe.then", fn=fn) if fn != "linear" else ""
        key = "describe.separable" if self.kind.startswith("Separable") else "describe.depthwise"
        return text(key, filters=c.get("filters"), geometry=self.window.text("kernel"), dm=c["depth_multiplier"],
                    padding=c["padding"], then=then)


@dataclass
class Geometry:
    channel_axis: int
    fn: str                 # the fused activation
    window: Window
    out: tuple              # (oh, ow)
    taps: tuple             # (taps_h, taps_w)
    pads: tuple             # ((top, bottom), (left, right))


def _which(one_d, o, channels, dm):
    if one_d:
        return which_text(True, o, channels)
    c, m = divmod(o, dm)
    return text("depthwise.which", channel=o, channels=channels, cin_channel=c, m=m)


@handles("DepthwiseConv2D")
class DepthwiseConv2DWriter(_DepthwiseBase):
    options = dict(COMMON_OPTIONS)

    def write(self, ctx, x):
        geo = self.geometry(x)
        weights = self.weights()
        kernel = self.as4(weights[0])
        bias = weights[1] if self.config["use_bias"] else None
        cin, dm = kernel.shape[2], kernel.shape[3]
        bias_axis = self.bias_axis(cin * dm, *geo.out) if bias is not None else 0
        ptext = geo.window.padding_text("conv", geo.pads)

        def title_of(o):
            return text("depthwise.stage", step=ctx.step, name=self.name, kind=self.kind,
                        which=_which(self.one_d, o, cin * dm, dm), geometry=geo.window.text("kernel"),
                        padding_text=ptext)

        def explain_of(o, wsheet):
            c = text("depthwise.any_channel") if o is None else o // dm
            note = ""
            if bias_axis:
                note = " " + text("stage.bias_along_steps" if self.one_d else "stage.bias_along_width",
                                  channel="o" if o is None else o, n=cin * dm)
            return text("depthwise.explain", cin_channel=c, dm=dm, wsheet=wsheet) + note

        z, places, maps = self.write_depthwise_maps(ctx, x, kernel, bias, geo, title_of, explain_of, "", bias_axis)
        places, out = write_activation_blocks(maps, geo.fn, places, z, text("stage.z_block"))
        return maps.tensor(self.name, out, self.rank, geo.channel_axis, places)


@handles("DepthwiseConv1D")
class DepthwiseConv1DWriter(DepthwiseConv2DWriter):
    one_d = True
    options = dict(COMMON_OPTIONS, padding=one_of("valid", "same", "causal"))


@handles("SeparableConv2D")
class SeparableConv2DWriter(_DepthwiseBase):
    options = dict(COMMON_OPTIONS, filters=ok, pointwise_regularizer=ok, pointwise_constraint=ok,
                   # Keras 2 files also list the Conv2D-inherited kernel_* options (training only)
                   kernel_regularizer=ok, kernel_constraint=ok)

    def write(self, ctx, x):
        geo = self.geometry(x)
        (oh, ow) = geo.out
        dk = self.as4(self.spec.weight("depthwise_kernel"))
        pk = self.spec.weight("pointwise_kernel")
        bias = self.spec.weight("bias") if self.config["use_bias"] else None
        mid, filters = pk.shape[-2], pk.shape[-1]
        pw = pk.reshape(mid, filters)
        bias_axis = self.bias_axis(filters, oh, ow) if bias is not None else 0
        ptext = geo.window.padding_text("conv", geo.pads)
        dm = dk.shape[3]

        def title_of(o):
            return text("depthwise.sep_dw_stage", step=ctx.step, name=self.name, kind=self.kind,
                        which=_which(self.one_d, o, mid, dm), geometry=geo.window.text("kernel"),
                        padding_text=ptext)

        def explain_of(o, wsheet):
            c = text("depthwise.any_channel") if o is None else o // dm
            return text("depthwise.sep_dw_explain", cin_channel=c, wsheet=wsheet, mid=mid)

        d, dw_places, _ = self.write_depthwise_maps(ctx, x, dk, None, geo, title_of, explain_of, " dw")
        d_t = Tensor.from_chw(self.name, d, self.rank, 0, dw_places)
        psheet, pw_cell, bias_cell = self.write_pointwise_weights(ctx, pw, bias)
        z = add_bias(np.einsum("mhw,mf->fhw", d, pw), bias, bias_axis)

        def pw_title(f):
            return text("depthwise.sep_pw_stage", step=ctx.step, name=self.name, kind=self.kind,
                        which=which_text(self.one_d, f, filters))

        def pw_explain(f):
            note = ""
            if bias_axis:
                note = " " + text("stage.bias_along_steps" if self.one_d else "stage.bias_along_width",
                                  channel="f" if f is None else f, n=filters)
            return text("depthwise.sep_pw_explain", mid=mid, channel="f" if f is None else f, psheet=psheet) + note

        maps = MapSheets(ctx, self.name, filters, oh, ow, self.rank, pw_title, pw_explain)
        first_partial_block = 1 if geo.fn == "linear" else 2
        places = []
        for f in range(filters):
            sheet, r0, c0 = maps.start(f)
            for i in range(oh):
                for j in range(ow):
                    terms = [(m, f"{d_t.cell(m, i, j)}*{pw_cell(m, f)}") for m in range(mid)]
                    b = f if bias_axis == 0 else (i if bias_axis == 1 else j)
                    tail = f"+{bias_cell(b)}" if bias is not None else ""
                    formula = join_terms(maps, f, i, j, terms, tail, first_partial_block,
                                         lambda m0, m1: text("depthwise.partial", c0=m0, c1=m1),
                                         lambda keys, f=f, i=i, j=j: sum(d[m, i, j] * pw[m, f] for m in keys))
                    sheet.formula(r0 + i, c0 + j, formula, z[f, i, j])
            places.append((sheet.name, r0, c0))
        maps.color_all(0, z)
        places, out = write_activation_blocks(maps, geo.fn, places, z, text("stage.z_block"))
        return maps.tensor(self.name, out, self.rank, geo.channel_axis, places)

    def write_pointwise_weights(self, ctx, pw, bias):
        """Like Dense's weights: row 'bias', then row m = the weights from depthwise map m; column f."""
        mid, filters = pw.shape
        name = write_weight_matrix(ctx, self.name, " pw", pw, bias,
                                   text("depthwise.pw_title", name=self.name, kind=self.kind, mid=mid, filters=filters),
                                   lambda f: text("depthwise.pw_unit", f=f))

        def weight(m, f):
            return rng(name, FIRST_ROW + 1 + m, FIRST_COL + f, FIRST_ROW + 1 + m, FIRST_COL + f, absolute=True)

        def bias_cell(f):
            return rng(name, FIRST_ROW, FIRST_COL + f, FIRST_ROW, FIRST_COL + f, absolute=True)

        return name, weight, bias_cell


@handles("SeparableConv1D")
class SeparableConv1DWriter(SeparableConv2DWriter):
    one_d = True
    options = dict(SeparableConv2DWriter.options, padding=one_of("valid", "same", "causal"))
