"""Conv2DTranspose and Conv1DTranspose: every input cell spreads its value times the kernel over the
output, and each output cell gathers the products that land on it.

Keras on TensorFlow computes a transposed convolution as the gradient of a convolution
(tf.nn.conv_transpose): along one axis of n input cells, kernel tap a of input cell i lands on
output index o = i*stride + a*dilation - crop, for 0 <= o < out. The output length is Keras's
(keras/src/backend/common/backend_utils.py, _get_output_shape_given_tf_padding):

    valid: (n - 1)*stride + K + output_padding, output_padding defaulting to max(K, stride) - K
    same:  n*stride without output_padding, else (n - 1)*stride + K % 2 + output_padding

with K = (kernel - 1)*dilation + 1 the dilated kernel, and TensorFlow crops
crop = max(0, (n - 1)*stride + K - out) // 2 cells before ('valid': none): 'same' crops the
odd extra cell after. Positions beyond the full result (output_padding in 'valid') receive no
product: only the bias.

Every output cell is written as explicit products, x*w+x*w+...+bias, each w a cell of the weights
sheet, so a reader sees which input cell meets which kernel tap; past Excel's formula limit the
products move to partial-sum cells in blocks to the right, as for Conv2D. A 1-D layer works on
(steps x 1) columns with a (k x 1) kernel, as Conv1D does.
"""

from __future__ import annotations

import numpy as np

from ..layout import FIRST_COL, quote_sheet, text
from . import functions as act
from .base import (FORMULA_LIMIT, HEADER_ROWS, LayerWriter, MapSheets, Window, activation_option, bias_along_width,
                   channel_axis, check_layout, handles, join_terms, ok, one_of, pair, positive_ints, which_text,
                   write_activation_blocks)
from .conv import write_conv_weights


def _output_padding(value, config):
    if value is None:
        return None
    try:
        values = pair(value)
    except (TypeError, ValueError):
        return f"output_padding={value!r} is not a number or a tuple of numbers"
    strides = pair(config.get("strides", 1))
    if len(values) == 1 and len(strides) > 1:
        values = values * len(strides)
    if any(v < 0 for v in values) or any(v >= s for v, s in zip(values, strides)):
        return f"output_padding={value!r} must be at least 0 and less than the strides {tuple(strides)}"
    return None


def _none_or_one(option):
    def checker(value, _config):
        return None if value in (None, 0, 1) else f"option {option}={value!r} is not supported"
    return checker


# -- geometry ------------------------------------------------------------------------------------


def transpose_length(n, k, s, d, padding, output_padding):
    """Keras's output length along one axis of n input cells."""
    big_k = (k - 1) * d + 1
    if padding == "valid":
        extra = max(big_k, s) - big_k if output_padding is None else output_padding
        return (n - 1) * s + big_k + extra
    if output_padding is None:
        return n * s
    return (n - 1) * s + big_k % 2 + output_padding


def transpose_axis(n, k, s, d, padding, output_padding):
    """(out, taps, (crop before, crop after)) along one axis: taps[o] lists the (input index, kernel
    tap) pairs that land on output index o. A negative crop after is that many output cells past
    the full result (output_padding), which only the bias reaches."""
    big_k = (k - 1) * d + 1
    out = transpose_length(n, k, s, d, padding, output_padding)
    before = max(0, (n - 1) * s + big_k - out) // 2 if padding == "same" else 0
    after = (n - 1) * s + big_k - before - out
    taps = [[] for _ in range(max(out, 0))]
    for i in range(n):
        for a in range(k):
            o = i * s + a * d - before
            if 0 <= o < out:
                taps[o].append((i, a))
    return out, taps, (before, after)


