"""Workbook layout: sheet names, where each tensor's cells live, styles and template texts.

Every 3-D tensor is stored one sheet per channel: the (height x width) map of channel c sits on
its own sheet with its top-left cell at row FIRST_ROW, column FIRST_COL. A 1-D tensor is one
column. The writers only ask a Tensor for cell and range references; nothing else knows rows.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# An installed wheel carries templates/ as the package xlcnn.templates; a checkout has it at the top.
TEMPLATES = Path(__file__).resolve().parent / "templates"
if not (TEMPLATES / "texts.toml").exists():
    TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

# Row 0: back link and title; row 1: explanation; row 2: block labels; row 3: column indices.
FIRST_ROW = 4
FIRST_COL = 1

MAX_SHEET_NAME = 31
# Excel forbids these in sheet names; control characters have no place in a name either.
_BAD_SHEET_CHARS = re.compile(r"[\\/?*\[\]:\x00-\x1f\x7f]")
# Excel allows an apostrophe inside a name (quoted as '' in references), but Gnumeric and the
# `formulas` package cannot parse such a reference ('it''s'!A1): it becomes the typographic one.
APOSTROPHE, APOSTROPHE_SHEET = "'", "\u2019"


@lru_cache(maxsize=None)
def _load(name):
    with open(TEMPLATES / name, "rb") as fh:
        return tomllib.load(fh)


def text(key, **fields):
    """A workbook text from templates/texts.toml, e.g. text('stage.conv', step='02', ...)."""
    node = _load("texts.toml")
    for part in key.split("."):
        node = node[part]
    return node.format(**fields) if isinstance(node, str) else node


def style(key=None):
    data = _load("styles.toml")
    if key is None:
        return data
    for part in key.split("."):
        data = data[part]
    return data


def col_letter(col):
    """0-based column index -> Excel letters (0 -> A, 26 -> AA)."""
    letters = ""
    col += 1
    while col:
        col, rem = divmod(col - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def a1(row, col, abs_row=False, abs_col=False):
    return f"{'$' if abs_col else ''}{col_letter(col)}{'$' if abs_row else ''}{row + 1}"


def quote_sheet(name):
    """A sheet name as it must appear in a formula: always quoted, inner quotes doubled."""
    return "'" + name.replace("'", "''") + "'"


def ref(sheet, row, col, absolute=False, abs_row=None, abs_col=None):
    r = absolute if abs_row is None else abs_row
    c = absolute if abs_col is None else abs_col
    return f"{quote_sheet(sheet)}!{a1(row, col, r, c)}"


def rng(sheet, r0, c0, r1, c1, absolute=False, abs_row=None, abs_col=None):
    """Inclusive range r0..r1, c0..c1 on a sheet; a single cell collapses to a plain reference."""
    r = absolute if abs_row is None else abs_row
    c = absolute if abs_col is None else abs_col
    if r0 == r1 and c0 == c1:
        return ref(sheet, r0, c0, abs_row=r, abs_col=c)
    return f"{quote_sheet(sheet)}!{a1(r0, c0, r, c)}:{a1(r1, c1, r, c)}"


def range_text(r0, c0, r1, c1):
    """A range without a sheet, as the manifest stores it (B4:AC31)."""
    return f"{a1(r0, c0)}:{a1(r1, c1)}"


class SheetNames:
    """Hands out valid, unique (ignoring case) sheet names of at most 31 characters, without the
    apostrophe (`it's` becomes `it’s`) so that every engine parses references to them."""

    def __init__(self):
        self.used = set()

    def make(self, prefix, name, suffix=""):
        """prefix and suffix are kept whole (e.g. '03 ' and ' c12'); the layer name is cut to fit."""
        clean = _BAD_SHEET_CHARS.sub("_", name).replace(APOSTROPHE, APOSTROPHE_SHEET).strip()
        room = MAX_SHEET_NAME - len(prefix) - len(suffix)
        base = (prefix + clean[:max(room, 0)] + suffix).strip().strip("'") or "sheet"
        candidate, n = base, 2
        while candidate.lower() in self.used:
            tag = f"~{n}"
            cut = max(MAX_SHEET_NAME - len(prefix) - len(suffix) - len(tag), 0)
            candidate = (prefix + clean[:cut] + tag + suffix).strip().strip("'")
            n += 1
        self.used.add(candidate.lower())
        return candidate


@dataclass
class Tensor:
    """A Keras tensor (without the batch axis) placed in the workbook.

    values: float64, in Keras's own layout (e.g. (H, W, C) for channels_last).
    channel_axis: which axis of `values` is stored one sheet per channel; None for a 1-D tensor.
    places: for a 3-D tensor, (sheet, row0, col0) of each channel's map; for 1-D one column.
    """

    layer: str
    values: np.ndarray
    channel_axis: int | None
    places: list

    @property
    def rank(self):
        return self.values.ndim

    @property
    def channels(self):
        return 1 if self.channel_axis is None else self.values.shape[self.channel_axis]

    @property
    def hw(self):
        """(height, width) of one channel's map."""
        return tuple(s for i, s in enumerate(self.values.shape) if i != self.channel_axis)

    def chw(self):
        """The values as (channels, height, width)."""
        return np.moveaxis(self.values, self.channel_axis, 0)

    def cell(self, c, i, j):
        sheet, r0, c0 = self.places[c]
        return ref(sheet, r0 + i, c0 + j)

    def window(self, c, i0, i1, j0, j1):
        """Inclusive window rows i0..i1, columns j0..j1 of channel c (relative references)."""
        sheet, r0, c0 = self.places[c]
        return rng(sheet, r0 + i0, c0 + j0, r0 + i1, c0 + j1)

    def cell_at(self, index):
        """The cell holding the element at a Keras index, e.g. (i, j, c) for channels_last."""
        if self.channel_axis is None:
            return self.cell1(index[0])
        i, j = [v for k, v in enumerate(index) if k != self.channel_axis]
        return self.cell(index[self.channel_axis], i, j)

    def cell1(self, i):
        sheet, r0, c0 = self.places[0]
        return ref(sheet, r0 + i, c0)

    def column(self, absolute=True):
        """The whole 1-D tensor as one range."""
        sheet, r0, c0 = self.places[0]
        return rng(sheet, r0, c0, r0 + self.values.shape[0] - 1, c0, absolute=absolute)

    def ref_array(self):
        """Cell references of every element, in Keras's layout (used by Flatten)."""
        out = np.empty(self.values.shape, dtype=object)
        if self.channel_axis is None:
            for i in range(self.values.shape[0]):
                out[i] = self.cell1(i)
            return out
        view = np.moveaxis(out, self.channel_axis, 0)
        h, w = self.hw
        for c in range(self.channels):
            for i in range(h):
                for j in range(w):
                    view[c, i, j] = self.cell(c, i, j)
        return out

    def origin_array(self):
        """(channel, row, col) in the Keras layout, for labelling where a value came from."""
        if self.channel_axis is None:
            return None
        c, i, j = np.meshgrid(*(np.arange(n) for n in (self.channels, *self.hw)), indexing="ij")
        stacked = np.stack([c, i, j], axis=-1)
        return np.moveaxis(stacked, 0, self.channel_axis)

    def manifest_rows(self):
        """(channel or None, sheet, range) for every channel, as the manifest records them."""
        rows = []
        if self.channel_axis is None:
            sheet, r0, c0 = self.places[0]
            rows.append((None, sheet, range_text(r0, c0, r0 + self.values.shape[0] - 1, c0)))
            return rows
        h, w = self.hw
        for c, (sheet, r0, c0) in enumerate(self.places):
            rows.append((c, sheet, range_text(r0, c0, r0 + h - 1, c0 + w - 1)))
        return rows
