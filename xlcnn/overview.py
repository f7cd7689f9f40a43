"""The overview sheet: the prediction (live, and as built), the class probabilities beside the scores
before softmax with the winner highlighted, the input as live cells coloured like the input sheet,
the model summary with links, and the preprocessing.

The picture is cells, not an image: each is a formula on one input cell ('01 input c0'!B5), so
typing into the input sheet changes the picture, as it changes the prediction. A conditional format
colours one cell by one number, so a colour picture cannot be mixed from three channels in cells:
an RGB input shows one live tile per channel (R, G, B), and the image as built stays beside them as
a fixed picture.

The overview's columns: A..D hold the texts and the class table, E is a gap, and from F on every
column is a narrow square "pixel" column; the model summary below spans those with merged headers.
"""

from __future__ import annotations

import io
import math

import numpy as np

from .layout import FIRST_COL, Tensor, local, rng, style, text

PIC_COL = 5                      # F: the first pixel column
TOP = 3                          # the prediction rows start here
TABLE = 8                        # the first class row (its header is the row above)
SUMMARY_END = PIC_COL + 70       # the last column the model summary spans


def _shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def stride_for(h, w, max_side):
    """Every k-th row and column, so that a picture of h x w cells fits max_side."""
    return max(1, math.ceil(max(h, w) / max_side))


def _activation_name(value):
    """'softmax' from a config's activation entry, also when Keras 3 wrote it as a dict."""
    if isinstance(value, dict):
        value = value.get("config")
    return value.lower() if isinstance(value, str) else None


def scores_before(stages):
    """(Tensor of the scores z, function name) the model's last softmax or sigmoid reads, or None.

    A separate Softmax or Activation layer reads the previous stage's cells; a Dense layer with the
    activation fused writes z in its sheet's first column (FIRST_COL), the activation to its right."""
    last = stages[-1]
    w = last.writer
    if w is None or last.tensor.rank != 1:
        return None
    fn = "softmax" if w.kind == "Softmax" else _activation_name(w.config.get("activation"))
    if fn not in ("softmax", "sigmoid"):
        return None
    if w.kind in ("Softmax", "Activation"):
        by_layer = {s.tensor.layer: s for s in stages}
        src = by_layer.get(last.reads[0]) if last.reads else None
        return (src.tensor, fn) if src is not None and src.tensor.rank == 1 else None
    if w.kind != "Dense":
        return None
    by_layer = {s.tensor.layer: s for s in stages}
    src = by_layer.get(last.reads[0]) if last.reads else None
    if src is None or src.tensor.rank != 1:
        return None
    weights = w.weights()
    z = src.tensor.values @ weights[0] + (weights[1] if len(weights) > 1 else 0.0)
    sheet, r0, _ = last.tensor.places[0]
    return Tensor(w.name, z, None, [(sheet, r0, FIRST_COL)]), fn


def _formats(book):
    add = book.wb.add_format
    colors = style("colors")
    return {
        "hidden": add({"num_format": ";;;"}),
        "small": add({"font_size": 8}),
        "small_pct": add({"font_size": 8, "num_format": "0.00%"}),
        "small_num": add({"font_size": 8, "num_format": "0.000"}),
        "winner": add({"bold": True, "bg_color": style("overview.winner_fill")}),
        "built": add({"bold": True, "font_size": 14, "font_color": "#7F7F7F", "align": "left"}),
        "legend": add({"font_size": 8, "font_color": "#404040", "num_format": "0.00"}),
        "legend_right": add({"font_size": 8, "font_color": "#404040", "num_format": "0.00", "align": "right"}),
        "header_merge": add({"bold": True, "bg_color": colors["header_fill"], "border": 1}),
        "right": add({"align": "right"}),
        "bold": add({"bold": True}),
    }


