"""DepthwiseConv2D and SeparableConv2D.

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

from ..layout import FIRST_COL, FIRST_ROW, Tensor, rng, text
from . import activations as act
from .base import (LayerWriter, activation_option, bias_along_width, handles, ok, one_of, padding_text, pair,
                   window_geometry, write_activation_blocks, write_weight_matrix)
from .conv import FORMULA_LIMIT, _must_be_none, _positive_pair, conv_term, conv_values, write_conv_weights


def _groups_one(value, _config):
    # Keras 2 files (tf_keras) store groups=1 for depthwise layers: the depthwise grouping itself
    return None if value in (None, 1) else f"groups={value!r} is not supported"


COMMON_OPTIONS = {
    "kernel_size": _positive_pair, "strides": _positive_pair, "dilation_rate": _positive_pair,
    "padding": one_of("valid", "same"), "data_format": one_of("channels_last", "channels_first"),
    "depth_multiplier": lambda v, c: None if isinstance(v, int) and v >= 1 else f"depth_multiplier={v!r} must be ≥ 1",
    "activation": activation_option, "use_bias": ok, "groups": _groups_one,
    # training only
    "depthwise_regularizer": ok, "depthwise_constraint": ok,
    "lora_rank": _must_be_none("lora_rank"), "lora_alpha": ok,
    "quantization_config": _must_be_none("quantization_config"),
}


class _DepthwiseBase(LayerWriter):
    """The depthwise step, shared by both layers."""

    def bias_along_width(self, channels, width):
        """Keras 3 on TensorFlow adds bias[j] to column j when a channels_first output is as wide as
        it has channels; the trained model computes that, so the workbook does too, and says so."""
        c = self.config
        return bool(c["use_bias"]) and bias_along_width(self.layer, c["data_format"], width, channels)

    def geometry(self, x):
        c = self.config
        channel_axis = 0 if c["data_format"] == "channels_first" else 2
        if x.rank != 3 or x.channel_axis != channel_axis:
            self.refuse(f"expects a 3-D {c['data_format']} input, got shape {x.values.shape}")
        fn = act.activation_name(c["activation"])
        if fn in ("softmax", "log_softmax"):
            self.refuse(f"a fused {fn} on a convolution ({fn} over channels) is not supported yet; "
                        "use a Dense layer or an Activation after Flatten")
        (sh, sw), (dh, dw) = pair(c["strides"]), pair(c["dilation_rate"])
        kh, kw = pair(c["kernel_size"])
        H, W = x.hw
        oh, taps_h, pads_h = window_geometry(H, kh, sh, dh, c["padding"])
        ow, taps_w, pads_w = window_geometry(W, kw, sw, dw, c["padding"])
        if oh < 1 or ow < 1:
            self.refuse(f"the kernel does not fit the {H}×{W} input")
        return channel_axis, fn, (kh, kw), (sh, sw), (dh, dw), (oh, ow), (taps_h, taps_w), (pads_h, pads_w)

    def write_depthwise_weights(self, ctx, kernel, bias):
        """conv.py's weight sheet, for a kernel (kh, kw, C, M) seen as (kh, kw, 1, C·M), relabelled."""
        kh, kw, cin, dm = kernel.shape
        flat = kernel.reshape(kh, kw, 1, cin * dm)   # block o = c*dm + m holds kernel[:, :, c, m]
        wsheet, kernel_range, bias_cell = write_conv_weights(ctx, self.name, flat, bias)
        sheet = ctx.book.sheets[wsheet]
        note = text("depthwise.bias_note") if bias is not None else text("depthwise.no_bias_note")
        sheet.ws.write(0, FIRST_COL, text("depthwise.weights_title", name=self.name, kind=self.kind, kh=kh, kw=kw,
                                          cin=cin, dm=dm, bias_note=note), ctx.book.fmt_title)
        sheet.label(FIRST_ROW - 1, FIRST_COL + 2, text("depthwise.kernel_label"), ctx.book.fmt_header)
        if bias is None:
            sheet.label(FIRST_ROW - 1, FIRST_COL, "", ctx.book.fmt_label)
        for o in range(cin * dm):
            sheet.label(FIRST_ROW + o * (kh + 1), 0, text("depthwise.block_label", o=o, c=o // dm),
                        ctx.book.fmt_header)
        sheet.ws.set_column(0, 0, 12)
        return wsheet, (lambda o, _ci, a0, a1, b0, b1: kernel_range(o, 0, a0, a1, b0, b1)), bias_cell

    def write_depthwise_maps(self, ctx, x, kernel, bias, geo, with_bias, title_of, explain_of, suffix,
                             along_width=False):
        """One sheet per depthwise output channel o (reads input channel o // M only); with
        along_width, column j gets bias[j] (Keras's quirk, see bias_along_width).
        Returns (z of shape (C·M, oh, ow), places, wsheet)."""
        _, fn, (kh, kw), strides, (dh, dw), (oh, ow), (taps_h, taps_w), pads = geo
        cin, dm = kernel.shape[2], kernel.shape[3]
        wsheet, kernel_range, bias_cell = self.write_depthwise_weights(ctx, kernel, bias if with_bias else None)
        x_chw = x.chw()
        z = np.empty((cin * dm, oh, ow))
        places = []
        for o in range(cin * dm):
            c, m = divmod(o, dm)
            z[o] = conv_values(x_chw[c:c + 1], kernel[:, :, c:c + 1, m:m + 1], None, strides, (dh, dw), pads)[0]
            if with_bias and bias is not None:
                z[o] += bias[None, :] if along_width else bias[o]
            name = ctx.sheet_name(self.name, f"{suffix} c{o}")
            sheet = ctx.book.add_sheet(name, title_of(o, c, m), explain_of(o, c, wsheet), map_width=ow)
            sheet.axis_labels(FIRST_ROW, FIRST_COL, oh, ow)
            for i in range(oh):
                for j in range(ow):
                    term = conv_term(x, c, o, taps_h[i], taps_w[j], kernel_range, dh, dw)
                    tail = bias_cell(j if along_width else o) if with_bias and bias is not None else ""
                    formula = "+".join(t for t in (term, tail) if t) or "0"
                    sheet.formula(FIRST_ROW + i, FIRST_COL + j, formula, z[o, i, j])
            sheet.color_scale(FIRST_ROW, FIRST_COL, FIRST_ROW + oh - 1, FIRST_COL + ow - 1, values=z[o])
            places.append((name, FIRST_ROW, FIRST_COL))
        return z, places, wsheet

    def describe(self):
        c = self.config
        kh, kw = pair(c["kernel_size"])
        fn = act.activation_name(c["activation"])
        extra = f", then {fn}" if fn != "linear" else ""
        return (f"depthwise {kh}×{kw} × multiplier {c['depth_multiplier']}, stride {pair(c['strides'])}, "
                f"dilation {pair(c['dilation_rate'])}, padding {c['padding']}{extra}")


@handles("DepthwiseConv2D")
class DepthwiseConv2DWriter(_DepthwiseBase):
    options = dict(COMMON_OPTIONS)

    def write(self, ctx, x):
        geo = self.geometry(x)
        channel_axis, fn, (kh, kw), (sh, sw), (dh, dw), _, _, pads = geo
        weights = self.weights()
        kernel = weights[0]
        bias = weights[1] if self.config["use_bias"] else None
        cin, dm = kernel.shape[2], kernel.shape[3]
        along_width = bias is not None and self.bias_along_width(cin * dm, geo[5][1])
        ptext = padding_text(self.config["padding"], "conv", pads)

        def title_of(o, c, m):
            return text("depthwise.stage", step=ctx.step, name=self.name, channel=o, channels=cin * dm,
                        cin_channel=c, m=m, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, padding_text=ptext)

        def explain_of(o, c, wsheet):
            note = " " + text("stage.bias_along_width", channel=o, n=cin * dm) if along_width else ""
            return text("depthwise.explain", cin_channel=c, dm=dm, wsheet=wsheet) + note

        z, places, _ = self.write_depthwise_maps(ctx, x, kernel, bias, geo, True, title_of, explain_of, "",
                                                 along_width)
        places, out = write_activation_blocks(ctx, fn, places, z, text("stage.z_block"))
        return Tensor(self.name, np.moveaxis(out, 0, channel_axis), channel_axis, places)


@handles("SeparableConv2D")
class SeparableConv2DWriter(_DepthwiseBase):
    options = dict(COMMON_OPTIONS, filters=ok, pointwise_regularizer=ok, pointwise_constraint=ok,
                   # Keras 2 files also list the Conv2D-inherited kernel_* options (training only)
                   kernel_regularizer=ok, kernel_constraint=ok)

    def describe(self):
        return super().describe().replace("depthwise", f"{self.config['filters']} filters: depthwise", 1) + \
            ", then pointwise 1×1"

    def write(self, ctx, x):
        geo = self.geometry(x)
        channel_axis, fn, (kh, kw), (sh, sw), (dh, dw), (oh, ow), _, pads = geo
        layer = self.layer
        dk = np.asarray(layer.depthwise_kernel.numpy(), dtype=np.float64)
        pk = np.asarray(layer.pointwise_kernel.numpy(), dtype=np.float64)
        bias = np.asarray(layer.bias.numpy(), dtype=np.float64) if self.config["use_bias"] else None
        mid, filters = pk.shape[2], pk.shape[3]
        pw = pk.reshape(mid, filters)
        along_width = bias is not None and self.bias_along_width(filters, ow)
        ptext = padding_text(self.config["padding"], "conv", pads)

        def title_of(o, c, m):
            return text("depthwise.sep_dw_stage", step=ctx.step, name=self.name, channel=o, channels=mid,
                        cin_channel=c, m=m, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, padding_text=ptext)

        def explain_of(o, c, wsheet):
            return text("depthwise.sep_dw_explain", cin_channel=c, wsheet=wsheet, mid=mid)

        d, dw_places, _ = self.write_depthwise_maps(ctx, x, dk, None, geo, False, title_of, explain_of, " dw")
        d_t = Tensor(self.name, d, 0, dw_places)
        psheet, pw_cell, bias_cell = self.write_pointwise_weights(ctx, pw, bias)
        z = np.einsum("mhw,mf->fhw", d, pw)
        if bias is not None:
            z += bias[None, None, :] if along_width else bias[:, None, None]
        book = ctx.book
        places = []
        for f in range(filters):
            name = ctx.sheet_name(self.name, f" c{f}")
            sheet = book.add_sheet(name, text("depthwise.sep_pw_stage", step=ctx.step, name=self.name, channel=f,
                                              channels=filters),
                                   text("depthwise.sep_pw_explain", mid=mid, channel=f, psheet=psheet) +
                                   (" " + text("stage.bias_along_width", channel=f, n=filters) if along_width else ""),
                                   map_width=ow)
            sheet.axis_labels(FIRST_ROW, FIRST_COL, oh, ow)
            partial_col = FIRST_COL + (ow + 1) * (1 if fn == "linear" else 2)
            for i in range(oh):
                for j in range(ow):
                    terms = [(m, f"{d_t.cell(m, i, j)}*{pw_cell(m, f)}", d[m, i, j] * pw[m, f]) for m in range(mid)]
                    tail = f"+{bias_cell(j if along_width else f)}" if bias is not None else ""
                    formula = self._pointwise_sum(sheet, terms, tail, i, j, partial_col, ow)
                    sheet.formula(FIRST_ROW + i, FIRST_COL + j, formula, z[f, i, j])
            sheet.color_scale(FIRST_ROW, FIRST_COL, FIRST_ROW + oh - 1, FIRST_COL + ow - 1, values=z[f])
            places.append((name, FIRST_ROW, FIRST_COL))
        places, out = write_activation_blocks(ctx, fn, places, z, text("stage.z_block"))
        return Tensor(self.name, np.moveaxis(out, 0, channel_axis), channel_axis, places)

    def write_pointwise_weights(self, ctx, pw, bias):
        """Like Dense's weights: row 'bias', then row m = the weights from depthwise map m; column f."""
        mid, filters = pw.shape
        name = write_weight_matrix(ctx, self.name, " pw", pw, bias,
                                   text("depthwise.pw_title", name=self.name, mid=mid, filters=filters),
                                   lambda f: text("depthwise.pw_unit", f=f))

        def weight(m, f):
            return rng(name, FIRST_ROW + 1 + m, FIRST_COL + f, FIRST_ROW + 1 + m, FIRST_COL + f, absolute=True)

        def bias_cell(f):
            return rng(name, FIRST_ROW, FIRST_COL + f, FIRST_ROW, FIRST_COL + f, absolute=True)

        return name, weight, bias_cell

    @staticmethod
    def _pointwise_sum(sheet, terms, tail, i, j, partial_col, ow):
        """Σ map × weight; past Excel's formula limit, chunks go to partial-sum cells to the right."""
        formula = "+".join(t for _, t, _ in terms) + tail
        if len(formula) <= FORMULA_LIMIT:
            return formula
        chunks, current, size = [], [], 0
        for term in terms:
            if current and size + len(term[1]) + 1 > FORMULA_LIMIT:
                chunks.append(current)
                current, size = [], 0
            current.append(term)
            size += len(term[1]) + 1
        chunks.append(current)
        refs = []
        for k, chunk in enumerate(chunks):
            col = partial_col + k * (ow + 1)
            if i == 0 and j == 0:
                sheet.label(FIRST_ROW - 2, col, text("depthwise.partial", c0=chunk[0][0], c1=chunk[-1][0]),
                            sheet.book.fmt_header)
            sheet.formula(FIRST_ROW + i, col + j, "+".join(t for _, t, _ in chunk), sum(v for _, _, v in chunk),
                          sheet.book.fmt_partial)
            refs.append(rng(sheet.name, FIRST_ROW + i, col + j, FIRST_ROW + i, col + j))
        return "+".join(refs) + tail
