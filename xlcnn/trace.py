"""Trace sheets: pick one output cell of a convolution, pooling or Dense stage and see, live, how its
number is made: the window of each input channel (padding shown as such), the kernel slice, the
products, the sums, the bias, z, the activation, and beside it the value the stage sheet holds.

Written after every stage is in place (build.py calls write_traces once), one sheet per traced
stage, '<step> <layer> trace', after the last stage's sheets. The learner types `channel`, `row`
and `col` (0-based, as Keras) into the yellow cells; every other cell is a formula built from
INDEX, CHOOSE, IF, OR, INT, ISNUMBER, SUM, SUMPRODUCT, MAX and AVERAGE only (non-volatile, in
Excel 2010+, LibreOffice and Gnumeric). The window is outlined on the input sheet(s), and the
output cell on the stage sheet, by conditional formatting driven by the trace sheet's cells.

The contract (tests and outside tools rely on it): every trace sheet defines the sheet-scoped
names `layer` (a cell holding the Keras layer name), `channel`, `row`, `col` (the input cells) and
`value` (the recomputed output after any fused activation, equal to Keras's output there). A 1-D
stage's `row` is the time step and its `col` is a cell fixed at 0; a Dense trace has `channel` (the
unit) only. `xlcnn verify` reads these names and checks `value` against the stage sheet.
"""

from __future__ import annotations

import numpy as np

from .layers import base as lb
from .layout import FIRST_COL, FIRST_ROW, SheetNames, a1, quote_sheet, rng, style, text