def write_overview(book, loaded, stages, prepared, image_path, out, is_probability):
    """Fill the overview sheet; returns (predicted class, its output value) as built."""
    sheet = book.sheets["overview"]
    ws = sheet.ws
    fmt = _formats(book)
    pixel = style("overview.pixel_px")
    ws.write(0, 0, text("overview.title", model=loaded.path.name, image=image_path.name), book.fmt_title)
    ws.write(1, 0, text("overview.subtitle"), book.fmt_explain)
    ws.freeze_panes(0, 0)
    ws.set_landscape()
    ws.fit_to_pages(1, 0)
    for j, width in enumerate([6, 18, 16, 22, 2]):
        ws.set_column(j, j, width)
    ws.set_column_pixels(PIC_COL, SUMMARY_END, pixel)
    final = stages[-1].tensor
    predicted = probability = None
    n = 0
    if final.rank == 1:
        predicted, probability, n = _write_classes(book, sheet, fmt, stages, is_probability)
    pic_right, pic_bottom = _write_input_view(book, sheet, fmt, stages[0].tensor, prepared, pixel)
    if n:
        _write_chart(book, sheet, n, is_probability, max(pic_right + 2, PIC_COL + 2))
    row = max(TABLE + n, pic_bottom, 16) + 2
    row = _write_summary(book, sheet, fmt, stages, row)
    row += 2
    ws.write(row, 0, text("overview.preprocessing"), book.fmt_title)
    for i, step in enumerate(prepared.steps):
        ws.write(row + 1 + i, 1, f"{i + 1}. {local(step)}")
    row += len(prepared.steps) + 2
    ws.write(row, 0, text("overview.verify_hint", workbook=out.name), book.fmt_explain)
    return predicted, probability


def _write_classes(book, sheet, fmt, stages, is_probability):
    """Prediction (live), its probability, the prediction when built (a constant), and one row per
    class: probability (or score), the score before softmax, the winner highlighted."""
    ws = sheet.ws
    final = stages[-1].tensor
    col = final.column(absolute=True)
    n = len(final.values)
    predicted = int(np.argmax(final.values))
    probability = float(np.max(final.values))
    ws.write(TOP, 1, text("overview.prediction"), book.fmt_header)
    sheet.formula(TOP, 2, f"MATCH(MAX({col}),{col},0)-1", predicted, book.fmt_big)
    ws.set_row(TOP, 27)
    ws.write(TOP + 1, 1, text("overview.confidence" if is_probability else "overview.confidence_score"),
             book.fmt_header)
    sheet.formula(TOP + 1, 2, f"MAX({col})", probability, book.fmt_percent if is_probability else book.fmt_number)
    ws.write(TOP + 2, 1, text("overview.when_built"), book.fmt_header)
    ws.write_number(TOP + 2, 2, predicted, fmt["built"])
    ws.write(TOP + 2, 3, text("overview.when_built_note"), book.fmt_explain)
    book.wb.define_name("predicted_class", f"=overview!$C${TOP + 1}")
    book.wb.define_name("predicted_when_built", f"=overview!$C${TOP + 3}")
    ws.write(TABLE - 1, 1, text("overview.class_header"), book.fmt_header)
    ws.write(TABLE - 1, 2, text("overview.prob_header" if is_probability else "overview.score_header"),
             book.fmt_header)
    scores = scores_before(stages) if is_probability else None
    value_fmt = fmt["small_pct"] if is_probability else fmt["small_num"]
    for i, v in enumerate(final.values):
        ws.write_number(TABLE + i, 1, i, fmt["small"])
        sheet.formula(TABLE + i, 2, final.cell1(i), v, value_fmt)
    if scores is not None:
        z, fn = scores
        ws.write(TABLE - 1, 3, text("overview.z_header", fn=fn), book.fmt_header)
        for i, v in enumerate(z.values):
            sheet.formula(TABLE + i, 3, z.cell1(i), v, fmt["small_num"])
    last_col = 3 if scores is not None else 2
    # the winner's row, live: its class equals the predicted class cell
    ws.conditional_format(TABLE, 1, TABLE + n - 1, last_col, {
        "type": "formula", "criteria": f"=$B{TABLE + 1}=$C${TOP + 1}", "format": fmt["winner"]})
    return predicted, probability, n