def tensorflow_can_run(n, k, s, d, padding, output_padding):
    """tf.nn.conv_transpose needs the convolution of its output to give back the input's length;
    Keras's 'same' with an even kernel and output_padding=0, for instance, does not."""
    out = transpose_length(n, k, s, d, padding, output_padding)
    big_k = (k - 1) * d + 1
    if padding == "same":
        return -(-out // s) == n
    return out >= big_k and (out - big_k) // s + 1 == n


def conv_transpose_values(x_chw, kernel, bias, strides, dilation, padding, output_padding, bias_axis=0):
    """Keras's transposed convolution in float64 on (channels, h, w) maps; kernel as Keras stores it,
    (kh, kw, filters, in). Every tap scatters x*w onto the full result, which is then cropped (and
    extended by output_padding) as TensorFlow does. bias_axis: 0 the channels, 1 or 2 the rows or
    columns of the maps (Keras 3's bias_add quirk, see base.bias_along_width)."""
    x_chw = np.asarray(x_chw, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    _, h, w = x_chw.shape
    kh, kw, filters, _ = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    out_h, _, (top, _) = transpose_axis(h, kh, sh, dh, padding, output_padding[0])
    out_w, _, (left, _) = transpose_axis(w, kw, sw, dw, padding, output_padding[1])
    full = np.zeros((filters, (h - 1) * sh + (kh - 1) * dh + 1, (w - 1) * sw + (kw - 1) * dw + 1))
    for a in range(kh):
        for b in range(kw):
            full[:, a * dh: a * dh + (h - 1) * sh + 1: sh, b * dw: b * dw + (w - 1) * sw + 1: sw] += \
                np.einsum("chw,fc->fhw", x_chw, kernel[a, b])
    z = np.zeros((filters, out_h, out_w))
    rows = min(out_h, full.shape[1] - top)
    cols = min(out_w, full.shape[2] - left)
    z[:, :rows, :cols] = full[:, top:top + rows, left:left + cols]
    if bias is not None:
        shape = [1, 1, 1]
        shape[bias_axis] = -1
        z = z + np.asarray(bias, dtype=np.float64).reshape(shape)
    return z


# -- the writer ----------------------------------------------------------------------------------


class ConvTransposeWriter(LayerWriter):
    """Conv1DTranspose and Conv2DTranspose: one writer; a 1-D layer's maps are (steps x 1) columns."""
    one_d = False
    options = {
        "filters": ok, "kernel_size": positive_ints, "strides": positive_ints, "dilation_rate": positive_ints,
        "padding": one_of("valid", "same"), "output_padding": _output_padding,
        "data_format": one_of("channels_last", "channels_first"),
        "activation": activation_option, "use_bias": ok,
        "groups": _none_or_one("groups"),   # tf_keras files carry groups=1
    }

    # -- geometry from the config --------------------------------------------------------------
    def _per_axis(self, key, default):
        value = self.config.get(key)
        values = pair(default if value is None else value)
        rank = 1 if self.one_d else 2
        return values * rank if len(values) == 1 and rank > 1 else values

    def geometry(self):
        """((kh, kw), (sh, sw), (dh, dw), (oph, opw)) in the (h, w) frame of the maps; a 1-D layer's
        w axis is the trivial (1, stride 1, valid, no output padding)."""
        size = self._per_axis("kernel_size", 1)
        strides = self._per_axis("strides", 1)
        dilation = self._per_axis("dilation_rate", 1)
        op = self.config.get("output_padding")
        op = (None,) * len(size) if op is None else self._per_axis("output_padding", 0)
        if self.one_d:
            return (size[0], 1), (strides[0], 1), (dilation[0], 1), (op[0], None)
        return tuple(size), tuple(strides), tuple(dilation), tuple(op)

    def _axes(self, H, W):
        (kh, kw), (sh, sw), (dh, dw), (oph, opw) = self.geometry()
        padding = self.config["padding"]
        return (transpose_axis(H, kh, sh, dh, padding, oph),
                transpose_axis(W, kw, sw, dw, "valid" if self.one_d else padding, opw))

    def kernel4(self):
        """The kernel as Keras stores it, (kh, kw, filters, in); a 1-D kernel (k, filters, in) gets w = 1."""
        kernel = self.weights()[0]
        return kernel[:, None] if self.one_d else kernel

    # -- checks ------------------------------------------------------------------------------
    def check(self):
        super().check()
        fn = act.activation_name(self.config.get("activation"))
        if fn in act.NOT_ELEMENTWISE:
            self.refuse(f"a fused {fn} on a transposed convolution ({fn} over channels) is not supported; "
                        "use a Dense layer or an Activation after Flatten")

    def _spatial(self, shape):
        axis = channel_axis(self.config["data_format"], 2 if self.one_d else 3)
        spatial = [n for i, n in enumerate(shape) if i != axis]
        return (spatial[0], 1) if self.one_d else tuple(spatial)

    def check_inputs(self, input_shapes):
        self.expect_rank(input_shapes, 2 if self.one_d else 3)
        self._check_geometry(*self._spatial(input_shapes[0]))

    def _check_geometry(self, H, W):
        (kh, kw), (sh, sw), (dh, dw), (oph, opw) = self.geometry()
        padding = self.config["padding"]
        axes = [(H, kh, sh, dh, padding, oph, "height" if not self.one_d else "steps")]
        if not self.one_d:
            axes.append((W, kw, sw, dw, padding, opw, "width"))
        for n, k, s, d, p, op, what in axes:
            if not tensorflow_can_run(n, k, s, d, p, op):
                self.refuse(f"along the {what}, kernel {k} with stride {s}, padding {p!r} and output_padding "
                            f"{op} gives an output TensorFlow cannot compute (its convolution does not give "
                            f"back {n} cells)")

    def footprint(self, input_shapes, out):
        fp = super().footprint(input_shapes, out)
        kh, kw, filters, cin = self.kernel4().shape     # a block per (output, input) channel pair
        fp.grow(filters * (kh + 1) + HEADER_ROWS, cin * (kw + 1) + 3, f"{self.name} weights")
        (_, _), (sh, sw), _, _ = self.geometry()
        products = cin * -(-kh // sh) * -(-kw // sw)
        fp.longest_formula = max(fp.longest_formula, min(products * 45, FORMULA_LIMIT))
        return fp

    def describe(self):
        c = self.config
        act_name = act.activation_name(c["activation"])
        then = text("describe.then", fn=act_name) if act_name != "linear" else ""
        (kh, kw), strides, dilation, _ = self.geometry()
        geo = Window((kh, kw), strides, dilation, c["padding"], self.one_d).text("kernel")
        return text("describe.conv_transpose", filters=c["filters"], geometry=geo, padding=c["padding"], then=then)

    # -- writing -------------------------------------------------------------------------------
    def write(self, ctx, x):
        c = self.config
        rank = 2 if self.one_d else 3
        axis = check_layout(self, x, rank)
        H, W = x.hw
        self._check_geometry(H, W)
        kernel = self.kernel4()
        kh, kw, filters, cin = kernel.shape
        if cin != x.channels:
            self.refuse(f"its kernel reads {cin} channels, the input has {x.channels}")
        bias = self.weights()[1] if c["use_bias"] else None
        (_, _), strides, dilation, output_padding = self.geometry()
        (oh, taps_h, crop_h), (ow, taps_w, crop_w) = self._axes(H, W)
        last = oh if self.one_d else ow
        along = bias is not None and bias_along_width(self.spec, c["data_format"], last, filters)
        bias_axis = (1 if self.one_d else 2) if along else 0
        z = conv_transpose_values(x.chw(), kernel, bias, strides, dilation, c["padding"], output_padding, bias_axis)
        fn = act.activation_name(c["activation"])

        wsheet, kernel_range, bias_cell = write_conv_weights(
            ctx, self.name, kernel.transpose(0, 1, 3, 2), bias, 1, self.kind,
            kernel_text=f"{kh}" if self.one_d else f"{kh}×{kw}")
        book = ctx.book
        book.sheets[wsheet].ws.write(1, FIRST_COL, text("transpose.kernel_note_1d" if self.one_d else
                                                          "transpose.kernel_note"), book.fmt_explain)

        geo = Window((kh, kw), strides, dilation, c["padding"], self.one_d)
        crop = _crop_text(c["padding"], crop_h, crop_w, self.one_d)
        (sh, sw), (dh, dw) = strides, dilation

        def title(o):
            return text("transpose.title", step=ctx.step, name=self.name, kind=self.kind,
                        which=which_text(self.one_d, o, filters), geometry=geo.text("kernel"), crop=crop)

        def explain(o):
            where = "o" if o is None else o
            if self.one_d:
                land = text("transpose.land_1d", sh=sh, dh=dh, top=crop_h[0])
            else:
                land = text("transpose.land_2d", sh=sh, dh=dh, top=crop_h[0], sw=sw, dw=dw, left=crop_w[0])
            out = text("transpose.explain", channel=where, land=land, cin=cin, wsheet=wsheet)
            if along:
                out += " " + text("stage.bias_along_width" if not self.one_d else "stage.bias_along_steps",
                                  channel=where, n=filters)
            return out

        maps = MapSheets(ctx, self.name, filters, oh, ow, rank, title, explain)
        first_partial_block = 1 if fn == "linear" else 2
        x_chw = x.chw()

        def label(first, last):
            return text("stage.partial", c0=first[0], c1=last[0])

        def value_of(keys):
            return sum(x_chw[ci, r, q] * kernel[a, b, o, ci] for ci, r, q, a, b in keys)

        places = []
        for o in range(filters):
            sheet, r0, c0 = maps.start(o)
            own = quote_sheet(sheet.name) + "!"
            blocks = [0, 0]     # partial-sum blocks labelled at cell (0, 0), and used by any cell
            for i in range(oh):
                for j in range(ow):
                    terms = [((ci, r, q, a, b), f"{x.cell(ci, r, q)}*{kernel_range(o, ci, a, a, b, b)}")
                             for ci in range(cin) for r, a in taps_h[i] for q, b in taps_w[j]]
                    bias_at = o if bias_axis == 0 else (i if bias_axis == 1 else j)
                    tail = f"+{bias_cell(bias_at)}" if bias is not None else ""
                    formula = join_terms(maps, o, i, j, terms, tail, first_partial_block, label, value_of)
                    sheet.formula(r0 + i, c0 + j, formula, z[o, i, j])
                    used = formula.count(own)      # a split sum adds partial-sum cells of its own sheet
                    blocks = [used if (i, j) == (0, 0) else blocks[0], max(blocks[1], used)]
            if o == 0 or not maps.one_sheet:
                # border cells gather fewer products: blocks that cell (0, 0) did not need get their label here
                for n in range(blocks[0], blocks[1]):
                    row, col = maps.origin(o, first_partial_block + n)
                    sheet.label(row - 2, col, text("transpose.partial", n=n + 1), ctx.book.fmt_header)
            places.append((sheet.name, r0, c0))
        maps.color_all(0, z)
        places, out = write_activation_blocks(maps, fn, places, z, text("stage.z_block"))
        return maps.tensor(self.name, out, rank, axis, places)


def _crop_text(padding, crop_h, crop_w, one_d):
    """What Keras's padding does to the full transposed output: the cells it crops, and the extra
    cells output_padding adds (which only the bias reaches)."""
    def side(crop, unit):
        before, after = crop
        parts = [text(f"transpose.crop_{unit}.before", n=before)] if before else []
        if after > 0:
            parts.append(text(f"transpose.crop_{unit}.after", n=after))
        elif after < 0:
            parts.append(text(f"transpose.crop_{unit}.extra", n=-after))
        return parts

    parts = side(crop_h, "steps") if one_d else side(crop_h, "rows") + side(crop_w, "cols")
    return text("transpose.padding", padding=padding,
                what=text("transpose.list_sep").join(parts) if parts else text("transpose.nothing_cropped"))


@handles("Conv2DTranspose")
class Conv2DTransposeWriter(ConvTransposeWriter):
    pass


@handles("Conv1DTranspose")
class Conv1DTransposeWriter(ConvTransposeWriter):
    one_d = True