TRACED = {"Conv1D", "Conv2D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
          "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "Dense"}
MAX_BLOCKS = 12        # input channels shown as a block each; the rest are summed in the table only
MAX_DENSE_ROWS = 40    # a Dense trace lists this many inputs; its sum covers all of them
MAX_TRACES = 64        # stages traced; later ones are left out with a note
FORMULA_LIMIT = 8000   # Excel's 8,192 characters, with a margin
CHOOSE_LIMIT = 254     # channels a trace picks from (one sheet each); the formula must stay under 8,192
CHOOSE_OPTIONS = 30    # LibreOffice gives #VALUE! for a CHOOSE with more options: nested past that

# the conv weight sheet (conv.write_conv_weights): block (out o, in i) at row TOP + o (kh + 1), column
# LEFT + i (kw + 1); the bias of output o in column FIRST_COL of the block's first row
CONV_TOP, CONV_LEFT = FIRST_ROW, FIRST_COL + 2
# a weight matrix (stages.write_weight_matrix): the bias row at FIRST_ROW, input i's row at FIRST_ROW + 1 + i

# the trace sheet: input cells in column C, the window origin in column H
LAYER_ROW, CHANNEL_ROW, ROW_ROW, COL_ROW = 3, 4, 5, 6
VALUE_COL = 2
ORIGIN_COL = 11        # the window's first input row and column (column L)
SUMMARY_ROW = 8
BLOCKS_ROW = 17


class Skip(Exception):
    """A stage whose trace cannot be written within Excel's limits (said in a note)."""


def write_traces(book, stages, enabled=True, say=None):
    """A trace sheet for every convolution, pooling and Dense stage (at most MAX_TRACES);
    returns notes naming the stages left out and why."""
    if not enabled:
        return []
    names = SheetNames()
    names.used.update(s.lower() for s in book.sheets)
    tensors = {s.tensor.layer: s.tensor for s in stages}
    notes, written = [], 0
    for stage in stages:
        writer = stage.writer
        if writer is None or writer.kind not in TRACED or not stage.sheets:
            continue
        if written >= MAX_TRACES:
            notes.append(f"trace sheets stop at {MAX_TRACES} stages: '{writer.name}' and later stages have none")
            break
        try:
            spec = _plan(writer, stage, tensors[stage.reads[0]])
        except Skip as why:
            notes.append(f"no trace sheet for '{writer.name}' ({writer.kind}): {why}")
            continue
        if say:
            say(f"trace of {writer.name}")
        name = names.make(f"{stage.step} ", writer.name, " trace")
        Trace(book, name, stage, spec).write()
        written += 1
    return notes


# -- planning: what the trace reads ------------------------------------------------------------------

def _bordered(x, c):
    """The absolute range of channel c's map with its blank border (the padding a reader adds)."""
    sheet, r0, c0 = x.places[c]
    (top, bottom), (left, right) = x.border
    h, w = x.hw
    if x.rank == 2:      # a signal: the border is rows only, the channel one column
        left = right = 0
    return rng(sheet, r0 - top, c0 - left, r0 + h - 1 + bottom, c0 + w - 1 + right, absolute=True)


def _map(t, c):
    sheet, r0, c0 = t.places[c]
    h, w = t.hw
    return rng(sheet, r0, c0, r0 + h - 1, c0 + w - 1, absolute=True)


def _signal_block(t):
    """One range holding every channel of a signal as adjacent columns, or None."""
    sheet, r0, c0 = t.places[0]
    if all(p == (sheet, r0, c0 + c) for c, p in enumerate(t.places)):
        h, _ = t.hw
        return rng(sheet, r0, c0, r0 + h - 1, c0 + t.channels - 1, absolute=True)
    return None


def _pick_map(t, channel_expr, row_expr, col_expr):
    """INDEX of (row, col) (1-based expressions) in the map of a channel given by an expression:
    the signal's block (channel = its column), or CHOOSE over the channels' sheets."""
    if t.rank == 2:
        block = _signal_block(t)
        if block is not None:
            return f"INDEX({block},{row_expr},{channel_expr}+1)"
    if t.channels == 1:
        return f"INDEX({_map(t, 0)},{row_expr},{col_expr})"
    if t.channels > CHOOSE_LIMIT:
        raise Skip(f"its {t.channels} channel sheets are more than a trace picks from ({CHOOSE_LIMIT})")
    return f"INDEX({choose(channel_expr, [_map(t, c) for c in range(t.channels)])},{row_expr},{col_expr})"


def choose(k, options):
    """CHOOSE(k+1, options...) for a 0-based index expression k, nested so that no CHOOSE has more
    than CHOOSE_OPTIONS options: LibreOffice computes #VALUE! for a CHOOSE of 31 or more (Excel
    and Gnumeric take 254). Past 30 the outer CHOOSE picks the group of 30, INT(k/30)+1, and the
    inner one the option in it, k-30*INT(k/30)+1 (MOD without MOD, which is not in xlcnn's
    portable set)."""
    if len(options) <= CHOOSE_OPTIONS:
        return f"CHOOSE({k}+1,{','.join(options)})"
    n = CHOOSE_OPTIONS
    kk = f"({k})" if any(op in k for op in "+-*/") else k
    inner = [f"CHOOSE({kk}-{n}*INT({kk}/{n})+1,{','.join(options[i:i + n])})" for i in range(0, len(options), n)]
    return choose(f"INT({kk}/{n})", inner)


class Plan:
    """What one trace shows: kind 'conv', 'depthwise', 'separable', 'pool' or 'dense'."""

    def __init__(self, kind, writer, x, y):
        self.kind, self.writer, self.x, self.y = kind, writer, x, y
        self.one_d = x.rank == 2
        self.fn = lb.act.activation_name(writer.config.get("activation", "linear")) or "linear"


def _plan(writer, stage, x):
    y = stage.tensor
    kind = writer.kind
    if kind == "Dense":
        plan = Plan("dense", writer, x, y)
        weights = writer.weights()
        plan.kernel = weights[0]
        plan.bias = weights[1] if writer.config.get("use_bias", True) else None
        plan.wsheet = _sheet_ending(stage, " w")
        return plan
    if not x.is_map or x.rank not in (2, 3):
        raise Skip("its input is not a map")
    geo = writer.window
    H, W = x.hw
    plan = Plan("pool" if "Pooling" in kind else "conv", writer, x, y)
    plan.geo = geo
    plan.pads = geo.pads(H, W)
    plan.bordered = x.has_border(plan.pads)
    plan.bias_axis = 0
    if plan.kind == "pool":
        plan.is_max = kind.startswith("Max")
        return plan
    c = writer.config
    if kind.startswith("Conv"):
        if int(c.get("groups", 1) or 1) > 1:
            raise Skip("grouped convolutions are not traced yet")
        kernel = writer.kernel4()
        plan.kernel = kernel
        plan.bias = writer.weights()[1] if c.get("use_bias") else None
        plan.wsheet = _sheet_ending(stage, " w")
    elif kind.startswith("Depthwise"):
        plan.kind = "depthwise"
        weights = writer.weights()
        plan.kernel = writer.as4(weights[0])           # (kh, kw, C, M)
        plan.bias = weights[1] if c.get("use_bias") else None
        plan.wsheet = _sheet_ending(stage, " w")
    else:
        plan.kind = "separable"
        plan.kernel = writer.as4(writer.spec.weight("depthwise_kernel"))
        pk = writer.spec.weight("pointwise_kernel")
        plan.pw = np.asarray(pk, np.float64).reshape(pk.shape[-2], pk.shape[-1])
        plan.bias = writer.spec.weight("bias") if c.get("use_bias") else None
        plan.wsheet = _sheet_ending(stage, " w")
        plan.psheet = _sheet_ending(stage, " pw")
        plan.dw_sheets = [s for s in stage.sheets if " dw" in s]
    if plan.bias is not None:
        oh, ow = y.hw
        last = oh if plan.one_d else ow
        if lb.bias_along_width(writer.spec, c.get("data_format"), last, y.channels):
            plan.bias_axis = 1 if plan.one_d else 2
    return plan


def _sheet_ending(stage, suffix):
    for s in stage.sheets:
        if s.endswith(suffix):
            return s
    raise Skip(f"its sheet '…{suffix}' was not found")


# -- the sheet -------------------------------------------------------------------------------------

class Trace:
    def __init__(self, book, name, stage, plan):
        self.book, self.name, self.stage, self.plan = book, name, stage, plan
        self.writer = plan.writer
        self.sheet = book.add_sheet(name, "", "")
        self.q = quote_sheet(name)
        self.cells = {}   # contract name -> (row, col)
        fmt = book.wb.add_format
        self.fmt_input = fmt({"bg_color": "#FFF2CC", "border": 1, "bold": True, "align": "center"})
        self.fmt_value = fmt({"num_format": "0.000000", "bold": True})
        self.fmt_input_out = fmt({"num_format": "0", "bold": True, "align": "center"})
        self.fmt_num = fmt({"num_format": "0.000"})
        self.fmt_small = fmt({"num_format": "0.0000"})
        self.fmt_pad = fmt({"bg_color": style("colors.padding_fill"), "font_color": "#808080"})
        self.fmt_outline = fmt({"border": 1, "border_color": "#C00000"})
        self.fmt_out = fmt({"border": 1, "border_color": "#C00000", "bold": True})

    # cells -------------------------------------------------------------------------------------
    def abs(self, row, col):
        return a1(row, col, abs_row=True, abs_col=True)

    def put(self, row, col, formula, value, fmt=None):
        self.sheet.formula(row, col, formula, value, fmt or self.fmt_num)

    def put_text(self, row, col, formula, value, fmt=None):
        """A formula whose value may be text ("pad"): cached as text when it is."""
        if isinstance(value, str):
            self.book.formulas += 1
            self.sheet.ws.write_formula(row, col, "=" + formula, fmt or self.fmt_num, value)
        else:
            self.put(row, col, formula, value, fmt)

    def label(self, row, col, value, fmt=None):
        self.sheet.label(row, col, value, fmt)

    def define(self, name, row, col):
        self.cells[name] = (row, col)
        self.book.wb.define_name(f"{self.q}!{name}", f"={self.q}!{self.abs(row, col)}")

    # the whole sheet -----------------------------------------------------------------------------
    def write(self):
        p = self.plan
        y = p.y
        if p.kind == "dense":
            pos = (int(np.argmax(y.values)), 0, 0)
        else:
            pos = tuple(int(v) for v in np.unravel_index(int(np.argmax(y.chw())), y.chw().shape))
        self.pos = pos
        book = self.book
        ws = self.sheet.ws
        kind_title = {"conv": "trace.title_conv", "depthwise": "trace.title_conv", "separable": "trace.title_conv",
                      "pool": "trace.title_pool", "dense": "trace.title_dense"}[p.kind]
        ws.write(0, FIRST_COL, text(kind_title, step=self.stage.step, name=self.writer.name, kind=self.writer.kind),
                 book.fmt_title)
        ws.write(1, FIRST_COL, text("trace.explain_dense" if p.kind == "dense" else
                                    ("trace.explain_1d" if p.one_d else "trace.explain")), book.fmt_explain)
        ws.set_column(1, 1, 24)
        ws.set_column(2, 60, 8.5)
        self.label(LAYER_ROW, 1, text("trace.layer"), book.fmt_header)
        ws.write_string(LAYER_ROW, VALUE_COL, self.writer.name)
        self.define("layer", LAYER_ROW, VALUE_COL)
        c, i, j = pos
        channels = y.channels if p.kind != "dense" else y.values.shape[0]
        what = "trace.unit" if p.kind == "dense" else "trace.channel"
        self.label(CHANNEL_ROW, 1, text(what), book.fmt_header)
        ws.write_number(CHANNEL_ROW, VALUE_COL, c, self.fmt_input)
        ws.write_string(CHANNEL_ROW, VALUE_COL + 1, text("trace.range", last=channels - 1))
        self.define("channel", CHANNEL_ROW, VALUE_COL)
        if p.kind != "dense":
            oh, ow = y.hw
            self.label(ROW_ROW, 1, text("trace.step" if p.one_d else "trace.row"), book.fmt_header)
            ws.write_number(ROW_ROW, VALUE_COL, i, self.fmt_input)
            ws.write_string(ROW_ROW, VALUE_COL + 1, text("trace.range", last=oh - 1))
            self.define("row", ROW_ROW, VALUE_COL)
            self.label(COL_ROW, 1, text("trace.col"), book.fmt_header)
            ws.write_number(COL_ROW, VALUE_COL, j, self.fmt_input if not p.one_d else book.fmt_label)
            ws.write_string(COL_ROW, VALUE_COL + 1, text("trace.col_fixed") if p.one_d else
                            text("trace.range", last=ow - 1))
            self.define("col", COL_ROW, VALUE_COL)
            self.window_origin()
        getattr(self, f"write_{p.kind}")()
        self.outline_output()

    # window geometry ------------------------------------------------------------------------------
    def window_origin(self):
        """Cells L5 and L6: the window's first input row and column (Keras's index; negative in the
        padding), from row, col, stride and padding."""
        p = self.plan
        (sh, sw), ((pt, _), (pl, _)) = p.geo.strides, p.pads
        c, i, j = self.pos
        oc = ORIGIN_COL
        self.origin_cells = (self.abs(CHANNEL_ROW, oc), self.abs(ROW_ROW, oc))
        self.label(CHANNEL_ROW, oc - 6, text("trace.first_row"))
        self.put(CHANNEL_ROW, oc, f"row*{sh}-{pt}", i * sh - pt, self.fmt_input_out)
        self.label(ROW_ROW, oc - 6, text("trace.first_col"))
        self.put(ROW_ROW, oc, f"col*{sw}-{pl}", j * sw - pl, self.fmt_input_out)
        geo = p.geo
        self.label(COL_ROW, oc - 6, geo.text("kernel" if p.kind != "pool" else "pool", show_dilation=p.kind != "pool")
                   + " · " + geo.padding_text("pool" if p.kind == "pool" else "conv", p.pads))
        self.origin = (i * sh - pt, j * sw - pl)

    def taps(self):
        (kh, kw), (dh, dw) = self.plan.geo.size, self.plan.geo.dilation
        return [(a, b, a * dh, b * dw) for a in range(kh) for b in range(kw)]

    def in_padding(self, da, db):
        """The condition that tap (da, db) of the window lies in the padding, as formula text."""
        H, W = self.plan.x.hw
        r, q = self.origin_cells
        parts = [f"{r}+{da}<0", f"{r}+{da}>{H - 1}"]
        if not self.plan.one_d:
            parts += [f"{q}+{db}<0", f"{q}+{db}>{W - 1}"]
        return "OR(" + ",".join(parts) + ")"

    def window_values(self, k):
        """The window of input channel k at the default position: values, with NaN in the padding."""
        x = self.plan.x
        H, W = x.hw
        chw = x.chw()
        r0, q0 = self.origin
        out = {}
        for a, b, da, db in self.taps():
            r, q = r0 + da, q0 + db
            out[a, b] = chw[k, r, q] if 0 <= r < H and 0 <= q < W else np.nan
        return out

    def window_cell(self, k_static=None, k_expr=None, pad_value="0"):
        """The formula of window tap (da, db) of input channel k: a fixed channel k_static (read
        from its bordered map, the padding's blank cells reading as 0, when it has its border) or a
        channel given by an expression (CHOOSE over the input sheets)."""
        p = self.plan
        x = p.x
        r, q = self.origin_cells
        (top, _), (left, _) = x.border if p.bordered else ((0, 0), (0, 0))
        if p.one_d:
            left = 0

        def formula(da, db):
            if k_static is not None and p.bordered and pad_value == "0":
                col = "1" if p.one_d else f"{q}+{db + left + 1}"
                return f"INDEX({_bordered(x, k_static)},{r}+{da + top + 1},{col})"
            row_expr, col_expr = f"{r}+{da + 1}", ("1" if p.one_d else f"{q}+{db + 1}")
            if k_static is not None:
                pick = (f"INDEX({_map(x, k_static)},{row_expr},{col_expr})")
            else:
                pick = _pick_map(x, k_expr, row_expr, col_expr)
            return f"IF({self.in_padding(da, db)},{pad_value},{pick})"
        return formula

    # blocks ----------------------------------------------------------------------------------------
    def grid(self, row, col, formula_of, value_of, fmt=None, text_ok=False):
        """A kh x kw grid of formulas at (row, col); returns its range (relative to this sheet)."""
        (kh, kw) = self.plan.geo.size
        for a, b, da, db in self.taps():
            f, v = formula_of(a, b, da, db), value_of(a, b)
            if text_ok:
                self.put_text(row + a, col + b, f, v, fmt)
            else:
                self.put(row + a, col + b, f, v, fmt)
        return rng(self.name, row, col, row + kh - 1, col + kw - 1)

    def shade_padding(self, row, col):
        """Grey the window cells that lie in the padding (a rule on the window's geometry)."""
        (kh, kw), (dh, dw) = self.plan.geo.size, self.plan.geo.dilation
        H, W = self.plan.x.hw
        r, q = self.origin_cells
        da, db = f"(ROW()-{row + 1})*{dh}", f"(COLUMN()-{col + 1})*{dw}"
        parts = [f"{r}+{da}<0", f"{r}+{da}>{H - 1}"]
        if not self.plan.one_d:
            parts += [f"{q}+{db}<0", f"{q}+{db}>{W - 1}"]
        self.sheet.ws.conditional_format(row, col, row + kh - 1, col + kw - 1, {
            "type": "formula", "criteria": "=OR(" + ",".join(parts) + ")", "format": self.fmt_pad})

    def block(self, row, k, kernel_formula, kernel_values, title):
        """One input channel's band: window | kernel | window × kernel | sum. Returns (sum cell, sum)."""
        p = self.plan
        (kh, kw) = p.geo.size
        book = self.book
        c_win, c_ker, c_prod, c_sum = 2, 2 + kw + 1, 2 + 2 * (kw + 1), 2 + 3 * (kw + 1)
        self.label(row, 1, title, book.fmt_header)
        self.label(row, c_win, text("trace.window"), book.fmt_header)
        self.label(row, c_ker, text("trace.kernel"), book.fmt_header)
        self.label(row, c_prod, text("trace.products"), book.fmt_header)
        self.label(row, c_sum, text("trace.sum"), book.fmt_header)
        wv = self.window_values(k)
        win = self.window_cell(k_static=k)
        self.grid(row + 1, c_win, lambda a, b, da, db: win(da, db), lambda a, b: np.nan_to_num(wv[a, b]))
        self.shade_padding(row + 1, c_win)
        self.grid(row + 1, c_ker, kernel_formula, lambda a, b: kernel_values[a, b], self.fmt_small)
        prods = self.grid(row + 1, c_prod,
                          lambda a, b, da, db: f"{a1(row + 1 + a, c_win + b)}*{a1(row + 1 + a, c_ker + b)}",
                          lambda a, b: np.nan_to_num(wv[a, b]) * kernel_values[a, b])
        total = float(sum(np.nan_to_num(wv[a, b]) * kernel_values[a, b] for a, b, _, _ in self.taps()))
        self.put(row + 1, c_sum, f"SUM({prods})", total, self.fmt_value)
        return a1(row + 1, c_sum), total

    # the kinds ---------------------------------------------------------------------------------------
    def conv_weights(self):
        """Formulas of the kernel slice (input k -> output `channel`) and the bias cell."""
        p = self.plan
        kh, kw, cin, cout = p.kernel.shape
        ws = p.wsheet

        def block_range(k):
            c0 = CONV_LEFT + k * (kw + 1)
            return rng(ws, CONV_TOP, c0, CONV_TOP + cout * (kh + 1) - 2, c0 + kw - 1, absolute=True)

        def kernel(k):
            return lambda a, b, da, db: f"INDEX({block_range(k)},channel*{kh + 1}+{a + 1},{b + 1})"

        bias_col = rng(ws, CONV_TOP, FIRST_COL, CONV_TOP + cout * (kh + 1) - 2, FIRST_COL, absolute=True)
        return block_range, kernel, bias_col

    def bias_index(self):
        """Which bias entry this position adds: the channel, or (Keras's quirk) the column / step."""
        p = self.plan
        c, i, j = self.pos
        if p.bias_axis == 0:
            return "channel", c
        return ("row", i) if p.bias_axis == 1 else ("col", j)

    def write_conv(self):
        p = self.plan
        kernel_all = p.kernel
        kh, kw, cin, cout = kernel_all.shape
        c, i, j = self.pos
        block_range, kernel, bias_col = self.conv_weights()
        row = BLOCKS_ROW
        sums, vals = [], []
        for k in range(min(cin, MAX_BLOCKS)):
            cell, v = self.block(row, k, kernel(k), kernel_all[:, :, k, c],
                                 text("trace.in_channel", k=k))
            sums.append(cell)
            vals.append(v)
            row += kh + 2
        # every input channel's share, in one column: the blocks' sums, then the rest from their sheets
        col = 2 + 4 * (kw + 1) + 1
        self.label(BLOCKS_ROW, col, text("trace.in_channel_short"), self.book.fmt_header)
        self.label(BLOCKS_ROW, col + 1, text("trace.share"), self.book.fmt_header)
        (top, _), (left, _) = p.x.border
        if p.one_d:
            left = 0
        r, q = self.origin_cells
        for k in range(cin):
            self.sheet.ws.write_number(BLOCKS_ROW + 1 + k, col, k, self.book.fmt_axis)
            if k < len(sums):
                self.put(BLOCKS_ROW + 1 + k, col + 1, sums[k], vals[k])
                continue
            if not p.bordered:
                raise_ = "its input keeps no padding border to read the remaining channels from"
                raise Skip(raise_)
            terms = []
            for a, b, da, db in self.taps():
                cc = "1" if p.one_d else f"{q}+{db + left + 1}"
                terms.append(f"INDEX({_bordered(p.x, k)},{r}+{da + top + 1},{cc})"
                             f"*INDEX({block_range(k)},channel*{kh + 1}+{a + 1},{b + 1})")
            formula = "+".join(terms)
            if len(formula) > FORMULA_LIMIT:
                raise Skip("a channel's sum would pass Excel's formula length limit")
            wv = self.window_values(k)
            v = float(sum(np.nan_to_num(wv[a, b]) * kernel_all[a, b, k, c] for a, b, _, _ in self.taps()))
            self.put(BLOCKS_ROW + 1 + k, col + 1, formula, v)
        shares = rng(self.name, BLOCKS_ROW + 1, col + 1, BLOCKS_ROW + cin, col + 1)
        total = float(sum(vals)) + float(sum(
            sum(np.nan_to_num(self.window_values(k)[a, b]) * kernel_all[a, b, k, c] for a, b, _, _ in self.taps())
            for k in range(len(sums), cin)))
        if cin > MAX_BLOCKS:
            self.label(BLOCKS_ROW - 1, 1, text("trace.more_channels", shown=MAX_BLOCKS, cin=cin))
        name, idx = self.bias_index()
        bias_formula = f"INDEX({bias_col},{name}*{kh + 1}+1)" if p.bias is not None else None
        bias_value = float(p.bias[idx]) if p.bias is not None else 0.0
        self.summary(f"SUM({shares})", total, text("trace.sum_channels", cin=cin), bias_formula, bias_value)

    def write_depthwise(self):
        p = self.plan
        kh, kw, cin, dm = p.kernel.shape
        c, i, j = self.pos
        ws = p.wsheet
        ker_range = rng(ws, CONV_TOP, CONV_LEFT, CONV_TOP + cin * dm * (kh + 1) - 2, CONV_LEFT + kw - 1,
                        absolute=True)
        bias_col = rng(ws, CONV_TOP, FIRST_COL, CONV_TOP + cin * dm * (kh + 1) - 2, FIRST_COL, absolute=True)
        k_in = c // dm
        kvals = p.kernel[:, :, k_in, c % dm]
        row = BLOCKS_ROW
        book = self.book
        (_, kw) = p.geo.size
        c_win, c_ker, c_prod, c_sum = 2, 2 + kw + 1, 2 + 2 * (kw + 1), 2 + 3 * (kw + 1)
        self.label(row, 1, text("trace.dw_channel", dm=dm), book.fmt_header)
        self.label(row, c_win, text("trace.window"), book.fmt_header)
        self.label(row, c_ker, text("trace.kernel"), book.fmt_header)
        self.label(row, c_prod, text("trace.products"), book.fmt_header)
        self.label(row, c_sum, text("trace.sum"), book.fmt_header)
        wv = self.window_values(k_in)
        win = self.window_cell(k_expr=f"INT(channel/{dm})")
        self.grid(row + 1, c_win, lambda a, b, da, db: win(da, db), lambda a, b: np.nan_to_num(wv[a, b]))
        self.shade_padding(row + 1, c_win)
        self.grid(row + 1, c_ker, lambda a, b, da, db: f"INDEX({ker_range},channel*{kh + 1}+{a + 1},{b + 1})",
                  lambda a, b: kvals[a, b], self.fmt_small)
        prods = self.grid(row + 1, c_prod,
                          lambda a, b, da, db: f"{a1(row + 1 + a, c_win + b)}*{a1(row + 1 + a, c_ker + b)}",
                          lambda a, b: np.nan_to_num(wv[a, b]) * kvals[a, b])
        total = float(sum(np.nan_to_num(wv[a, b]) * kvals[a, b] for a, b, _, _ in self.taps()))
        self.put(row + 1, c_sum, f"SUM({prods})", total, self.fmt_value)
        name, idx = self.bias_index()
        bias_formula = f"INDEX({bias_col},{name}*{kh + 1}+1)" if p.bias is not None else None
        bias_value = float(p.bias[idx]) if p.bias is not None else 0.0
        self.summary(a1(row + 1, c_sum), total, text("trace.sum_window"), bias_formula, bias_value)

    def write_separable(self):
        p = self.plan
        kh, kw, cin, dm = p.kernel.shape
        mid, filters = p.pw.shape
        c, i, j = self.pos
        ws = p.wsheet
        row = BLOCKS_ROW
        sums, vals = [], []
        for m in range(min(mid, MAX_BLOCKS)):
            r0 = CONV_TOP + m * (kh + 1)

            def kernel(a, b, da, db, r0=r0):
                return rng(ws, r0 + a, CONV_LEFT + b, r0 + a, CONV_LEFT + b, absolute=True)
            cell, v = self.block(row, m // dm, kernel, p.kernel[:, :, m // dm, m % dm],
                                 text("trace.dw_map", m=m, k=m // dm))
            sums.append(cell)
            vals.append(v)
            row += kh + 2
        # the pointwise step: every depthwise map's value times its weight to this filter
        col = 2 + 4 * (kw + 1) + 1
        book = self.book
        for n, key in enumerate(("trace.dw_short", "trace.dw_value", "trace.pw_weight", "trace.products")):
            self.label(BLOCKS_ROW, col + n, text(key), book.fmt_header)
        ps = p.psheet
        d_all = []
        for m in range(mid):
            r = BLOCKS_ROW + 1 + m
            self.sheet.ws.write_number(r, col, m, book.fmt_axis)
            if m < len(sums):
                d = vals[m]
                self.put(r, col + 1, sums[m], d)
            else:
                sheet = p.dw_sheets[0] if p.one_d else p.dw_sheets[m]
                wv = self.window_values(m // dm)
                d = float(sum(np.nan_to_num(wv[a, b]) * p.kernel[a, b, m // dm, m % dm] for a, b, _, _ in self.taps()))
                self.put(r, col + 1, _dw_formula(p, sheet, m), d)
            d_all.append(d)
            wrow = rng(ps, FIRST_ROW + 1 + m, FIRST_COL, FIRST_ROW + 1 + m, FIRST_COL + filters - 1, absolute=True)
            self.put(r, col + 2, f"INDEX({wrow},channel+1)", p.pw[m, c], self.fmt_small)
            self.put(r, col + 3, f"{a1(r, col + 1)}*{a1(r, col + 2)}", d * p.pw[m, c])
        prods = rng(self.name, BLOCKS_ROW + 1, col + 3, BLOCKS_ROW + mid, col + 3)
        total = float(np.dot(d_all, p.pw[:, c]))
        if mid > MAX_BLOCKS:
            self.label(BLOCKS_ROW - 1, 1, text("trace.more_maps", shown=MAX_BLOCKS, mid=mid))
        name, idx = self.bias_index()
        brow = rng(ps, FIRST_ROW, FIRST_COL, FIRST_ROW, FIRST_COL + filters - 1, absolute=True)
        bias_formula = f"INDEX({brow},{name}+1)" if p.bias is not None else None
        bias_value = float(p.bias[idx]) if p.bias is not None else 0.0
        self.summary(f"SUM({prods})", total, text("trace.sum_pointwise", mid=mid), bias_formula, bias_value)

    def write_pool(self):
        p = self.plan
        c, i, j = self.pos
        (kh, kw) = p.geo.size
        book = self.book
        row = BLOCKS_ROW
        self.label(row, 1, text("trace.pool_channel"), book.fmt_header)
        self.label(row, 2, text("trace.window_pool"), book.fmt_header)
        wv = self.window_values(c)
        win = self.window_cell(k_expr="channel", pad_value='"pad"')
        cells = self.grid(row + 1, 2, lambda a, b, da, db: win(da, db),
                          lambda a, b: "pad" if np.isnan(wv[a, b]) else wv[a, b], text_ok=True)
        self.shade_padding(row + 1, 2)
        real = [v for v in wv.values() if not np.isnan(v)]
        fn = "MAX" if p.is_max else "AVERAGE"
        v = float(np.max(real) if p.is_max else np.mean(real))
        self.summary_pool(f"{fn}({cells})", v)

    def write_dense(self):
        p = self.plan
        x = p.x
        c = self.pos[0]
        n_in, units = p.kernel.shape
        ws = p.wsheet
        book = self.book
        xs = x.column(absolute=True)
        matrix = rng(ws, FIRST_ROW + 1, FIRST_COL, FIRST_ROW + n_in, FIRST_COL + units - 1, absolute=True)
        row = BLOCKS_ROW
        for n, key in enumerate(("trace.input_index", "trace.input_value", "trace.weight", "trace.products")):
            self.label(row, 1 + n, text(key), book.fmt_header)
        shown = min(n_in, MAX_DENSE_ROWS)
        for i in range(shown):
            r = row + 1 + i
            self.sheet.ws.write_number(r, 1, i, book.fmt_axis)
            self.put(r, 2, x.cell1(i), x.values[i])
            wrow = rng(ws, FIRST_ROW + 1 + i, FIRST_COL, FIRST_ROW + 1 + i, FIRST_COL + units - 1, absolute=True)
            self.put(r, 3, f"INDEX({wrow},channel+1)", p.kernel[i, c], self.fmt_small)
            self.put(r, 4, f"{a1(r, 2)}*{a1(r, 3)}", x.values[i] * p.kernel[i, c])
        if n_in > shown:
            self.label(row + 1 + shown, 1, text("trace.more_inputs", shown=shown, n=n_in))
        total = float(x.values @ p.kernel[:, c])
        brow = rng(ws, FIRST_ROW, FIRST_COL, FIRST_ROW, FIRST_COL + units - 1, absolute=True)
        bias_formula = f"INDEX({brow},channel+1)" if p.bias is not None else None
        bias_value = float(p.bias[c]) if p.bias is not None else 0.0
        self.summary(f"SUMPRODUCT({xs},INDEX({matrix},0,channel+1))", total, text("trace.sum_inputs", n=n_in),
                     bias_formula, bias_value)

    # the summary: sum, bias, z, activation, the stage sheet's value, difference ---------------------------
    def summary(self, sum_formula, sum_value, sum_label, bias_formula, bias_value):
        p = self.plan
        book = self.book
        r = SUMMARY_ROW
        self.label(r, 1, sum_label, book.fmt_header)
        self.put(r, VALUE_COL, sum_formula, sum_value, self.fmt_value)
        self.label(r + 1, 1, text("trace.bias"), book.fmt_header)
        if bias_formula:
            self.put(r + 1, VALUE_COL, bias_formula, bias_value, self.fmt_value)
        else:
            self.put(r + 1, VALUE_COL, "0", 0.0, self.fmt_value)
            self.label(r + 1, VALUE_COL + 1, text("trace.no_bias"))
        z = sum_value + bias_value
        self.label(r + 2, 1, "z", book.fmt_header)
        self.put(r + 2, VALUE_COL, f"{a1(r, VALUE_COL)}+{a1(r + 1, VALUE_COL)}", z, self.fmt_value)
        zc = a1(r + 2, VALUE_COL)
        fn = p.fn
        self.label(r + 3, 1, text("trace.activation", fn=fn), book.fmt_header)
        if fn in lb.act.ELEMENTWISE:
            formula, f = lb.act.ELEMENTWISE[fn]
            value = float(f(np.array([z]))[0])
            self.put(r + 3, VALUE_COL, formula(zc), value, self.fmt_value)
        else:   # softmax / log_softmax of a Dense layer: every unit's z, from the stage sheet
            value = self.dense_softmax(r + 3, zc, z)
        self.define("value", r + 3, VALUE_COL)
        self.compare(r + 4, a1(r + 3, VALUE_COL), value)

    def summary_pool(self, formula, value):
        book = self.book
        r = SUMMARY_ROW
        self.label(r, 1, text("trace.pool_max" if self.plan.is_max else "trace.pool_avg"), book.fmt_header)
        self.put(r, VALUE_COL, formula, value, self.fmt_value)
        self.label(r, VALUE_COL + 1, text("trace.pool_pad_max" if self.plan.is_max else "trace.pool_pad_avg"))
        self.define("value", r, VALUE_COL)
        self.compare(r + 1, a1(r, VALUE_COL), value)

    def dense_softmax(self, row, zc, z):
        """softmax (or log_softmax) needs every unit's z: the others are read from the stage's z column."""
        p = self.plan
        y = p.y
        sheet, r0, c0 = y.places[0]
        n = y.values.shape[0]
        zcol = rng(sheet, FIRST_ROW, FIRST_COL, FIRST_ROW + n - 1, FIRST_COL, absolute=True)
        zs = p.x.values @ p.kernel + (p.bias if p.bias is not None else 0.0)
        m = float(np.max(zs))
        s = float(np.sum(np.exp(zs - m)))
        ecol = rng(sheet, FIRST_ROW, FIRST_COL + 1, FIRST_ROW + n - 1, FIRST_COL + 1, absolute=True)
        if p.fn == "softmax":
            value = float(np.exp(z - m) / s)
            self.put(row, VALUE_COL, f"EXP({zc}-MAX({zcol}))/SUM({ecol})", value, self.fmt_value)
        else:
            value = float(z - m - np.log(s))
            self.put(row, VALUE_COL, f"{zc}-MAX({zcol})-LN(SUM({ecol}))", value, self.fmt_value)
        self.label(row, VALUE_COL + 1, text("trace.softmax_note"))
        return value

    def compare(self, r, value_cell, value):
        """The stage sheet's own value at this position, and the difference."""
        p = self.plan
        y = p.y
        book = self.book
        if p.kind == "dense":
            formula = f"INDEX({y.column(absolute=True)},channel+1)"
            stage_value = float(y.values[self.pos[0]])
        else:
            formula = _pick_map(y, "channel", "row+1", "col+1")
            c, i, j = self.pos
            stage_value = float(y.chw()[c, i, j])
        if len(formula) > FORMULA_LIMIT:
            raise Skip("reading the stage's value would pass Excel's formula length limit")
        self.label(r, 1, text("trace.stage_says"), book.fmt_header)
        self.put(r, VALUE_COL, formula, stage_value, self.fmt_value)
        link_sheet = y.places[0][0]
        self.sheet.link(r, VALUE_COL + 1, link_sheet, text("trace.go_stage"))
        self.label(r + 1, 1, text("trace.difference"), book.fmt_header)
        self.put(r + 1, VALUE_COL, f"{value_cell}-{a1(r, VALUE_COL)}", value - stage_value, self.fmt_value)

    # conditional formatting on the other sheets -------------------------------------------------------
    def outline_output(self):
        """A red border on the traced output cell of the stage sheet, and on the window in the input."""
        p = self.plan
        y = p.y
        ch, rw, cl = (f"{self.q}!{self.abs(CHANNEL_ROW, VALUE_COL)}", f"{self.q}!{self.abs(ROW_ROW, VALUE_COL)}",
                      f"{self.q}!{self.abs(COL_ROW, VALUE_COL)}")
        if p.kind == "dense":
            sheet, r0, c0 = y.places[0]
            n = y.values.shape[0]
            self.book.sheets[sheet].ws.conditional_format(r0, c0, r0 + n - 1, c0, {
                "type": "formula", "criteria": f"=ROW()-{r0 + 1}={ch}", "format": self.fmt_out})
            return
        h, w = y.hw
        for c, (sheet, r0, c0) in enumerate(y.places):
            cond = [f"ROW()-{r0 + 1}={rw}"]
            cond.append(f"{ch}={c}")
            if not p.one_d:
                cond.append(f"COLUMN()-{c0 + 1}={cl}")
            self.book.sheets[sheet].ws.conditional_format(r0, c0, r0 + h - 1, c0 + w - 1, {
                "type": "formula", "criteria": "=AND(" + ",".join(cond) + ")", "format": self.fmt_out})
        self.outline_window(ch)

    def outline_window(self, ch):
        p = self.plan
        x = p.x
        (kh, kw), (dh, dw) = p.geo.size, p.geo.dilation
        r, q = (f"{self.q}!{o}" for o in self.origin_cells)
        (top, bottom), (left, right) = x.border
        if p.one_d:
            left = right = 0
        h, w = x.hw
        for k, (sheet, r0, c0) in enumerate(x.places):
            rr, cc = f"(ROW()-{r0 + 1})", f"(COLUMN()-{c0 + 1})"
            cond = [f"{rr}>={r}", f"{rr}<={r}+{(kh - 1) * dh}"]
            if dh > 1:
                cond.append(f"MOD({rr}-{r},{dh})=0")
            if not p.one_d:
                cond += [f"{cc}>={q}", f"{cc}<={q}+{(kw - 1) * dw}"]
                if dw > 1:
                    cond.append(f"MOD({cc}-{q},{dw})=0")
            if p.kind == "pool":
                cond.append(f"{ch}={k}")
            elif p.kind == "depthwise":
                cond.append(f"INT({ch}/{p.kernel.shape[3]})={k}")
            self.book.sheets[sheet].ws.conditional_format(
                r0 - top, c0 - left, r0 + h - 1 + bottom, c0 + w - 1 + right,
                {"type": "formula", "criteria": "=AND(" + ",".join(cond) + ")", "format": self.fmt_outline})


def _dw_formula(plan, sheet, m):
    """A separable layer's depthwise map m read at (row, col) from its helper ('dw') sheet."""
    oh, ow = plan.y.hw
    if plan.one_d:
        block = rng(sheet, FIRST_ROW, FIRST_COL + m, FIRST_ROW + oh - 1, FIRST_COL + m, absolute=True)
        return f"INDEX({block},row+1,1)"
    block = rng(sheet, FIRST_ROW, FIRST_COL, FIRST_ROW + oh - 1, FIRST_COL + ow - 1, absolute=True)
    return f"INDEX({block},row+1,col+1)"
