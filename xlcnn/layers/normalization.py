"""Elementwise layers with parameters: BatchNormalization, Normalization, Rescaling, and the
activation layers ReLU, LeakyReLU, PReLU, ELU and Softmax.

Every output cell reads its one input cell (a relative reference) and its parameters from the
layer's parameter sheet (absolute references), so the formula shows the math and a reader who edits a
parameter sees its effect. A parameter Keras broadcasts (one per channel, one per position, or one
for every cell) is written once, in the shape Keras stores it, and each cell reads the entry Keras's
broadcasting picks for it.
"""

from __future__ import annotations


import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, Tensor, rng, text
from .base import LayerWriter, handles, ok, write_cellwise_stage, write_softmax_column, write_softmax_maps

# -- broadcast parameters --------------------------------------------------------------------------


def _number(value):
    """A config number (tf_keras stores some as 0-d arrays) as a float, or None."""
    if value is None:
        return None
    return float(np.asarray(value, dtype=np.float64))


def _float32(value):
    """A layer option as Keras uses it: cast to the float32 of the tensor it meets. It matters at a
    threshold: 0.4 is 0.4000000059604645 in float32, so an input of float32 0.4 is not above it."""
    return None if value is None else float(np.float32(value))


def _real_number(value, _config):
    try:
        v = _number(value)
    except (TypeError, ValueError):
        return f"{value!r} is not a number"
    if v is not None and not np.isfinite(v):
        return f"{value!r} is not a finite number"
    return None


def expand_param(param, shape):
    """param as Keras broadcasts it against one sample of `shape` (no batch axis): the same rank,
    every axis 1 or full size. None when it does not broadcast that way (e.g. it spans the batch)."""
    p = np.asarray(param, dtype=np.float64)
    while p.ndim > len(shape) and p.shape[0] == 1:  # a leading batch axis of 1
        p = p[0]
    if p.ndim > len(shape):
        return None
    p = p.reshape((1,) * (len(shape) - p.ndim) + p.shape)
    if any(a not in (1, b) for a, b in zip(p.shape, shape)):
        return None
    return p


def along_channels(vector, x):
    """A per-channel vector laid along x's channel axis (a 1-D tensor: one entry per value)."""
    v = np.asarray(vector, dtype=np.float64)
    if x.rank == 1:
        return v
    shape = [1] * x.rank
    shape[x.channel_axis] = v.size
    return v.reshape(shape)


class ParamSheet:
    """A layer's parameters on their own sheet, each read by formulas with absolute references.

    arrays: [(label, array)] with every array in x's Keras layout (expand_param), so that the entry
    for output index idx is found the way Keras broadcasts: index 0 along an axis of size 1.
    Per-channel parameters become a table (one row per channel, one column per parameter);
    parameters that vary along height or width become one block per channel, like the maps.
    """

    def __init__(self, ctx, layer_name, kind, x, arrays):
        self.name = ctx.sheet_name(layer_name, " params")
        self.x = x
        self.arrays = [a for _, a in arrays]
        book = ctx.book
        if x.rank == 1:
            n = max(a.shape[0] for a in self.arrays)
            layout = text("elementwise.params_by_index") if n > 1 else text("elementwise.params_scalars")
            self.mode = "table"
        else:
            chw = [Tensor("", a, x.channel_axis, []).chw() for a in self.arrays]
            self.table = all(a.shape[1] == 1 and a.shape[2] == 1 for a in chw)
            n = max(a.shape[0] for a in chw)
            if self.table:
                self.mode = "table"
                layout = text("elementwise.params_by_channel") if n > 1 else text("elementwise.params_scalars")
            else:
                self.mode = "blocks"
                layout = text("elementwise.params_blocks")
        sheet = book.add_sheet(self.name, text("elementwise.params_title", name=layer_name, kind=kind, layout=layout))
        self.cols = []
        if self.mode == "table":
            for k, (label, a) in enumerate(arrays):
                col = FIRST_COL + k
                vals = a.reshape(-1)
                if vals.size == 1 and n > 1:
                    label = f"{label} {text('elementwise.all_channels')}"
                sheet.label(FIRST_ROW - 1, col, label, book.fmt_header)
                # tiny values such as epsilon (1e-5) would read 0.0000 in the weight format
                fmt = book.fmt_label if np.all(np.abs(vals[vals != 0]) < 1e-3) and np.any(vals) else book.fmt_weight
                sheet.numbers(FIRST_ROW, col, vals[:, None], fmt)
                self.cols.append(col)
            for r in range(n):
                if x.rank == 1:
                    sheet.ws.write_number(FIRST_ROW + r, 0, r, book.fmt_axis)
                elif n == 1 and x.channels > 1:
                    sheet.label(FIRST_ROW, 0, text("elementwise.all_channels"), book.fmt_header)
                else:
                    sheet.label(FIRST_ROW + r, 0, text("elementwise.param_row", k=r), book.fmt_header)
            sheet.ws.set_column(FIRST_COL, FIRST_COL + len(arrays) - 1, 15)
            return
        # blocks: parameter k occupies columns cols[k].., channel block c starts at row FIRST_ROW + c*(hmax+1)
        hmax = max(a.shape[1] for a in chw)
        self.stride = hmax + 1
        col = FIRST_COL
        for (label, _), a in zip(arrays, chw):
            sheet.label(FIRST_ROW - 2, col, label, book.fmt_header)
            for c in range(a.shape[0]):
                sheet.numbers(FIRST_ROW + c * self.stride, col, a[c], book.fmt_weight)
            self.cols.append(col)
            col += a.shape[2] + 1
        for c in range(n):
            sheet.label(FIRST_ROW + c * self.stride, 0, text("elementwise.param_row", k=c), book.fmt_header)

    def ref(self, k, idx):
        """Absolute reference of parameter k's entry for the output element at Keras index idx."""
        a = self.arrays[k]
        p = tuple(i if s > 1 else 0 for i, s in zip(idx, a.shape))
        if self.x.rank == 1:
            row, col = FIRST_ROW + p[0], self.cols[k]
        elif self.mode == "table":
            row, col = FIRST_ROW + p[self.x.channel_axis], self.cols[k]
        else:
            c = p[self.x.channel_axis]
            spatial = [v for n, v in enumerate(p) if n != self.x.channel_axis]
            i, j = (spatial[0], spatial[1]) if len(spatial) == 2 else (spatial[0], 0)
            row, col = FIRST_ROW + c * self.stride + i, self.cols[k] + j
        return rng(self.name, row, col, row, col, absolute=True)


