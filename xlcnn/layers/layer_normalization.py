"""LayerNormalization: each sample is normalized over the layer's axes, with its own mean and variance.

Keras (keras/src/ops/nn.py, _layer_normalization, TensorFlow backend) computes, per group of values
that share their index on the axes *not* normalized:

    mean, var = moments(x, axes)                 # var = mean((x - mean)^2): biased, divides by n
    inv = rsqrt(var + epsilon) * gamma
    out = x * inv + (beta - mean * inv)          # = (x - mean) / sqrt(var + epsilon) * gamma + beta

and, with the deprecated rms_scaling=True, out = x * rsqrt(var + epsilon) * gamma: it divides by
the standard deviation (the mean is subtracted inside var only), not by the root mean square.

Keras stores gamma and beta in the order of its *sorted* axis list and reshapes them to the input's
axis order; a list mixing signs ([1, -1]) is sorted as written ([-1, 1]), so gamma, stored as
(channels, height), is read back in C order as (height, channels). The workbook does the same.

The workbook shows one 'stats' sheet: epsilon in a cell, then a grid of mean cells
=AVERAGE(group) and a grid of variance cells =SUMPRODUCT((group - mean)^2)/n (a single-cell part of
a group is written (x - mean)^2), one cell per group, laid out over the axes that are not
normalized. A group that spans channel sheets lists one range per sheet. Each output cell is then
=(x - mean)/SQRT(var + epsilon)*gamma + beta, gamma and beta on the layer's params sheet.
"""

from __future__ import annotations

import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, a1, rng, text
from .base import HEADER_ROWS, LayerWriter, handles, ok, write_cellwise_stage
from .elementwise import ParamSheet

EXCEL_MAX_ARGS = 255
EXCEL_MAX_FORMULA = 8192


def _axis_option(value, _config):
    values = [value] if isinstance(value, int) else value
    if not isinstance(values, (list, tuple)) or not values or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return f"axis={value!r} is not an integer or a list of integers"
    return None


