"""Conv2D: each output cell is SUMPRODUCT(window, kernel) summed over input channels, plus bias.

'same' padding is Keras's asymmetric zero padding. Rather than copying the input onto a padded
sheet, border windows are clipped together with their kernel: the padded zeros would add nothing,
so the clipped SUMPRODUCT is exactly Keras's sum. Dilated kernels are not contiguous, so they are
written as explicit products.
"""

from __future__ import annotations

import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, rng, text
from . import functions as act
from .base import FORMULA_LIMIT  # noqa: F401  (conv_transpose imports it from here)
from .base import (HEADER_ROWS, LayerWriter, MapSheets, Window, activation_option, bias_along_width, channel_axis,
                   check_layout, handles, join_terms, must_be_none, ok, one_of, positive_ints, sumproduct, which_text,
                   write_activation_blocks)



def add_bias(z, bias, axis=0):
    """z (channels, h, w) + bias along `axis`: 0 the channels (as usual), 1 or 2 the map's rows or
    columns (Keras 3's bias_add quirk, see base.bias_along_width)."""
    if bias is not None:
        shape = [1, 1, 1]
        shape[axis] = -1
        z = z + bias.reshape(shape)
    return z


def conv_values(x_chw, kernel, bias, strides, dilation, pads, bias_axis=0, groups=1):
    """Keras's convolution in float64 on (channels, h, w) maps: zero padding (before, after) per
    axis, then strided taps. With groups, output channel block g reads only input channel block g."""
    if groups > 1:
        cin_g, cout_g = kernel.shape[2], kernel.shape[3] // groups
        z = np.concatenate([conv_values(x_chw[g * cin_g:(g + 1) * cin_g], kernel[..., g * cout_g:(g + 1) * cout_g],
                                        None, strides, dilation, pads) for g in range(groups)])
        return add_bias(z, bias, bias_axis)
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x_chw, ((0, 0), (pt, pb), (pl, pr)))
    kh, kw, _, cout = kernel.shape
    sh, sw = strides
    dh, dw = dilation
    oh = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    z = np.zeros((cout, oh, ow))
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, a * dh: a * dh + sh * (oh - 1) + 1: sh, b * dw: b * dw + sw * (ow - 1) + 1: sw]
            z += np.einsum("chw,co->ohw", patch, kernel[a, b])
    return add_bias(z, bias, bias_axis)


def write_conv_weights(ctx, name, kernel, bias, groups=1, kind="Conv2D", kernel_text=None):
    """Kernel blocks: block (out o, in i) holds kernel[:, :, i, o]; column B holds bias[o].
    With groups, column block i of output o is input channel (group of o) x (inputs per group) + i.
    Returns a function giving the absolute range of (o, i, rows a0..a1, cols b0..b1), and the bias cell."""
    kh, kw, cin, cout = kernel.shape
    book = ctx.book
    sheet_name = ctx.sheet_name(name, " w")
    sheet = book.add_sheet(sheet_name, text("weights.conv_title", name=name, kind=kind, cin=cin, cout=cout,
                                            kernel=kernel_text or f"{kh}×{kw}"))
    top = FIRST_ROW
    left = FIRST_COL + 2
    sheet.label(top - 1, FIRST_COL, text("weights.bias_label"), book.fmt_header)
    for i in range(cin):
        sheet.label(top - 1, left + i * (kw + 1), text("weights.in_label", i=i), book.fmt_header)
    for o in range(cout):
        r = top + o * (kh + 1)
        if groups > 1:
            g = o // (cout // groups)
            sheet.label(r, 0, text("weights.out_label_group", o=o, g=g, c0=g * cin, c1=(g + 1) * cin - 1),
                        book.fmt_header)
        else:
            sheet.label(r, 0, text("weights.out_label", o=o), book.fmt_header)
        if bias is not None:
            sheet.numbers(r, FIRST_COL, [[bias[o]]], book.fmt_weight)
        for i in range(cin):
            sheet.numbers(r, left + i * (kw + 1), kernel[:, :, i, o], book.fmt_weight)
    last_row = top + cout * (kh + 1) - 2
    last_col = left + cin * (kw + 1) - 2
    sheet.color_scale(top, left, last_row, last_col, "weight_scale")

    def kernel_range(o, i, a0, a1, b0, b1):
        r = top + o * (kh + 1)
        c = left + i * (kw + 1)
        return rng(sheet_name, r + a0, c + b0, r + a1, c + b1, absolute=True)

    def bias_cell(o):
        return rng(sheet_name, top + o * (kh + 1), FIRST_COL, top + o * (kh + 1), FIRST_COL, absolute=True)

    return sheet_name, kernel_range, bias_cell