def write_elementwise_stage(ctx, writer, x, values, formula_of, what, explain):
    """The output of an elementwise layer, cell = formula_of(input cell reference, Keras index)."""
    def title(channel):
        if channel is None:
            return text("elementwise.column_title", step=ctx.step, name=writer.name, kind=writer.kind, what=what)
        return text("elementwise.channel_title", step=ctx.step, name=writer.name, kind=writer.kind,
                    channel=channel, channels=x.channels, what=what)
    return write_cellwise_stage(ctx, writer, x, values, lambda index: formula_of(x.cell_at(index), index),
                                title, explain)


def _single_axis(value):
    if isinstance(value, (list, tuple)):
        return value[0] if len(value) == 1 else None
    return value


# -- BatchNormalization ------------------------------------------------------------------------


@handles("BatchNormalization")
class BatchNormalizationWriter(LayerWriter):
    options = {
        "axis": lambda v, c: None if isinstance(_single_axis(v), int) else
            f"axis={v!r} is not supported (one axis, the channel axis)",
        "epsilon": _real_number, "center": ok, "scale": ok,
        # training only: how the moving statistics are updated, regularized or constrained
        "momentum": ok, "synchronized": ok, "beta_regularizer": ok, "gamma_regularizer": ok,
        "beta_constraint": ok, "gamma_constraint": ok, "fused": ok,
        # batch renormalization corrects the *batch* statistics during training; at inference Keras
        # uses moving_mean and moving_variance exactly as without it (tested)
        "renorm": ok, "renorm_clipping": ok, "renorm_momentum": ok,
        "virtual_batch_size": lambda v, c: None if v is None else
            f"virtual_batch_size={v!r} (ghost batch normalization) is not supported",
        "adjustment": lambda v, c: None if v is None else f"adjustment={v!r} is not supported",
    }

    def describe(self):
        return f"(x − moving mean) / √(moving variance + {self.config['epsilon']:g}) × gamma + beta, per channel"

    def check(self):
        """Also refuse, before anything is written, an axis that is no tensor's channel axis
        (height or width of an image); whether it is *this* tensor's is checked when writing."""
        super().check()
        try:
            rank = len(self.spec.input_shapes[0]) + 1
        except IndexError:  # a standalone layer without a traced input: checked when writing
            return
        axis = _single_axis(self.config["axis"])
        if -rank <= axis < rank and rank == 4 and axis % rank not in (1, 3):
            what = "height" if axis % rank == 2 else "batch"
            self.refuse(f"axis={self.config['axis']} normalizes the image's {what} axis, not a channel axis; "
                        "xlcnn supports BatchNormalization over channels only")

    def check_axis(self, x):
        axis = _single_axis(self.config["axis"])
        rank = x.rank + 1
        if not -rank <= axis < rank:
            self.refuse(f"axis={axis} does not exist for an input of shape {x.values.shape}")
        axis = axis % rank - 1
        want = 0 if x.rank == 1 else x.channel_axis
        if x.rank not in (1, 2, 3) or axis != want:
            self.refuse(f"axis={self.config['axis']} normalizes axis {axis} of the {x.values.shape} input, "
                        "which is not its channel axis; xlcnn supports BatchNormalization over channels only")

    def write(self, ctx, x):
        self.check_axis(x)
        c = self.config
        spec = self.spec
        mean, var = spec.weight("moving_mean"), spec.weight("moving_variance")
        gamma = spec.weight("gamma") if c["scale"] else None
        beta = spec.weight("beta") if c["center"] else None
        eps = float(c["epsilon"])
        arrays = []
        if gamma is not None:
            arrays.append((text("elementwise.bn_gamma"), along_channels(gamma, x)))
        if beta is not None:
            arrays.append((text("elementwise.bn_beta"), along_channels(beta, x)))
        arrays += [(text("elementwise.bn_mean"), along_channels(mean, x)),
                   (text("elementwise.bn_variance"), along_channels(var, x)),
                   (text("elementwise.bn_epsilon"), along_channels(np.full_like(mean, eps), x))]
        params = ParamSheet(ctx, self.name, self.kind, x, arrays)
        k_mean = len(arrays) - 3

        def formula(src, idx):
            f = (f"({src}-{params.ref(k_mean, idx)})/SQRT({params.ref(k_mean + 1, idx)}"
                 f"+{params.ref(k_mean + 2, idx)})")
            if gamma is not None:
                f = f"{params.ref(0, idx)}*{f}"
            if beta is not None:
                f += f"+{params.ref(1 if gamma is not None else 0, idx)}"
            return f

        out = (x.values - along_channels(mean, x)) / np.sqrt(along_channels(var, x) + eps)
        if gamma is not None:
            out = along_channels(gamma, x) * out
        if beta is not None:
            out = out + along_channels(beta, x)
        return write_elementwise_stage(ctx, self, x, out, formula, text("elementwise.bn_what"),
                                       text("elementwise.bn_explain", psheet=params.name))


