"""The workbook's contract, written and read here only: the `manifest` sheet (where every tensor
lives) and the `about` sheet (what the workbook was built from). build writes it, verify and outside
tools read it; it knows nothing of how the formulas were written.

manifest columns: layer | channel | sheet | range | class | keras_shape | channel_axis
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import XlcnnError

_CELL = re.compile(r"^\$?([A-Z]{1,3})\$?(\d+)$")


def parse_cell(text):
    m = _CELL.match(text.strip().upper())
    if not m:
        raise ValueError(text)
    col = 0
    for ch in m.group(1):
        col = col * 26 + ord(ch) - 64
    return int(m.group(2)) - 1, col - 1


def column_letters(col):
    """0-based column index -> Excel letters (0 -> A, 26 -> AA)."""
    letters = ""
    col += 1
    while col:
        col, rem = divmod(col - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def range_text(r0, c0, r1, c1):
    """(r0, c0, r1, c1), 0-based inclusive -> 'B4:AC31', as the manifest stores a range."""
    return f"{column_letters(c0)}{r0 + 1}:{column_letters(c1)}{r1 + 1}"


def parse_range(text):
    """'B4:AC31' -> (r0, c0, r1, c1), 0-based inclusive."""
    parts = str(text).split(":")
    r0, c0 = parse_cell(parts[0])
    r1, c1 = parse_cell(parts[-1])
    return r0, c0, r1, c1


@dataclass
class Entry:
    layer: str
    channel: int | None
    sheet: str
    range: tuple          # (r0, c0, r1, c1)
    klass: str
    shape: tuple          # Keras shape without batch
    channel_axis: int | None


def parse(rows, sheets):
    """rows: the manifest sheet as lists of values (header first); sheets: the workbook's sheet names."""
    if not rows or [str(v).strip().lower() if v is not None else "" for v in rows[0][:4]] != \
            ["layer", "channel", "sheet", "range"]:
        raise XlcnnError("the manifest sheet does not start with the header layer | channel | sheet | range; "
                         "was this workbook written by xlcnn build?")
    entries = []
    for n, row in enumerate(rows[1:], start=2):
        row = list(row) + [None] * (7 - len(row))
        if row[0] is None or str(row[0]).strip() == "":
            continue
        where = f"manifest!A{n}"
        sheet = str(row[2])
        if sheet not in sheets:
            raise XlcnnError(f"{where} points at sheet '{sheet}', which the workbook does not have")
        try:
            rng = parse_range(row[3])
        except (ValueError, TypeError):
            raise XlcnnError(f"{where}: range {row[3]!r} is not like B4:AC31") from None
        if rng[2] < rng[0] or rng[3] < rng[1] or rng[2] >= 1_048_576 or rng[3] >= 16_384:
            raise XlcnnError(f"{where}: range {row[3]} lies outside a sheet")
        shape = tuple(int(s) for s in re.findall(r"\d+", str(row[5] or "")))
        channel = None if row[1] in (None, "") else int(float(row[1]))
        axis = None if row[6] in (None, "") else int(float(row[6]))
        entries.append(Entry(str(row[0]), channel, sheet, rng, str(row[4] or ""), shape, axis))
    if not entries:
        raise XlcnnError("the manifest sheet lists no tensors")
    return entries


def write(book, entries, headers):
    """Write the manifest sheet: a header row, then one row per Entry (a tensor's channel)."""
    sheet = book.add_sheet("manifest", back_link=False)
    ws = sheet.ws
    ws.freeze_panes(1, 0)
    for j, head in enumerate(headers):
        ws.write(0, j, head, book.fmt_header)
    for row, e in enumerate(entries, start=1):
        ws.write(row, 0, e.layer)
        if e.channel is not None:
            ws.write_number(row, 1, e.channel)
        ws.write(row, 2, e.sheet)
        ws.write(row, 3, range_text(*e.range))
        ws.write(row, 4, e.klass)
        ws.write(row, 5, "(" + ", ".join(str(n) for n in e.shape) + ")")
        if e.channel_axis is not None:
            ws.write_number(row, 6, e.channel_axis)
    for j, w in enumerate([22, 8, 28, 12, 18, 16, 12]):
        ws.set_column(j, j, w)
    return sheet


def layers(entries):
    """Layer names in manifest order (the input first)."""
    seen = []
    for e in entries:
        if e.layer not in seen:
            seen.append(e.layer)
    return seen


def assemble(entries, layer, block):
    """The tensor of one layer in Keras's layout, from block(sheet, r0, c0, r1, c1) -> array.

    block may return (rows, cols) or, batched, (B, rows, cols); the result then has a leading B."""
    rows = [e for e in entries if e.layer == layer]
    first = rows[0]
    if first.channel is None:
        data = block(first.sheet, *first.range)
        return data.reshape(data.shape[:-2] + (-1,))
    maps = [None] * len(rows)
    for e in rows:
        maps[e.channel] = block(e.sheet, *e.range)
    rank = len(first.shape) if first.shape else 3
    axis = first.channel_axis if first.channel_axis is not None else rank - 1
    if rank == 2:                                      # a signal: each channel is a column of steps
        stacked = np.stack([m[..., 0] for m in maps], axis=-2)   # (..., C, steps)
        return np.moveaxis(stacked, -2, axis - 2)
    stacked = np.stack(maps, axis=-3)                  # (..., C, H, W)
    return np.moveaxis(stacked, -3, axis - 3)          # channel axis into Keras's place


def about(rows):
    """The about sheet's key | value rows as a dict."""
    out = {}
    for row in rows:
        if len(row) >= 2 and isinstance(row[0], str) and row[1] is not None:
            out[row[0].strip()] = str(row[1])
    return out