def _write_chart(book, sheet, n, is_probability, col):
    chart_title = text("overview.chart_title" if is_probability else "overview.chart_title_score")
    chart = book.wb.add_chart({"type": "bar"})
    chart.add_series({
        "name": chart_title,
        "categories": ["overview", TABLE, 1, TABLE + n - 1, 1],
        "values": ["overview", TABLE, 2, TABLE + n - 1, 2],
        "data_labels": {"value": True, "num_format": "0.0%" if is_probability else "0.000"},
        "fill": {"color": "#5B9BD5"},
        "gap": 40,
    })
    chart.set_title({"name": chart_title})
    chart.set_legend({"none": True})
    chart.set_y_axis({"reverse": True})
    chart.set_x_axis({"num_format": "0%", "min": 0, "max": 1} if is_probability else {"num_format": "0.0"})
    chart.set_size({"width": 440, "height": max(200, 60 + 22 * min(n, 20))})
    sheet.ws.insert_chart(TOP, col, chart, {"x_offset": 10})


def _write_input_view(book, sheet, fmt, t, prepared, pixel):
    """The input as live cells (an image) or a live line chart (a signal), from column F.
    Returns (the last column used, the row below the view)."""
    ws = sheet.ws
    ws.write(TABLE - 2, PIC_COL, text("overview.input_heading"), fmt["bold"])
    if t.rank == 1:
        return PIC_COL + 8, TABLE + 1
    if t.rank == 2:
        return _write_signal_view(book, sheet, t)
    h, w = t.hw
    k = stride_for(h, w, style("overview.max_side"))
    rows, cols = range(0, h, k), range(0, w, k)
    ph, pw = len(rows), len(cols)
    shown = t.channels if t.channels <= 4 else 3
    names = ["R", "G", "B"] if t.channels == 3 else [None] * t.channels
    last_col = PIC_COL + shown * (pw + 1) - 2
    if last_col + 1 > SUMMARY_END:
        ws.set_column_pixels(SUMMARY_END + 1, last_col + 1, pixel)
    for i in range(ph + 1):
        ws.set_row_pixels(TABLE + i, pixel)
    chw = t.chw()
    for c in range(shown):
        c0 = PIC_COL + c * (pw + 1)
        src, r0, s0 = t.places[c]
        sheet.link(TABLE - 1, c0, src, src if shown == 1 else f"c{c}" + (f" {names[c]}" if names[c] else ""))
        for a, i in enumerate(rows):
            for b, j in enumerate(cols):
                sheet.formula(TABLE + a, c0 + b, rng(src, r0 + i, s0 + j, r0 + i, s0 + j), chw[c, i, j], fmt["hidden"])
        sheet.color_scale(TABLE, c0, TABLE + ph - 1, c0 + pw - 1, "input_scale")
        # the legend: a bar from the lowest to the highest value, coloured the same way, and both ends
        tile = rng("overview", TABLE, c0, TABLE + ph - 1, c0 + pw - 1, absolute=True)
        lo, hi = float(np.min(chw[c, ::k, ::k])), float(np.max(chw[c, ::k, ::k]))
        bar = TABLE + ph + 1
        sheet.numbers(bar, c0, np.linspace(0.0, 1.0, pw)[None, :], fmt["hidden"])
        sheet.color_scale(bar, c0, bar, c0 + pw - 1, "input_scale")
        ws.set_row_pixels(bar, pixel)
        half = max(pw // 2, 1)
        if half > 1:
            ws.merge_range(bar + 1, c0, bar + 1, c0 + half - 1, "", fmt["legend"])
            ws.merge_range(bar + 1, c0 + half, bar + 1, c0 + pw - 1, "", fmt["legend_right"])
        sheet.formula(bar + 1, c0, f"MIN({tile})", lo, fmt["legend"])
        sheet.formula(bar + 1, c0 + half, f"MAX({tile})", hi, fmt["legend_right"])
    row = TABLE + ph + 3
    notes = [text("overview.legend_image")]
    if k > 1:
        notes.append(text("overview.picture_sampled", k=k, h=h, w=w))
    if shown < t.channels:
        notes.append(text("overview.picture_channels", shown=shown, channels=t.channels))
    notes.append(_format_sentence(t))
    for i, note in enumerate(notes):
        ws.write(row + i, PIC_COL, note, book.fmt_explain)
    row += len(notes)
    if prepared.preview is not None and np.ndim(prepared.preview) == 3:   # colours the cells cannot mix
        ws.write(row + 1, PIC_COL, text("overview.picture_built"), book.fmt_header)
        ws.insert_image(row + 2, PIC_COL, "input.png",
                        {"image_data": _preview_png(prepared.preview), "object_position": 3})
        row += 2 + math.ceil(150 / 20)
    return last_col, row


def _format_sentence(t):
    """One sentence on the data format, with Keras's shape."""
    shape = _shape_text(t.values.shape)
    if t.rank == 2:
        key = "overview.format_signal_first" if t.channel_axis == 0 else "overview.format_signal_last"
        return text(key, shape=shape, sheet=t.places[0][0])
    key = "overview.format_image_first" if t.channel_axis == 0 else "overview.format_image_last"
    return text(key, shape=shape, sheet=t.places[0][0], channels=t.channels)


def _write_signal_view(book, sheet, t):
    """A line chart of the input signal's channels, read live from the input sheet."""
    ws = sheet.ws
    steps, _ = t.hw
    chart = book.wb.add_chart({"type": "line"})
    for c in range(min(t.channels, 16)):
        src, r0, c0 = t.places[c]
        chart.add_series({"name": f"c{c}", "values": [src, r0, c0, r0 + steps - 1, c0], "line": {"width": 1.25}})
    chart.set_title({"name": text("stage.input_chart")})
    chart.set_x_axis({"name": "t"})
    chart.set_size({"width": 520, "height": 240})
    ws.insert_chart(TABLE, PIC_COL, chart)
    ws.write(TABLE + 13, PIC_COL, _format_sentence(t), book.fmt_explain)
    return PIC_COL + 40, TABLE + 14


def _write_summary(book, sheet, fmt, stages, row):
    """The model summary: step, layer, kind, shape in A..D; parameters, first sheet, reads and what it
    does over the narrow columns from F on (merged headers, texts overflowing to the right)."""
    ws = sheet.ws
    heads = text("overview.summary_headers")
    # (first column, last column) of each header from F on: parameters, first sheet, reads, what it does
    spans = [(PIC_COL, PIC_COL + 6), (PIC_COL + 7, PIC_COL + 19), (PIC_COL + 20, PIC_COL + 34),
             (PIC_COL + 35, SUMMARY_END)]
    ws.write(row, 0, text("overview.summary"), book.fmt_title)
    row += 1
    for j in range(4):
        ws.write(row, j, heads[j], book.fmt_header)
    for (a, b), head in zip(spans, heads[4:]):
        ws.merge_range(row, a, row, b, head, fmt["header_merge"])
    steps = {stage.tensor.layer: stage.step for stage in stages}
    for stage in stages:
        row += 1
        w = stage.writer
        ws.write(row, 0, stage.step)
        ws.write(row, 1, stage.tensor.layer)
        ws.write(row, 2, w.kind if w else "InputLayer")
        ws.write(row, 3, _shape_text(stage.tensor.values.shape))
        ws.merge_range(row, spans[0][0], row, spans[0][1], w.params() if w else 0, fmt["right"])
        sheet.link(row, spans[1][0], stage.first_sheet, stage.first_sheet)
        ws.write(row, spans[2][0], ", ".join(f"{steps[name]} {name}" for name in stage.reads))
        ws.write(row, spans[3][0], w.describe() if w else text("overview.input_describe"))
    row += 1
    ws.write(row, 3, text("overview.total"), book.fmt_header)
    ws.merge_range(row, spans[0][0], row, spans[0][1], sum(s.writer.params() for s in stages if s.writer),
                   fmt["header_merge"])
    return row


def _preview_png(preview, size=140):
    from PIL import Image
    arr = np.clip(np.asarray(preview) * 255.0, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    scale = max(1, size // max(arr.shape[:2]))
    img = img.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    return buf