# -- Normalization and Rescaling (preprocessing layers inside the model) ------------------------


@handles("Normalization")
class NormalizationWriter(LayerWriter):
    options = {
        # any axis: the stored mean and variance are broadcast exactly as Keras broadcasts them
        "axis": ok, "mean": ok, "variance": ok,
        "invert": lambda v, c: None if not v else
            "invert=True (undoing a normalization) is not supported; only invert=False is",
    }

    def describe(self):
        return "(x − mean) / max(√variance, epsilon), with the layer's stored mean and variance"

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
        return "x × scale + offset"

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


# -- activation layers ----------------------------------------------------------------------------


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
    options = {"max_value": _real_number, "negative_slope": _real_number, "threshold": _real_number}

    def settings(self):
        c = self.config
        mv = _float32(_number(c.get("max_value")))
        return mv, _float32(_number(c.get("negative_slope")) or 0.0), _float32(_number(c.get("threshold")) or 0.0)

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
    options = {"negative_slope": _real_number, "alpha": _real_number}

    def slope(self):
        c = self.config
        value = c.get("negative_slope", c.get("alpha"))
        return _float32(0.3 if value is None else _number(value))

    def describe(self):
        return f"x if x ≥ 0 else {self.slope():g} × x"

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
        return "x if x ≥ 0 else alpha × x, alpha learned" + (f", shared along axes {shared}" if shared else "")

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
    options = {"alpha": _real_number}

    def alpha(self):
        value = self.config.get("alpha")
        return _float32(1.0 if value is None else _number(value))

    def describe(self):
        return f"x if x > 0 else {self.alpha():g} × (eˣ − 1)"

    def write(self, ctx, x):
        alpha = self.alpha()
        psheet, p = _scalar_params(ctx, self, x, [(text("elementwise.elu_alpha"), alpha)])
        a = p[text("elementwise.elu_alpha")]
        out = np.where(x.values > 0, x.values, alpha * np.expm1(np.minimum(x.values, 0.0)))
        return write_elementwise_stage(ctx, self, x, out, lambda src, _: f"IF({src}>0,{src},{a}*(EXP({src})-1))",
                                       text("elementwise.elu_what"),
                                       text("elementwise.elu_explain", psheet=psheet))


def _softmax_axis(value, _config):
    axis = _single_axis(value)
    if axis in (-1, 1, 3):   # the last axis of a 1-D or 3-D tensor; write() checks which it is
        return None
    return (f"axis={value!r} is not supported: xlcnn writes a Softmax layer over the last axis "
            "(axis=-1)")


@handles("Softmax")
class SoftmaxWriter(LayerWriter):
    options = {"axis": _softmax_axis}

    def describe(self):
        return "softmax: e^(z − max z) / Σ e^(z − max z)"

    def write(self, ctx, x):
        axis = _single_axis(self.config["axis"])
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
        sheet.label(FIRST_ROW - 1, FIRST_COL, "exp(z - max z)", ctx.book.fmt_header)
        sheet.label(FIRST_ROW - 1, FIRST_COL + 1, "softmax", ctx.book.fmt_header)
        values, col = write_softmax_column(sheet, FIRST_COL, r0, x.values, c0, src)
        sheet.axis_labels(FIRST_ROW, FIRST_COL, len(values), 0)
        return Tensor(self.name, values, None, [(name, FIRST_ROW, col)])


