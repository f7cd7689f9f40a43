"""Links between the sheets, written once after every stage is in place.

Every sheet a stage wrote gets, in column A under the back link (the frozen corner, so always in
view), "◀ prev" and "next ▶" to the neighbouring stages (the same channel where the neighbour has
it), and under its data a block of links: previous and next stage, the layer's other sheets
(weights, parameters, helpers), the previous and next channel and the stage's channels, the
overview. The manifest links back to the overview. Only empty cells are written to.
"""

from __future__ import annotations

from .layout import FIRST_COL, quote_sheet, text

NEAR = 5            # channels listed on either side of the current one when a stage has many


def _url(sheet):
    return f"internal:{quote_sheet(sheet)}!A1"


def _free(ws, row, col):
    cells = ws.table.get(row)
    return not cells or col not in cells


def _channel_sheets(stage):
    """The stage's own sheets holding its channels, in channel order (one for a signal or vector)."""
    seen = []
    for sheet, _, _ in stage.tensor.places:
        if sheet not in seen:
            seen.append(sheet)
    return seen


def _compact(n, current):
    """Channel indices to list: all of them, or the ends and NEAR around the current one."""
    if n <= 2 * NEAR + 3:
        return list(range(n))
    keep = {0, n - 1, *range(max(0, current - NEAR), min(n, current + NEAR + 1))}
    return sorted(keep)


def write_navigation(book, stages):
    """Links on every stage's sheets. A stage's sheets are those it added (Stage.sheets); a
    pass-through stage added none and is skipped: its neighbours link past it."""
    chain = [s for s in stages if s.sheets]
    fmt_bold = book.wb.add_format({"bold": True})
    for k, stage in enumerate(chain):
        prev = chain[k - 1] if k else None
        nxt = chain[k + 1] if k + 1 < len(chain) else None
        own = [s for s in _channel_sheets(stage) if s in stage.sheets]
        others = [s for s in stage.sheets if s not in own]
        for sheet_name in stage.sheets:
            channel = own.index(sheet_name) if sheet_name in own and len(own) > 1 else None
            _write_sheet_links(book, book.sheets[sheet_name], stage, prev, nxt, own, others, channel, fmt_bold)
    manifest = book.sheets.get("manifest")
    if manifest is not None:
        manifest.ws.write_url(0, 8, "internal:'overview'!A1", book.fmt_link, text("common.back_link"))


def _target(stage, channel):
    """The neighbour's sheet for this channel, or its first sheet."""
    own = _channel_sheets(stage)
    if channel is not None and len(own) > 1 and channel < len(own):
        return own[channel]
    return stage.first_sheet


def _write_sheet_links(book, sheet, stage, prev, nxt, own, others, channel, fmt_bold):
    ws = sheet.ws
    link = book.fmt_link

    def put(row, col, target, label, tip=None):
        ws.write_url(row, col, _url(target), link, label, tip or target)

    # the frozen corner: always in view
    if prev is not None and _free(ws, 1, 0):
        put(1, 0, _target(prev, channel), text("navigation.prev_short"))
    if nxt is not None and _free(ws, 2, 0):
        put(2, 0, _target(nxt, channel), text("navigation.next_short"))
    # the block under the data
    row = (ws.dim_rowmax or 0) + 2
    ws.write(row, FIRST_COL, text("navigation.heading"), book.fmt_header)
    row += 1
    if prev is not None:
        target = _target(prev, channel)
        put(row, FIRST_COL, target, text("navigation.prev_stage", sheet=target))
        row += 1
    if nxt is not None:
        target = _target(nxt, channel)
        put(row, FIRST_COL, target, text("navigation.next_stage", sheet=target))
        row += 1
    if sheet.name in others and own:
        put(row, FIRST_COL, own[0], text("navigation.stage", sheet=own[0]))
        row += 1
    for other in [o for o in others if o != sheet.name][:4]:
        put(row, FIRST_COL, other, text("navigation.layer_sheet", sheet=other))
        row += 1
    if len(own) > 1:
        current = channel if channel is not None else -1
        if channel is not None and channel > 0:
            put(row, FIRST_COL, own[channel - 1], text("navigation.prev_channel", sheet=own[channel - 1]))
            row += 1
        if channel is not None and channel + 1 < len(own):
            put(row, FIRST_COL, own[channel + 1], text("navigation.next_channel", sheet=own[channel + 1]))
            row += 1
        ws.write(row, FIRST_COL, text("navigation.channels", n=len(own)))
        row += 1
        listed = _compact(len(own), max(current, 0))
        col = FIRST_COL
        for n, c in enumerate(listed):
            if n and c != listed[n - 1] + 1:
                ws.write(row, col, "…")
                col += 1
            if c == current:
                ws.write(row, col, f"c{c}", fmt_bold)
            else:
                put(row, col, own[c], f"c{c}")
            col += 1
        row += 1
    put(row, FIRST_COL, "overview", text("common.back_link"))