def _epsilon_option(value, _config):
    try:
        eps = float(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        return f"epsilon={value!r} is not a number"
    if not np.isfinite(eps) or eps < 0:
        return f"epsilon={value!r} is not a finite number >= 0"
    return None


def layer_norm_moments(x, axes):
    """Mean and biased variance of x over `axes` (keepdims), as tf.nn.moments computes them."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=tuple(axes), keepdims=True)
    var = np.square(x - mean).mean(axis=tuple(axes), keepdims=True)
    return mean, var


def layer_norm_values(x, axes, gamma=None, beta=None, epsilon=1e-3, rms_scaling=False):
    """Keras's LayerNormalization of one sample x (no batch axis) over `axes` (axes of x), in float64.
    gamma and beta are None or already in x's rank, as Keras broadcasts them (keras_broadcast)."""
    x = np.asarray(x, dtype=np.float64)
    mean, var = layer_norm_moments(x, axes)
    if rms_scaling:
        out = x / np.sqrt(var + epsilon)
        return out if gamma is None else out * gamma
    out = (x - mean) / np.sqrt(var + epsilon)
    if gamma is not None:
        out = out * gamma
    if beta is not None:
        out = out + beta
    return out


def keras_broadcast(param, axis_list, shape):
    """gamma or beta as Keras reads it against one sample of `shape`: stored in the order of the
    sorted axis list (batch axis 0 counted, negative axes as written), reshaped in C order to the
    input's rank with every other axis 1. None when the sizes do not agree."""
    full = (1, *shape)
    target = [1] * len(full)
    for dim in sorted(axis_list):
        target[dim] = full[dim]
    param = np.asarray(param, dtype=np.float64)
    if param.size != int(np.prod(target)):
        return None
    return param.reshape(target)[0]


def axis_names(x_rank, channel_axis):
    """A name for each axis of a sample: 'features' (rank 1), 'steps' and 'channels' (a signal),
    'height', 'width' and 'channels' (an image map)."""
    if x_rank == 1:
        return ["features"]
    spatial = iter(["steps"] if x_rank == 2 else ["height", "width"])
    return ["channels" if k == channel_axis else next(spatial) for k in range(x_rank)]


def group_pieces(x, axes, kept_index):
    """The rectangles (sheet, r0, c0, r1, c1) holding the group of cells whose index on the kept
    axes is kept_index: one per channel sheet the group touches, merged where they are adjacent
    on one sheet (a signal's channels are neighbouring columns)."""
    rank = x.rank
    spans, kept = [], iter(kept_index)
    for k in range(rank):
        if k in axes:
            spans.append((0, x.values.shape[k] - 1))
        else:
            v = next(kept)
            spans.append((v, v))
    if rank == 1:
        sheet, r0, c0 = x.places[0]
        return [(sheet, r0 + spans[0][0], c0, r0 + spans[0][1], c0)]
    channels = spans[x.channel_axis]
    spatial = [s for k, s in enumerate(spans) if k != x.channel_axis]
    (i0, i1), (j0, j1) = spatial[0], spatial[1] if len(spatial) == 2 else (0, 0)
    rects = []
    for c in range(channels[0], channels[1] + 1):
        sheet, r0, c0 = x.places[c]
        rect = (sheet, r0 + i0, c0 + j0, r0 + i1, c0 + j1)
        if rects:
            last, top, left, bottom, right = rects[-1]
            if last == rect[0] and (top, bottom) == (rect[1], rect[3]) and right + 1 == rect[2]:
                rects[-1] = (last, top, left, bottom, rect[4])        # the next column over
                continue
            if last == rect[0] and (left, right) == (rect[2], rect[4]) and bottom + 1 == rect[1]:
                rects[-1] = (last, top, left, rect[3], right)        # the next row down
                continue
        rects.append(rect)
    return rects


@handles("LayerNormalization")
class LayerNormalizationWriter(LayerWriter):
    options = {
        "axis": _axis_option, "epsilon": _epsilon_option, "center": ok, "scale": ok,
        # Keras 3's deprecated rms_scaling: x / sqrt(var + epsilon) * gamma, reproduced as Keras computes it
        "rms_scaling": ok,
        # training only
        "beta_regularizer": ok, "gamma_regularizer": ok, "beta_constraint": ok, "gamma_constraint": ok,
    }

    # -- the options -------------------------------------------------------------------------
    @property
    def rms(self):
        return bool(self.config.get("rms_scaling", False))

    def axis_list(self):
        value = self.config["axis"]
        return [int(value)] if isinstance(value, (int, np.integer)) else [int(v) for v in value]

    def axes_of(self, shape):
        """The normalized axes of a sample of `shape` (no batch axis), ascending; refuses an axis
        that does not exist, the batch axis, or an axis named twice."""
        ndims = len(shape) + 1
        if ndims - 1 not in (1, 2, 3):
            self.refuse(f"inputs of rank {ndims - 1} are not supported (vectors, signals and image maps are)")
        axes = []
        for a in self.axis_list():
            if not -ndims <= a < ndims:
                self.refuse(f"axis={self.config['axis']!r}: axis {a} does not exist for an input of shape "
                            f"{tuple(shape)}")
            if a % ndims == 0:
                self.refuse(f"axis={self.config['axis']!r} normalizes over the batch axis, which mixes samples; "
                            "xlcnn reproduces one sample at a time")
            axes.append(a % ndims - 1)
        if len(set(axes)) != len(axes):
            self.refuse(f"axis={self.config['axis']!r} names an axis twice")
        return sorted(axes)

    def gamma_beta(self):
        """(gamma, beta) as Keras stores them, each None when the layer has none."""
        weights = self.weights()
        gamma = beta = None
        if self.config.get("scale", True) or self.rms:
            gamma, weights = weights[0], weights[1:]
        if self.config.get("center", True) and not self.rms:
            beta = weights[0]
        return gamma, beta

    # -- planning ------------------------------------------------------------------------------
    def check_inputs(self, input_shapes):
        self.axes_of(tuple(input_shapes[0]))

    def footprint(self, input_shapes, out):
        fp = super().footprint(input_shapes, out)
        shape = tuple(input_shapes[0]) if input_shapes else tuple(out)
        axes = self.axes_of(shape)
        kept = [n for k, n in enumerate(shape) if k not in axes]
        groups = int(np.prod(kept)) if kept else 1
        gh, gw = (kept + [1, 1])[:2]
        fp.sheets += 1                                    # the stats sheet
        fp.formulas += 2 * groups
        fp.grow(gh + HEADER_ROWS, 2 * (gw + 1) + 3, f"{self.name} stats")
        fp.longest_formula = max(fp.longest_formula, min(40 * int(np.prod([shape[k] for k in axes])), 8000))
        return fp

    def describe(self):
        c = self.config
        what = text("describe.layer_norm_rms" if self.rms else "describe.layer_norm_what")
        return text("describe.layer_norm", what=what, axis=c["axis"], epsilon=f"{float(c['epsilon']):g}")

    # -- writing -------------------------------------------------------------------------------
    def write(self, ctx, x):
        c = self.config
        shape = x.values.shape
        axes = self.axes_of(shape)
        eps = float(c["epsilon"])
        gamma, beta = self.gamma_beta()
        gamma_b = None if gamma is None else keras_broadcast(gamma, self.axis_list(), shape)
        beta_b = None if beta is None else keras_broadcast(beta, self.axis_list(), shape)
        if (gamma is not None and gamma_b is None) or (beta is not None and beta_b is None):
            self.refuse(f"its gamma/beta of shape {np.shape(gamma if gamma is not None else beta)} do not span "
                        f"axis {c['axis']} of the {shape} input")
        said = text("layer_norm.axis_names")
        names = [said[a] for a in axis_names(x.rank, x.channel_axis)]
        kept = [k for k in range(x.rank) if k not in axes]
        n = int(np.prod([shape[k] for k in axes]))
        over = text("layer_norm.list_sep").join(names[k] for k in axes)

        # every group has the same pieces (one range per sheet it touches): check Excel's limits once
        pieces0 = group_pieces(x, axes, tuple(0 for _ in kept))
        if len(pieces0) > EXCEL_MAX_ARGS:
            self.refuse(f"axis {c['axis']} makes each group span {len(pieces0)} channel sheets; the AVERAGE of a "
                        f"group would pass Excel's {EXCEL_MAX_ARGS}-argument limit")

        mean, var = layer_norm_moments(x.values, axes)
        out = layer_norm_values(x.values, axes, gamma_b, beta_b, eps, self.rms)
        grid = [shape[k] for k in kept] + [1, 1]
        gh, gw = grid[0], grid[1]
        mean_grid = np.squeeze(mean, axis=tuple(axes)).reshape(gh, gw)
        var_grid = np.squeeze(var, axis=tuple(axes)).reshape(gh, gw)

        book = ctx.book
        stats = ctx.sheet_name(self.name, " stats")
        eps_col, mean_col = FIRST_COL, FIRST_COL + 2
        var_col = mean_col + gw + 1
        if not kept:
            layout = text("layer_norm.one_group")
        elif len(kept) == 1:
            layout = text("layer_norm.by_index", axis=names[kept[0]])
        else:
            layout = text("layer_norm.by_grid", rows=names[kept[0]], cols=names[kept[1]])

        def mean_formula(pieces):
            return "AVERAGE(" + ",".join(rng(*p) for p in pieces) + ")"

        def var_formula(pieces, m):
            terms = [f"({rng(*p)}-{m})^2" if (p[1], p[2]) == (p[3], p[4]) else f"SUMPRODUCT(({rng(*p)}-{m})^2)"
                     for p in pieces]
            return (f"({'+'.join(terms)})" if len(terms) > 1 else terms[0]) + f"/{n}"

        longest = max(len(mean_formula(pieces0)), len(var_formula(pieces0, a1(FIRST_ROW + gh, var_col + gw))))
        if longest > EXCEL_MAX_FORMULA:
            self.refuse(f"axis {c['axis']} makes each group span {len(pieces0)} ranges; its variance formula would "
                        f"be {longest:,} characters, past Excel's {EXCEL_MAX_FORMULA:,}")

        sheet = book.add_sheet(
            stats, text("layer_norm.stats_title", step=ctx.step, name=self.name, kind=self.kind, n=n, over=over,
                        axis=c["axis"], layout=layout),
            text("layer_norm.stats_explain"), map_width=2 * gw + 3)
        sheet.label(FIRST_ROW - 2, eps_col, text("layer_norm.epsilon"), book.fmt_header)
        sheet.numbers(FIRST_ROW, eps_col, [[eps]], book.fmt_label)
        sheet.label(FIRST_ROW - 2, mean_col, text("layer_norm.mean"), book.fmt_header)
        sheet.label(FIRST_ROW - 2, var_col, text("layer_norm.variance"), book.fmt_header)
        sheet.axis_labels(FIRST_ROW, mean_col, gh, gw)
        sheet.axis_labels(FIRST_ROW, var_col, gh, gw)
        for index in np.ndindex(*(shape[k] for k in kept)):
            gi, gj = (tuple(index) + (0, 0))[:2]
            pieces = group_pieces(x, axes, index)
            sheet.formula(FIRST_ROW + gi, mean_col + gj, mean_formula(pieces), mean_grid[gi, gj])
            sheet.formula(FIRST_ROW + gi, var_col + gj, var_formula(pieces, a1(FIRST_ROW + gi, mean_col + gj)),
                          var_grid[gi, gj])
        sheet.color_scale(FIRST_ROW, mean_col, FIRST_ROW + gh - 1, mean_col + gw - 1, values=mean_grid)
        sheet.color_scale(FIRST_ROW, var_col, FIRST_ROW + gh - 1, var_col + gw - 1, values=var_grid)

        arrays = [(label, a) for label, a in (("gamma", gamma_b), ("beta", beta_b)) if a is not None]
        params = ParamSheet(ctx, self.name, self.kind, x, arrays) if arrays else None
        eps_ref = rng(stats, FIRST_ROW, eps_col, FIRST_ROW, eps_col, absolute=True)

        def formula_of(index):
            gi, gj = (tuple(index[k] for k in kept) + (0, 0))[:2]
            m = rng(stats, FIRST_ROW + gi, mean_col + gj, FIRST_ROW + gi, mean_col + gj, absolute=True)
            v = rng(stats, FIRST_ROW + gi, var_col + gj, FIRST_ROW + gi, var_col + gj, absolute=True)
            src = x.cell_at(index)
            f = f"{src}/SQRT({v}+{eps_ref})" if self.rms else f"({src}-{m})/SQRT({v}+{eps_ref})"
            if gamma_b is not None:
                f += f"*{params.ref(0, index)}"
            if beta_b is not None:
                f += f"+{params.ref(len(arrays) - 1, index)}"
            return f

        if self.rms:
            what = text("layer_norm.what_rms", over=over)
        else:
            what = text("layer_norm.what", over=over, gamma=text("layer_norm.gamma") if gamma_b is not None else "",
                        beta=text("layer_norm.beta") if beta_b is not None else "")
        more = ""
        if params is not None:
            more = text("layer_norm.explain_params", names=text("layer_norm.and").join(label for label, _ in arrays),
                        psheet=params.name)
        explain = text("layer_norm.explain", n=n, over=over, axis=c["axis"], stats=stats, params=more)
        positional = sorted(self.axis_list(), key=lambda a: a % (x.rank + 1))
        if arrays and sorted(self.axis_list()) != positional:
            explain += text("layer_norm.sorted_axes", axes=sorted(self.axis_list()))

        def title(channel):
            if channel is None:
                return text("layer_norm.title", step=ctx.step, name=self.name, kind=self.kind, what=what)
            return text("layer_norm.title_channel", step=ctx.step, name=self.name, kind=self.kind, channel=channel,
                        channels=x.channels, what=what)

        return write_cellwise_stage(ctx, self, x, out, formula_of, title, explain)