def conv_term(x, ci, o, taps_i, taps_j, kernel_range, dh, dw, k=None):
    """One input channel's share of an output cell: SUMPRODUCT(window of channel ci, kernel block
    (o, k)), k defaulting to ci (a plain product for a one-cell window, see base.sumproduct);
    explicit products when the kernel is dilated. None when the window lies wholly in the padding."""
    k = ci if k is None else k
    if not taps_i or not taps_j:
        return None
    if dh == 1 and dw == 1:
        (r0, a0), (r1, a1) = taps_i[0], taps_i[-1]
        (q0, b0), (q1, b1) = taps_j[0], taps_j[-1]
        return sumproduct(x.window(ci, r0, r1, q0, q1), kernel_range(o, k, a0, a1, b0, b1))
    products = [f"{x.cell(ci, r, q)}*{kernel_range(o, k, a, a, b, b)}" for r, a in taps_i for q, b in taps_j]
    return "(" + "+".join(products) + ")"


class ConvWriter(LayerWriter):
    """Conv1D and Conv2D: one rank-generic writer, as in Keras's base_conv.py. A 1-D layer works on
    its maps as (steps x 1) columns with a (k x 1) kernel (see base.Window)."""
    pads_input = True
    one_d = False
    options = {
        "filters": ok, "kernel_size": positive_ints, "strides": positive_ints,
        "dilation_rate": positive_ints, "padding": one_of("valid", "same"),
        "data_format": one_of("channels_last", "channels_first"),
        "groups": lambda v, c: None if isinstance(v, int) and v >= 1 else f"groups={v!r} must be a positive integer",
        "activation": activation_option, "use_bias": ok,
        "lora_rank": must_be_none("lora_rank"), "lora_alpha": ok,
        "quantization_config": must_be_none("quantization_config"),
    }

    @property
    def window(self):
        return Window.from_config(self.config, "kernel_size", self.one_d)

    def kernel4(self):
        """The kernel as (kh, kw, in, out): a 1-D kernel (k, in, out) becomes (k, 1, in, out)."""
        kernel = self.weights()[0]
        return kernel[:, None] if self.one_d else kernel

    def check_inputs(self, input_shapes):
        rank = 2 if self.one_d else 3
        self.expect_rank(input_shapes, rank)
        shape = input_shapes[0]
        axis = channel_axis(self.config["data_format"], rank)
        spatial = [n for i, n in enumerate(shape) if i != axis]
        H, W = (spatial[0], 1) if self.one_d else spatial
        (oh, _, _), (ow, _, _) = self.window.apply(H, W)
        if oh < 1 or ow < 1:
            self.refuse(f"the kernel does not fit the {H}×{W} input" if not self.one_d else
                        f"the kernel does not fit the {H}-step input")

    def footprint(self, input_shapes, out):
        fp = super().footprint(input_shapes, out)
        kh, kw, cin, cout = self.kernel4().shape      # a block per (output, input) channel pair
        fp.grow(cout * (kh + 1) + HEADER_ROWS, cin * (kw + 1) + 3, f"{self.name} weights")
        fp.longest_formula = max(fp.longest_formula, min(cin * 70, 8000))
        return fp

    def describe(self):
        c = self.config
        act_name = act.activation_name(c["activation"])
        then = text("describe.then", fn=act_name) if act_name != "linear" else ""
        return text("describe.conv", filters=c["filters"], geometry=self.window.text("kernel"), padding=c["padding"],
                    then=then)

    def write(self, ctx, x):
        c = self.config
        rank = 2 if self.one_d else 3
        axis = check_layout(self, x, rank)
        kernel = self.kernel4()
        bias = self.weights()[1] if c["use_bias"] else None
        kh, kw, cin, cout = kernel.shape          # cin: input channels per group
        groups = int(c.get("groups", 1))
        geo = self.window
        (dh, dw) = geo.dilation
        H, W = x.hw
        (oh, taps_h, pads_h), (ow, taps_w, pads_w) = geo.taps_for(x)
        if oh < 1 or ow < 1:
            self.refuse(f"the kernel does not fit the {H}×{W} input" if not self.one_d else
                        f"the kernel does not fit the {H}-step input")
        pads = (pads_h, pads_w)
        # Keras's bias quirk lands along its last axis: the columns of a 2-D map, the steps of a 1-D one
        last = oh if self.one_d else ow
        along = bias is not None and bias_along_width(self.spec, c["data_format"], last, cout)
        bias_axis = (1 if self.one_d else 2) if along else 0
        z = conv_values(x.chw(), kernel, bias, geo.strides, geo.dilation, pads, bias_axis, groups)
        fn = act.activation_name(c["activation"])
        if fn in act.NOT_ELEMENTWISE:
            self.refuse(f"a fused {fn} on a convolution ({fn} over channels) is not supported yet; "
                        "use a Dense layer or an Activation after Flatten")

        wsheet, kernel_range, bias_cell = write_conv_weights(
            ctx, self.name, kernel, bias, groups, self.kind,
            kernel_text=text("weights.kernel_shape", kernel=f"{kh}" if self.one_d else f"{kh}×{kw}",
                             shape=tuple(self.weights()[0].shape),
                             axes=text("weights.kernel_axes_1d" if self.one_d else "weights.kernel_axes_2d")))
        ptext = geo.padding_text("conv", pads)

        def title(o):
            return text("stage.conv", step=ctx.step, name=self.name, kind=self.kind,
                        which=which_text(self.one_d, o, cout), geometry=geo.text("kernel"), padding_text=ptext)

        def explain(o):
            out = text("stage.conv_explain", channel="o" if o is None else o, cin=cin, wsheet=wsheet)
            if groups > 1 and o is not None:
                first = (o // (cout // groups)) * cin
                out += " " + text("stage.conv_groups", groups=groups, c0=first, c1=first + cin - 1)
            elif groups > 1:
                out += " " + text("stage.conv_groups_1d", groups=groups, per=cin)
            if along:
                out += " " + text("stage.bias_along_width" if not self.one_d else "stage.bias_along_steps",
                                  channel="o" if o is None else o, n=cout)
            return out

        maps = MapSheets(ctx, self.name, cout, oh, ow, rank, title, explain)
        x_chw = x.chw()
        first_partial_block = 1 if fn == "linear" else 2
        places = []
        for o in range(cout):
            sheet, r0, c0 = maps.start(o)
            first_in = (o // (cout // groups)) * cin   # the group's first input channel
            for i in range(oh):
                for j in range(ow):
                    terms = [(k, conv_term(x, first_in + k, o, taps_h[i], taps_w[j], kernel_range, dh, dw, k))
                             for k in range(cin)]
                    b = o if bias_axis == 0 else (i if bias_axis == 1 else j)
                    tail = f"+{bias_cell(b)}" if bias is not None else ""

                    def part(keys, o=o, i=i, j=j, first_in=first_in):
                        return sum(x_chw[first_in + k, r, q] * kernel[a, bb, k, o]
                                   for k in keys for r, a in taps_h[i] for q, bb in taps_w[j]
                                   if 0 <= r < H and 0 <= q < W)      # the padding adds nothing

                    formula = join_terms(maps, o, i, j, terms, tail, first_partial_block,
                                         lambda k0, k1, f=first_in: text("stage.partial", c0=f + k0, c1=f + k1), part)
                    sheet.formula(r0 + i, c0 + j, formula, z[o, i, j])
            places.append((sheet.name, r0, c0))
        maps.color_all(0, z)
        places, out = write_activation_blocks(maps, fn, places, z, text("stage.z_block"))
        return maps.tensor(self.name, out, rank, axis, places)


@handles("Conv2D")
class Conv2DWriter(ConvWriter):
    pass


def _conv1d_padding(value, _config):
    return None if value in ("valid", "same", "causal") else \
        f"{value!r} is not supported (supported: 'valid', 'same', 'causal')"


@handles("Conv1D")
class Conv1DWriter(ConvWriter):
    one_d = True
    options = {**ConvWriter.options, "padding": _conv1d_padding}
