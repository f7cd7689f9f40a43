"""Workbook layout: sheet names, where each tensor's cells live, styles and template texts.

Every 3-D tensor is stored one sheet per channel: the (height x width) map of channel c sits on
its own sheet with its top-left cell at row FIRST_ROW, column FIRST_COL. A 1-D tensor is one
column. The writers only ask a Tensor for cell and range references; nothing else knows rows.
"""

from __future__ import annotations

import re
import tomllib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import XlcnnError
from .manifest import column_letters
from .manifest import range_text as manifest_range_text

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


# The workbook's language: texts.toml (en) or texts.<lang>.toml, chosen once per build (set_language).
LANGUAGES = ("en", "ja")
_LANGUAGE = ContextVar("xlcnn_language", default="en")


def set_language(lang):
    """From now on text() reads the texts of `lang`; returns the token reset_language() takes back."""
    if lang not in LANGUAGES:
        raise XlcnnError(f"unknown language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    return _LANGUAGE.set(lang)


def reset_language(token):
    _LANGUAGE.reset(token)


@contextmanager
def language(lang):
    """Within this block text() reads the texts of `lang`; the previous language comes back after."""
    token = set_language(lang)
    try:
        yield
    finally:
        reset_language(token)


def current_language():
    return _LANGUAGE.get()


def _fill(name, key, fields):
    node = _load(name)
    for part in key.split("."):
        node = node[part]
    return node.format(**fields) if isinstance(node, str) else node


def text(key, **fields):
    """A workbook text from templates/texts.toml (or texts.ja.toml inside language('ja')), e.g.
    text('stage.conv', step='02', ...). A key not yet translated, or one whose placeholders changed
    since, falls back to English rather than failing a build (tests/test_language.py names it)."""
    lang = _LANGUAGE.get()
    if lang != "en":
        try:
            return _fill(f"texts.{lang}.toml", key, fields)
        except KeyError:
            pass
    return _fill("texts.toml", key, fields)


class Said(str):
    """A text the terminal prints in English that a workbook shows in its own language: the
    English string, keeping its key and fields (which may be Said too) for local()."""

    def __new__(cls, key, **fields):
        with language("en"):
            self = super().__new__(cls, text(key, **fields))
        self.key, self.fields = key, fields
        return self

    def local(self):
        return text(self.key, **{k: local(v) for k, v in self.fields.items()})


def local(value):
    """A Said in the workbook's language; any other value as it is."""
    return value.local() if isinstance(value, Said) else value


def style(key=None):
    data = _load("styles.toml")
    if key is None:
        return data
    for part in key.split("."):
        data = data[part]
    return data


def col_letter(col):
    """0-based column index -> Excel letters (0 -> A, 26 -> AA)."""
    return column_letters(col)


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


range_text = manifest_range_text   # a range without a sheet, as the manifest stores it (B4:AC31)


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

    values: float64, in Keras's own layout ((H, W, C) for a channels_last image map, (steps, C) for a
    channels_last signal, (units,) for a vector).
    channel_axis: which axis of `values` holds the channels; None for a 1-D vector.
    places: (sheet, row0, col0) of each channel's map, the top-left cell of an (h x w) block:
      - rank 3 (an image map): one sheet per channel, the (H x W) map;
      - rank 2 (a signal, the maps of 1-D layers): every channel on one sheet, time running down,
        so channel c's map is a column of `steps` cells (h = steps, w = 1);
      - rank 1: one column.
    Writers see every map as (channels, h, w) through chw(), hw, cell() and window(): the 2-D
    machinery serves 1-D layers with a kernel of width 1.
    """

    layer: str
    values: np.ndarray
    channel_axis: int | None
    places: list
    # blank cells kept around every channel's map on its sheet, ((top, bottom), (left, right)):
    # the padding a 'same' or 'causal' layer reading this tensor adds, made visible (see base.MapSheets)
    border: tuple = ((0, 0), (0, 0))

    def has_border(self, pads):
        """True when the blank border around the maps covers these pads ((top, bottom), (left, right))."""
        return all(have >= need for b, p in zip(self.border, pads) for have, need in zip(b, p))

    @property
    def rank(self):
        return self.values.ndim

    @property
    def is_map(self):
        """True for image maps (rank 3) and signals (rank 2): tensors with channels."""
        return self.channel_axis is not None

    @property
    def channels(self):
        return 1 if self.channel_axis is None else self.values.shape[self.channel_axis]

    @property
    def hw(self):
        """(height, width) of one channel's block of cells: (H, W), or (steps, 1) for a signal."""
        spatial = tuple(s for i, s in enumerate(self.values.shape) if i != self.channel_axis)
        return spatial if len(spatial) == 2 else (spatial[0], 1)

    def chw(self):
        """The values as (channels, h, w): a signal's channels become (C, steps, 1)."""
        out = np.moveaxis(self.values, self.channel_axis, 0)
        return out[:, :, None] if self.rank == 2 else out

    @staticmethod
    def from_chw(layer, chw, rank, channel_axis, places, border=((0, 0), (0, 0))):
        """A tensor of Keras rank `rank` (2 or 3) from (C, h, w) values, the channel axis put back."""
        chw = np.asarray(chw)
        values = chw[:, :, 0] if rank == 2 else chw
        return Tensor(layer, np.moveaxis(values, 0, channel_axis), channel_axis, places, border)

    def cell(self, c, i, j):
        sheet, r0, c0 = self.places[c]
        return ref(sheet, r0 + i, c0 + j)

    def window(self, c, i0, i1, j0, j1):
        """Inclusive window rows i0..i1, columns j0..j1 of channel c (relative references)."""
        sheet, r0, c0 = self.places[c]
        return rng(sheet, r0 + i0, c0 + j0, r0 + i1, c0 + j1)

    def _spatial(self, index):
        spatial = [v for k, v in enumerate(index) if k != self.channel_axis]
        return (spatial[0], spatial[1]) if len(spatial) == 2 else (spatial[0], 0)

    def cell_at(self, index):
        """The cell holding the element at a Keras index, e.g. (i, j, c) for channels_last."""
        if self.channel_axis is None:
            return self.cell1(index[0])
        return self.cell(index[self.channel_axis], *self._spatial(index))

    def cell1(self, i):
        sheet, r0, c0 = self.places[0]
        return ref(sheet, r0 + i, c0)

    def column(self, absolute=True):
        """The whole 1-D tensor as one range."""
        sheet, r0, c0 = self.places[0]
        return rng(sheet, r0, c0, r0 + self.values.shape[0] - 1, c0, absolute=absolute)

    def ref_array(self):
        """Cell references of every element, in Keras's layout (used by Flatten and Reshape)."""
        out = np.empty(self.values.shape, dtype=object)
        for index in np.ndindex(*self.values.shape):
            out[index] = self.cell_at(index)
        return out

    def origin_array(self):
        """(channel, row[, col]) of every element in the Keras layout, for labelling where a value
        came from: a trailing axis of 3 for an image map, 2 for a signal (channel, step)."""
        if self.channel_axis is None:
            return None
        spatial = [n for k, n in enumerate(self.values.shape) if k != self.channel_axis]
        grids = np.meshgrid(*(np.arange(n) for n in (self.channels, *spatial)), indexing="ij")
        stacked = np.stack(grids, axis=-1)
        return np.moveaxis(stacked, 0, self.channel_axis)

    def origin_text(self, origin):
        """'ch 3 · row 2 · col 4' for an image map, 'ch 3 · t 7' for a signal."""
        if len(origin) == 3:
            return text("common.origin_map", ch=origin[0], row=origin[1], col=origin[2])
        return text("common.origin_signal", ch=origin[0], t=origin[1])

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
