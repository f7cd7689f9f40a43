"""Read an .xlsx file's cells straight from its zip and XML: constants, formulas (shared
formulas expanded) and the values Excel or LibreOffice cached for them.

Built for workbooks with a million constant cells.  A worksheet is read in chunks of whole rows:
a chunk that is only rows of plain numbers (a weight matrix) is parsed without any per-cell
regular expression (one findall of the <v> texts, positions from the row headers); any other
chunk is cut with one regular expression over bytes (``re.split`` returns a flat list, so no
per-cell tuple is built) and its numbers still become NumPy arrays in bulk.  Only formulas,
strings and other unusual cells get per-cell Python.  Anything the fast pattern does not account
for (namespace prefixes, cells without an ``r`` attribute) falls back to ElementTree.
"""

import bisect
import html
import io
import itertools
import posixpath
import queue
import re
import zipfile
import zlib
from collections import deque
from contextlib import closing
from concurrent.futures import Future, ThreadPoolExecutor
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

import numpy as np

from .grouping import copies_on_grid, master_refs, ref_digits, ref_letters
from .parser import (FormulaError, MAX_COLS, MAX_ROWS, cell_name, col_index, col_letters,
                     resolve_names, shifter)

DEFAULT_MAX_TOTAL = 2 << 30        # 2 GiB of declared uncompressed data
DEFAULT_MAX_RATIO = 200            # compression ratio that marks a member as a bomb...
DEFAULT_RATIO_MIN_SIZE = 100 << 20  # ...once it would expand beyond 100 MB


MAX_DENSE_CELLS = 200_000_000  # one sheet as a float64 array: 1.6 GB


class WorkbookError(ValueError):
    """The file is not a workbook this reader will open (not a zip, zip bomb, no sheets...)."""


# --------------------------------------------------------------------------- the book

class Book:
    """Cells of one workbook.  Rows and columns are 0-based everywhere."""

    def __init__(self, path, sheets):
        self.path = str(path)
        self.sheets = sheets            # names, workbook order
        self.formulas = _CellMap(self, 0)  # (sheet, row, col) -> text without '=' (a view)
        self.cached = _CellMap(self, 1)    # (sheet, row, col) -> cached float/str/bool/None (a view)
        self.constants = _Constants(self)
        self._num = {}                  # sheet -> (rows, cols, values) of numeric constants
        self._other = {}                # sheet -> {(row, col): str/bool} other constants
        self._errors = {}               # sheet -> {(row, col)} constants that are error values
        self._fcells = {}               # sheet -> (rows, cols, texts) of formula cells
        self._fcached = {}              # sheet -> (float64 cached numbers, {index: other cached value})
        self._dense = {}                # sheet -> cached sheet_array
        self._lower = {s.lower(): s for s in sheets}
        self.program = None             # the evaluator's compiled Program, built on first use
        # defined names: {(sheet, name) for a sheet-scoped one, (None, name) for the workbook's:
        # definition text without '='}; formulas are read with the names in scope put in
        self.defined_names = {}

    def sheet_name(self, sheet):
        """The workbook's spelling of ``sheet`` (names are case-insensitive, as in Excel)."""
        try:
            return self._lower[sheet.lower()]
        except KeyError:
            raise KeyError(f"no sheet named {sheet!r} in {self.path}") from None

    def numbers(self, sheet):
        """(rows, cols, values) arrays of the numeric constants of ``sheet``."""
        return self._num[self.sheet_name(sheet)]

    def other_constants(self, sheet):
        """{(row, col): str or bool} of the non-numeric constants of ``sheet`` (error values as
        their text)."""
        return self._other[self.sheet_name(sheet)]

    def error_cells(self, sheet):
        """{(row, col)} of the constants of ``sheet`` that are error values (#N/A, ...)."""
        return self._errors[self.sheet_name(sheet)]

    def formula_cells(self, sheet):
        """(rows, cols, texts) of the formula cells of ``sheet``: lists, texts without '=' (a
        sequence that makes a shared formula's copy from its master's text when it is read)."""
        return self._fcells[self.sheet_name(sheet)]

    def shared_formulas(self, sheet):
        """[(start, stop, text, row, col)]: the formula cells [start, stop) of ``sheet`` (in
        formula_cells order) are copies of the shared formula ``text`` written at (row, col),
        its relative references moved by each copy's offset from there.  Empty when none."""
        texts = self._fcells[self.sheet_name(sheet)][2]
        return list(texts.groups) if isinstance(texts, _Texts) else []

    def formula_lengths(self, sheet):
        """int64 array: the length of each formula text of ``sheet`` (formula_cells order),
        without making the texts of shared formulas' copies."""
        texts = self._fcells[self.sheet_name(sheet)][2]
        if isinstance(texts, _Texts):
            return texts.lengths()
        return np.fromiter(map(len, texts), np.int64, len(texts))

    def cached_values(self, sheet):
        """(values, others) of the formula cells of ``sheet`` in formula_cells order: float64
        cached numbers, and {index: value} for the cells whose cached value is not a number
        (None when there is none, text, a boolean, an error's text; NaN in ``values``)."""
        return self._fcached[self.sheet_name(sheet)]

    def shape(self, sheet):
        """(rows, cols) just covering every cell stored on ``sheet``."""
        sheet = self.sheet_name(sheet)
        nr = nc = 0
        rows, cols, _ = self._num[sheet]
        if len(rows):
            nr, nc = int(rows.max()) + 1, int(cols.max()) + 1
        frows, fcols, _ = self._fcells[sheet]
        if len(frows):  # max over a list runs in C; the other constants are few
            nr, nc = max(nr, max(frows) + 1), max(nc, max(fcols) + 1)
        for r, c in self._other[sheet]:
            nr, nc = max(nr, r + 1), max(nc, c + 1)
        return nr, nc

    def sheet_array(self, sheet):
        """Numeric constants of ``sheet`` as a read-only float64 array, NaN where a cell is empty,
        text, boolean, an error or a formula."""
        sheet = self.sheet_name(sheet)
        arr = self._dense.get(sheet)
        if arr is None:
            shape = self.shape(sheet)
            if shape[0] * shape[1] > MAX_DENSE_CELLS:
                raise WorkbookError(f"sheet {sheet!r} spans {shape[0]}x{shape[1]} cells, too many "
                                    "for a dense array")
            arr = np.full(shape, np.nan)
            rows, cols, vals = self._num[sheet]
            arr[rows, cols] = vals
            arr.setflags(write=False)
            self._dense[sheet] = arr
        return arr

    def value(self, sheet, row, col):
        """Constant in a cell: float, str, bool (error values as their text, e.g. '#N/A'), or
        None for an empty cell or a formula cell."""
        sheet = self.sheet_name(sheet)
        arr = self.sheet_array(sheet)
        if row < arr.shape[0] and col < arr.shape[1] and arr[row, col] == arr[row, col]:
            return float(arr[row, col])
        return self._other[sheet].get((row, col))

    def __repr__(self):
        return (f"<Book {self.path!r}: {len(self.sheets)} sheets, {len(self.constants)} constants, "
                f"{len(self.formulas)} formulas>")


class _CellMap(Mapping):
    """``book.formulas`` (texts) and ``book.cached`` (cached values) as read-only mappings
    (sheet, row, col) -> value over the per-sheet lists and arrays, without a dict entry per
    cell; a sheet's cell index is built on its first lookup."""

    def __init__(self, book, kind):
        self._book, self._kind, self._index = book, kind, {}

    def _get(self, sheet, i):
        if self._kind == 0:
            return self._book._fcells[sheet][2][i]
        values, others = self._book._fcached[sheet]
        return others[i] if i in others else float(values[i])

    def _at(self, key):
        sheet, row, col = key
        index = self._index.get(sheet)
        if index is None:
            if sheet not in self._book._fcells:
                raise KeyError(key)
            rows, cols, _ = self._book._fcells[sheet]
            index = self._index[sheet] = {rc: i for i, rc in enumerate(zip(rows, cols))}
        try:
            return sheet, index[(row, col)]
        except KeyError:
            raise KeyError(key) from None

    def __getitem__(self, key):
        return self._get(*self._at(key))

    def __setitem__(self, key, value):
        """Replace the cached value of an existing formula cell (tests make stale workbooks)."""
        if self._kind == 0:
            raise TypeError("book.formulas is read-only")
        sheet, i = self._at(key)
        values, others = self._book._fcached[sheet]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[i] = value
            others.pop(i, None)
        else:
            values[i] = np.nan
            others[i] = value

    def __iter__(self):
        for sheet in self._book.sheets:
            rows, cols, _ = self._book._fcells.get(sheet, ((), (), ()))
            yield from zip(itertools.repeat(sheet), rows, cols)

    def __len__(self):
        return sum(len(f[0]) for f in self._book._fcells.values())


class _Constants(Mapping):
    """``book.constants[(sheet, row, col)]`` without building a million-entry dict."""

    def __init__(self, book):
        self._book = book

    def __getitem__(self, key):
        sheet, row, col = key
        try:
            value = self._book.value(sheet, row, col)
        except KeyError:
            value = None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self):
        for sheet in self._book.sheets:
            rows, cols, _ = self._book._num[sheet]
            yield from zip(itertools.repeat(sheet), rows.tolist(), cols.tolist())
            for r, c in self._book._other[sheet]:
                yield sheet, r, c

    def __len__(self):
        b = self._book
        return sum(len(b._num[s][0]) + len(b._other[s]) for s in b.sheets)


# --------------------------------------------------------------------------- zip handling

def _open_zip(path, max_total, max_ratio, ratio_min_size):
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise WorkbookError(f"{path}: not an .xlsx workbook (not a zip archive)") from None
    # Refuse a zip bomb from the sizes its directory declares, before inflating anything;
    # _read_member then makes sure no member inflates beyond what it declared.
    infos = zf.infolist()
    total = sum(i.file_size for i in infos)
    if total > max_total:
        zf.close()
        raise WorkbookError(f"{path}: refusing to open, members would expand to {total:,} bytes "
                            f"(limit {max_total:,})")
    for i in infos:
        if i.file_size > ratio_min_size and i.file_size > max_ratio * max(i.compress_size, 1):
            zf.close()
            raise WorkbookError(f"{path}: refusing to open, member {i.filename} expands "
                                f"{i.file_size / max(i.compress_size, 1):.0f}:1 to {i.file_size:,} "
                                f"bytes (looks like a zip bomb)")
    return zf


def _read_member(zf, name):
    info = zf.getinfo(name)
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # CRC mismatch: sizes were lied about
        raise WorkbookError(f"member {name} is corrupt ({e})") from None
    if len(data) > info.file_size:
        raise WorkbookError(f"member {name} inflates beyond its declared size")
    return data


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def _rels(zf, part):
    """{Id: (Type, target path inside the zip)} from the .rels file belonging to ``part``."""
    folder, base = posixpath.split(part)
    name = posixpath.join(folder, "_rels", base + ".rels")
    if name not in zf.NameToInfo:
        return {}
    out = {}
    for el in ET.fromstring(_read_member(zf, name)).iter():
        if _local(el.tag) != "Relationship" or el.get("TargetMode") == "External":
            continue
        target = el.get("Target", "")
        target = target.lstrip("/") if target.startswith("/") else posixpath.normpath(
            posixpath.join(folder, target))
        out[el.get("Id")] = (el.get("Type", ""), target)
    return out


# --------------------------------------------------------------------------- text helpers

_XSTR = re.compile(r"_x([0-9A-Fa-f]{4})_")


def _text(raw):
    """XML character data (bytes) -> str, with entities and OOXML's _xHHHH_ escapes decoded."""
    s = raw.decode("utf-8")
    if "&" in s:
        s = html.unescape(s)
    if "_x" in s:
        s = _XSTR.sub(lambda m: chr(int(m.group(1), 16)), s)
    return s


def _shared_strings(zf, name):
    if not name or name not in zf.NameToInfo:
        return []
    out = []
    for si in ET.fromstring(_read_member(zf, name)):
        if _local(si.tag) != "si":
            continue
        pieces = []
        for el in si.iter():  # <t> directly or inside rich-text runs <r>; skip phonetic <rPh>
            if _local(el.tag) == "rPh":
                el.clear()
            elif _local(el.tag) == "t" and el.text:
                pieces.append(el.text)
        s = "".join(pieces)
        out.append(_XSTR.sub(lambda m: chr(int(m.group(1), 16)), s) if "_x" in s else s)
    return out


# --------------------------------------------------------------------------- sheet parsing

# One <c> element: column letters, row digits, t attribute, the whole <f ...> element, the <v>
# text, and whatever else is inside (inline strings).  Groups that did not take part are None.
_CELL = re.compile(
    rb'<c r="([A-Z]{1,3})([0-9]{1,7})"(?:[^>]*? t="([a-zA-Z]+)")?[^>]*?'
    rb"(?:/>|>(<f\b[^>]*?(?:/>|>[^<]*</f>))?(?:<v>([^<]*)</v>)?(.*?)</c>)",
    re.S,
)
_CHUNK = 8 << 20            # cut sheet XML at </row> about every 8 MB to bound the split list
_NUMERIC_T = {None, b"n"}
_NO_REST = {None, b""}
_ATTR = re.compile(r'([\w:]+)="([^"]*)"')
_INLINE_T = re.compile(rb"<t\b[^>]*>([^<]*)</t>|<rPh\b.*?</rPh>", re.S)
_V_ANY = re.compile(rb"<v\b[^>]*>([^<]*)</v>")


class _Cells:
    """What a worksheet holds, before interpretation: numeric cells in bulk, the rest listed."""

    def __init__(self):
        self.formulas = []  # (rows, cols, texts, cached) of plain formula cells, per chunk
        self.copies = []    # (rows, cols, si, cached) of shared formulas' copies (<f t="shared" si=".."/>)
        self.num = []     # list of (rows, cols, values) arrays, one per chunk
        self.special = []  # (row, col, t, f_element_str_or_None, v_str_or_None, rest_str)


def _indices_not_in(seq, allowed):
    if set(seq) <= allowed:  # C-speed check; the common answer is "none"
        return []
    return [i for i, x in enumerate(seq) if x not in allowed]


_V_TEXT = re.compile(rb"<v>([^<]*)</v>")
_DECIMAL_BYTES = np.zeros(256, bool)
_DECIMAL_BYTES[list(b"0123456789+-.eE\n")] = True
_BULK_MIN = 256  # fewer numbers than this: float() each, no parser to set up


def _decimals(blob, n):
    """float64 (n,) of ``blob``: n decimal numbers, one per line, as float() reads them; None
    when a line holds anything but digits, signs, '.', 'e' or 'E', or does not parse (then
    float() decides, one text at a time).

    pandas' C reader parses them in bulk, correctly rounded (fast_float since pandas 3.1), about
    seven times float()'s speed; with those characters only, it accepts exactly the texts float()
    accepts and gives the same numbers."""
    if n < _BULK_MIN or not _DECIMAL_BYTES[np.frombuffer(blob, np.uint8)].all():
        return None
    try:
        frame = _pandas().read_csv(io.BytesIO(blob), header=None, names=["v"], dtype=np.float64,
                                   na_filter=False, skip_blank_lines=False, engine="c")
    except ValueError:
        return None
    out = frame["v"].to_numpy(np.float64)
    return out if len(out) == n else None


def _pandas():
    import pandas
    return pandas


def _decimals_at(a, starts, ends):
    """float64 of the texts a[starts[i]:ends[i]] of the uint8 array ``a`` (in order, not
    overlapping, none empty), gathered into lines in bulk; None as for :func:`_decimals`."""
    n = len(starts)
    if n < _BULK_MIN:
        return None
    # runs of bytes to drop and to keep (each text with the byte after it, its line's end)
    runs = np.empty(2 * n + 1, np.int64)
    runs[0] = starts[0]
    runs[1::2] = ends - starts + 1
    runs[2:-1:2] = starts[1:] - ends[:-1] - 1
    runs[-1] = len(a) - ends[-1] - 1
    keep = np.zeros(2 * n + 1, bool)
    keep[1::2] = True
    lines = a[np.repeat(keep, runs)]
    lines[np.cumsum(ends - starts + 1) - 1] = 10
    return _decimals(lines.tobytes(), n)


def _numeric_block(chunk):
    """(rows, cols, values) of a chunk whose cells are all plain numbers (a weight matrix, as
    XlsxWriter writes it), found without a per-cell or per-row regex; None for anything else.

    Between its first <row and last </row> such a chunk holds only <row>, <c r="..."> and <v>
    tags (checked on the byte after every '<', found in one array pass), each cell exactly one
    non-empty <v> lying between it and the next cell, so the i-th <v> is the i-th cell's.  The
    cells' positions are read from their r attributes in arrays: the bytes after each
    ``<c r="`` (1-3 capitals, 1-7 digits, a quote) decoded for all cells at once."""
    lo, hi = chunk.find(b"<row"), chunk.rfind(b"</row>")
    if lo < 0 or hi < lo:
        return None
    if chunk.find(b' t="', lo, hi) >= 0 and chunk.count(b' t="', lo, hi) != chunk.count(b' t="n"', lo, hi):
        return None
    a = np.frombuffer(chunk, np.uint8)[lo:hi + 6]  # a view: no copy of a 60 MB weight sheet
    try:
        return _numeric_cells(a)
    except IndexError:  # a cell's reference runs past the end: not the layout this path reads
        return None


def _numeric_cells(a):
    lt = np.flatnonzero(a == 60)  # '<'
    after = a[lt + 1]
    if not ((after == 99) | (after == 118) | (after == 47) | (after == 114)).all():
        return None  # a tag other than <c, <v, <row and closing ones: <f>, <is>, prefixes...
    cells, vs = lt[after == 99], lt[after == 118]
    n = len(cells)
    if n == 0 or len(vs) != n:
        return None
    if not ((a[cells + 2] == 32) & (a[cells + 3] == 114) & (a[cells + 4] == 61) & (a[cells + 5] == 34)
            & (a[vs + 2] == 62) & (a[vs + 3] != 60) & (cells < vs)).all() or (vs[:-1] > cells[1:]).any():
        return None  # not '<c r="', not a plain non-empty <v>, or a cell with no <v> of its own
    lt_v = np.flatnonzero(after == 118)
    if lt_v[-1] + 1 >= len(lt):
        return None
    view = np.lib.stride_tricks.sliding_window_view(a, 8)
    found = _positions_by_rows(a, view, lt[after == 114], cells)
    if found is None:
        found = _decode_refs(view, cells + 6)
    if found is None:
        return None
    row, col = found
    values = _decimals_at(a, vs + 3, lt[lt_v + 1])
    if values is None:
        vals = _V_TEXT.findall(a.tobytes())
        if len(vals) != n:
            return None
        values = np.fromiter(map(float, vals), np.float64, n)
    return row - 1, col - 1, values


def _decode_refs(view, at):
    """(rows, cols), 1-based, of the A1 references starting at the offsets ``at`` of the bytes
    whose 8-byte windows ``view`` holds, each ended by a quote; None if one is not 1-3 capitals,
    1-7 digits and the quote."""
    L = view[at, :4].astype(np.int16)  # 1-3 capitals, then a digit
    going = np.logical_and.accumulate((L >= 65) & (L <= 90), axis=1)
    letters = going.sum(1)
    col = _places(L, going, 3, 26, 64)
    row, ok = _decode_number(view, at + letters)
    if not (ok & (letters >= 1) & (letters <= 3)).all():
        return None
    return row, col


def _decode_number(view, at):
    """(numbers, ok) of the texts at offsets ``at`` (``view``: the bytes' 8-byte windows): ok
    where a text is 1-7 digits and then a quote."""
    D = view[at].astype(np.int16)
    going = np.logical_and.accumulate((D >= 48) & (D <= 57), axis=1)
    digits = going.sum(1)
    end = D[np.arange(len(at)), np.minimum(digits, 7)]
    return _places(D, going, 7, 10, 48), (digits >= 1) & (digits <= 7) & (end == 34)


_ROW_TAG = np.frombuffer(b'row r="', np.uint8)


def _positions_by_rows(a, view, row_tags, cells):
    """(rows, cols), 1-based, of the cells at offsets ``cells`` of ``a`` when every row's cells
    lie in consecutive columns from its first, as a weight matrix's do: only the <row> tags and
    each row's first cell are decoded, and every cell's reference text is then checked against
    the one expected, as one 8-byte word per cell.  None when a row tag is not ``<row r="N"``,
    a reference is longer than 7 bytes, or any reference differs (the general decode then
    reads every cell's)."""
    if not len(row_tags) or len(row_tags) * 4 > len(cells) or row_tags[-1] + 16 > len(a):
        return None  # no rows, or rows of a few cells (decoding all costs no more)
    if not (view[row_tags + 1, :7] == _ROW_TAG).all():
        return None
    row_at, ok = _decode_number(view, row_tags + 8)
    if not ok.all():
        return None
    k = np.searchsorted(row_tags, cells) - 1  # the row tag before each cell
    if k[0] < 0:
        return None
    starts = np.r_[True, k[1:] != k[:-1]]
    first = np.flatnonzero(starts)  # each row's first cell
    head = _decode_refs(view, cells[first] + 6)
    if head is None or not (head[0] == row_at[k[first]]).all():
        return None
    group = np.cumsum(starts) - 1
    col = head[1][group] + (np.arange(len(cells)) - first[group])
    if col.max() > 16384:
        return None
    row = row_at[k]
    # The expected text, little-endian in a word: the column's letters (from a table of the
    # columns up to the largest), then the row's digits and the closing quote (one per row).
    letters, nl = _spelt(np.arange(1, col.max() + 1), lambda c: [(c - 1) % 26 + 65, (c - 1) // 26], 3)
    digits, nd = _spelt(row_at, lambda r: [r % 10 + 48, r // 10], 7)
    size = nl[col - 1] + nd[k] + 1
    if size.max() > 8:
        return None
    quoted = digits | (np.uint64(34) << (8 * nd).astype(np.uint64))
    word = letters[col - 1] | (quoted[k] << (8 * nl[col - 1]).astype(np.uint64))
    got = np.ascontiguousarray(view[cells + 6]).view("<u8")[:, 0]
    mask = np.where(size == 8, np.uint64(2**64 - 1), (np.uint64(1) << (8 * size).astype(np.uint64)) - np.uint64(1))
    return (row, col) if ((got & mask) == word).all() else None


def _spelt(x, step, most):
    """(word, length) of the texts of the positive integers x: ``step(x)`` gives the last
    character's code and what is left (0: nothing), at most ``most`` characters; the word holds
    the characters little-endian (first character in the lowest byte)."""
    word = np.zeros(len(x), np.uint64)
    length = np.zeros(len(x), np.int64)
    left = x.astype(np.int64)
    for _ in range(most):
        here = left > 0
        code, rest = step(left)
        # the new character goes first: shift what is spelt so far up one byte
        word = np.where(here, (word << np.uint64(8)) | code.astype(np.uint64), word)
        length += here
        left = np.where(here, rest, 0)
    return word, length


def _places(X, going, width, base, zero):
    """The numbers spelt in the rows of X (bytes as int16), in the first going.sum(1) <= width
    columns (``going`` marks that prefix): digits (base 10, zero '0') or column letters (base 26,
    zero '@').  Each row read as ``width`` places, the unused ones 0, then divided down: one
    integer matrix-vector product instead of a pass per place."""
    places = X[:, :width] - np.int16(zero)
    places *= going[:, :width]
    # float64 through BLAS: every value is an integer below 2^53, and the division is exact
    powers = np.float64(base) ** np.arange(width, -1, -1)  # base^width ... base^0
    return ((places.astype(np.float64) @ powers[1:]) / powers[going[:, :width].sum(1)]).astype(np.int64)


# A formula cell as XlsxWriter writes it: optional style, plain <f>, optional numeric <v>.
_FCELL = re.compile(rb'<c r="([A-Z]{1,3})([0-9]{1,7})"(?: s="[0-9]+")?><f>([^<]*)</f>'
                    rb'(?:<v>([-+.0-9Ee]*)</v>)?</c>')
# A copy of a shared formula as Excel and xlcnn write it: the master's index, no text.
_SCELL = re.compile(rb'<c r="([A-Z]{1,3})([0-9]{1,7})"(?: s="[0-9]+")?><f t="shared" si="([0-9]{1,9})"/>'
                    rb'(?:<v>([-+.0-9Ee]*)</v>)?</c>')


def _formula_cells(chunk, cells):
    """Take the plain formula cells and the shared formulas' copies out of ``chunk`` in bulk;
    returns the rest of the XML."""
    if b"<f>" in chunk:
        parts = _FCELL.split(chunk)
        n = (len(parts) - 1) // 5
        if n:
            rows, cols, cached = _positions_and_cached(parts[1::5], parts[2::5], parts[4::5])
            texts = parts[3::5]
            escaped = b"&" in chunk or b"_x" in chunk or not chunk.isascii()  # the chunk holds the texts
            if escaped:
                blob = b"".join(texts)
                escaped = b"&" in blob or b"_x" in blob or not blob.isascii()
            texts = [_text(t) for t in texts] if escaped else [t.decode() for t in texts]
            cells.formulas.append((rows.tolist(), cols.tolist(), texts, cached))
            chunk = b"".join(parts[0::5])
    if b'<f t="shared" si="' in chunk:
        parts = _SCELL.split(chunk)
        n = (len(parts) - 1) // 5
        if n:
            rows, cols, cached = _positions_and_cached(parts[1::5], parts[2::5], parts[4::5])
            si = np.fromstring(b" ".join(parts[3::5]), dtype=np.int64, sep=" ")
            cells.copies.append((rows, cols, si, cached))
            chunk = b"".join(parts[0::5])
    return chunk


def _positions_and_cached(letters, digits, vs):
    """(rows, cols) int64 arrays, 0-based, and the cached values (a float64 array, or a list
    when some is missing or not a plain number) of cells cut by _FCELL or _SCELL."""
    n = len(letters)
    col_of = dict.fromkeys(letters)
    for x in col_of:
        col_of[x] = col_index(x.decode())
    cols = np.fromiter(map(col_of.__getitem__, letters), np.int64, n)
    rows = np.fromstring(b" ".join(digits), dtype=np.int64, sep=" ") - 1
    if None in vs or b"" in vs:
        cached = [_value("n", v, b"", ()) for v in vs]
    else:
        cached = _decimals(b"\n".join(vs), n)
        if cached is None:
            cached = np.fromstring(b" ".join(vs), sep=" ")
        if len(cached) != n:
            cached = [_value("n", v, b"", ()) for v in vs]
    return rows, cols, cached


def _scan_fast(chunks, cells):
    """Read the sheet's chunks (whole rows) the bulk ways; False if it has no <sheetData> in
    the plain namespace or some <c> element escaped the patterns."""
    for k, chunk in enumerate(chunks):
        if k == 0 and b"<sheetData" not in chunk:
            return False
        block = _numeric_block(chunk)
        if block is not None:
            cells.num.append(block)
            continue
        for part, plain in _plain_runs(chunk):
            block = _numeric_block(part) if plain else None
            if block is not None:
                cells.num.append(block)
            elif not _scan_regex(part, cells):
                return False
    return True


def _row_chunks(pieces):
    """The bytes of ``pieces`` (a sheet's XML as it is inflated) cut at </row> about every
    _CHUNK bytes; the first chunk holds at least the first _CHUNK bytes (the sheet's head)."""
    buf = b""
    for piece in pieces:
        buf = buf + piece if buf else piece
        start = 0
        while True:
            end = buf.find(b"</row>", start + _CHUNK)
            if end < 0:
                break
            yield buf[start:end + 6]
            start = end + 6
        buf = buf[start:] if start else buf
    if buf:
        yield buf


_TYPED = (b' t="', b"<f", b"<is")  # cells the number-block path does not read
_WORD_BYTES = frozenset(b"0123456789_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _typed_at(chunk):
    """Offsets of the _TYPED marks in ``chunk``, in order: ' t="', and '<f' and '<is' ending a
    word (a tag <f>, <f t=...>, <is>), each found by bytes.find (they are few; a regex would
    step through every byte of a weight sheet's first chunk)."""
    out = []
    for mark in _TYPED:
        at = chunk.find(mark)
        while at >= 0:
            end = at + len(mark)
            if mark[0] == 32 or end >= len(chunk) or chunk[end] not in _WORD_BYTES:
                out.append(at)
            at = chunk.find(mark, end)
    return sorted(out)


def _plain_runs(chunk):
    """``chunk`` cut at row boundaries into [(bytes, plain)]: runs of rows holding only plain
    numbers (the body of a weight sheet) apart from the rows around them with text, formulas or
    inline strings (its title and labels), so the body still goes the bulk way.  One run,
    not plain, when such rows are more than a few."""
    typed = chunk.count(b' t="') + chunk.count(b"<f") + chunk.count(b"<is")
    if typed == 0 or typed * 20 > chunk.count(b"<c "):
        return [(chunk, False)]
    spans = []  # byte spans of the rows holding a typed cell, merged
    for at in _typed_at(chunk):
        if spans and at < spans[-1][1]:
            continue
        lo = chunk.rfind(b"<row", 0, at)
        hi = chunk.find(b"</row>", at)
        lo, hi = max(lo, 0), (len(chunk) if hi < 0 else hi + 6)
        if spans and lo <= spans[-1][1]:
            spans[-1] = (spans[-1][0], hi)
        else:
            spans.append((lo, hi))
    out, at = [], 0
    for lo, hi in spans:
        if lo > at:
            out.append((chunk[at:lo], True))
        out.append((chunk[lo:hi], False))
        at = hi
    if at < len(chunk):
        out.append((chunk[at:], True))
    return out


def _scan_regex(chunk, cells):
    """Cut one chunk with _CELL; False if some <c> element escaped the pattern."""
    chunk = _formula_cells(chunk, cells)
    parts = _CELL.split(chunk)
    n = (len(parts) - 1) // 7
    if n != chunk.count(b"<c ") + chunk.count(b"<c>"):
        return False
    if n == 0:
        return True
    cols, rows, ts, fs, vs, rests = (parts[k::7] for k in range(1, 7))
    special = sorted(set(_indices_not_in(ts, _NUMERIC_T)) | set(_indices_not_in(fs, {None}))
                     | set(_indices_not_in(rests, _NO_REST)))
    keep = np.ones(n, bool)
    keep[special] = False
    if not set(vs).isdisjoint((None, b"")):  # empty (style-only) cells
        keep &= np.fromiter(map(bool, vs), bool, n)
    letter_ids = dict.fromkeys(cols)
    for letters in letter_ids:
        letter_ids[letters] = col_index(letters.decode())
    col = np.fromiter(map(letter_ids.__getitem__, cols), np.int64, n)
    row = np.fromstring(b" ".join(rows), dtype=np.int64, sep=" ") - 1
    kept = vs if keep.all() else list(itertools.compress(vs, keep.tolist()))
    vals = _decimals(b"\n".join(kept), len(kept))
    if vals is None:
        vals = np.fromiter(map(float, kept), np.float64, len(kept))
    cells.num.append((row[keep], col[keep], vals))
    for i in special:
        f = fs[i]
        v = vs[i]
        cells.special.append((int(row[i]), int(col[i]), (ts[i] or b"n").decode(),
                              None if f is None else f.decode("utf-8"),
                              v, rests[i] or b""))
    return True


def _scan_slow(data, cells):
    """ElementTree fallback for sheets the fast pattern does not fit (slower, any layout)."""
    rows, cols, vals = [], [], []
    for _, el in ET.iterparse(io.BytesIO(_number_cells(data)), events=("end",)):
        if _local(el.tag) != "c":
            continue
        m = re.fullmatch(r"([A-Z]{1,3})([0-9]{1,7})", el.get("r", ""))
        if m is None:
            raise WorkbookError(f"cell reference {el.get('r')!r} is not an A1 reference")
        row, col = int(m.group(2)) - 1, col_index(m.group(1))
        t = el.get("t", "n")
        f = v = None
        rest = b""
        for child in el:
            tag = _local(child.tag)
            if tag == "f":  # rebuilt as the fast path would have captured it
                attrs = "".join(f' {_local(k)}="{html.escape(x)}"' for k, x in child.attrib.items())
                f = f"<f{attrs}>{html.escape(child.text or '', quote=False)}</f>"
            elif tag == "v":  # re-escaped: _interpret decodes entities as for the fast path
                v = html.escape(child.text or "", quote=False).encode()
            elif tag == "is":
                text = "".join(x.text or "" for x in child.iter() if _local(x.tag) == "t")
                rest = b"<is><t>" + html.escape(text, quote=False).encode() + b"</t></is>"
        if t == "n" and f is None and not rest:
            if v:
                rows.append(row)
                cols.append(col)
                vals.append(float(v))
        else:
            cells.special.append((row, col, t, f, v, rest))
        el.clear()
    cells.num.append((np.array(rows, np.int64), np.array(cols, np.int64), np.array(vals, float)))


_ROW_OR_CELL = re.compile(rb"<(?:\w+:)?(row|c)\b([^>]*?)/?>")
_R_ATTR = re.compile(rb'\br="([^"]*)"')


def _number_cells(data):
    """Give every <c> without an r attribute its A1 position (the attribute is optional in the
    format: a row without r follows the previous row, a cell without r the previous cell)."""
    out = []
    row = col = pos = 0
    for m in _ROW_OR_CELL.finditer(data):
        r = _R_ATTR.search(m.group(2))
        if m.group(1) == b"row":
            row = int(r.group(1)) if r else row + 1
            col = 0
        elif r:
            col = col_index(re.match(rb"[A-Z]+", r.group(1)).group().decode()) + 1
        else:
            col += 1
            out += [data[pos:m.start(2)], b' r="%s%d"' % (col_letters(col - 1).encode(), row)]
            pos = m.start(2)
    out.append(data[pos:])
    return b"".join(out)


def _parse_sheet(data):
    """The cells of one sheet's XML: bytes, or an iterator of its pieces as they are inflated
    (a big sheet is read while the rest of it is still being inflated)."""
    seen = []
    pieces = iter([data]) if isinstance(data, bytes) else data
    cells = _Cells()
    if not _scan_fast(_row_chunks(seen.append(p) or p for p in pieces), cells):
        cells = _Cells()
        _scan_slow(b"".join(seen + list(pieces)), cells)
    return cells


# --------------------------------------------------------------------------- interpretation

def _value(t, v, rest, strings):
    """A cell's value from its type attribute and <v>/<is> content."""
    if t == "inlineStr" or (rest and b"<is" in rest):
        return _text(b"".join(m.group(1) or b"" for m in _INLINE_T.finditer(rest)))
    if v is None and rest:
        m = _V_ANY.search(rest)  # <v xml:space="preserve">...</v>
        v = m.group(1) if m else None
    if v is None:
        return None
    if t == "s":
        try:
            return strings[int(v)]
        except (ValueError, IndexError):
            raise WorkbookError(f"shared string index {v!r} out of range") from None
    if t == "b":
        return v.strip() in (b"1", b"true")
    if t in ("str", "e", "d"):
        return _text(v)
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        return _text(v)


def _interpret(book, sheet, cells, strings):
    num = [x for x in cells.num if len(x[0])]
    if num:
        book._num[sheet] = tuple(np.concatenate(a) for a in zip(*num))
    else:
        book._num[sheet] = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    other = book._other[sheet] = {}
    errors = book._errors[sheet] = set()
    frows, fcols, ftexts = [], [], []
    values = []  # cached values: float64 arrays or lists, one per part, in formula order
    special_cached = {}      # (row, col) -> cached value of the cells written with an <f> element
    masters = {}   # si -> index in ftexts of the shared formula's master (the cell with its text)
    loose = []     # (row, col, si, cached) of shared formulas' copies the bulk pattern missed
    for row, col, t, f, v, rest in cells.special:
        value = _value(t, v, rest, strings)
        if f is None:
            if value is not None:
                other[(row, col)] = value
                if t == "e":
                    errors.add((row, col))
            continue
        head, _, body = f.partition(">")
        attrs = dict(_ATTR.findall(head)) if len(head) > 2 else {}
        text = None if head.endswith("/") else _text(body[:-4].encode("utf-8"))
        special_cached[(row, col)] = value
        if attrs.get("t") == "shared" and "si" in attrs:
            if not attrs["si"].isdigit():
                raise FormulaError(f"shared formula index si={attrs['si']!r} is not a number",
                                   cell_name(sheet, row, col))
            if not text:
                loose.append((row, col, int(attrs["si"]), value))
                continue
            masters[int(attrs["si"])] = len(ftexts)
        if not text:
            raise FormulaError("formula element without text", cell_name(sheet, row, col))
        frows.append(row)
        fcols.append(col)
        ftexts.append(text)
    values.append([special_cached[rc] for rc in zip(frows, fcols)])
    for rows, cols, texts, cached in cells.formulas:
        frows += rows
        fcols += cols
        ftexts += texts
        values.append(cached)
    ftexts = _with_names(book, sheet, ftexts)
    copies = cells.copies
    if loose:
        r, c, si, cached = zip(*loose)
        copies = copies + [(np.array(r, np.int64), np.array(c, np.int64), np.array(si, np.int64), list(cached))]
    if copies:
        ftexts = _copies(sheet, copies, masters, frows, fcols, ftexts, values)
    book._fcells[sheet] = (frows, fcols, ftexts)
    book._fcached[sheet] = _cached_arrays(values)
    # Constants and formulas beyond Excel's grid mean a malformed file, not a big sheet.
    rows, cols, _ = book._num[sheet]
    if len(rows) and (rows.max() >= MAX_ROWS or cols.max() >= MAX_COLS or rows.min() < 0):
        raise WorkbookError(f"sheet {sheet!r} has a cell outside the {MAX_ROWS}x{MAX_COLS} grid")


def _copies(sheet, copies, masters, frows, fcols, ftexts, values):
    """Append the shared formulas' copies to the formula cells, grouped by master (frows, fcols
    and values grow in place); returns the texts as a :class:`_Texts` that makes a copy's text
    from its master's only when it is asked for."""
    rows = np.concatenate([c[0] for c in copies])
    cols = np.concatenate([c[1] for c in copies])
    si = np.concatenate([c[2] for c in copies])
    order = np.argsort(si, kind="stable")
    if all(isinstance(c[3], np.ndarray) for c in copies):
        cached = np.concatenate([c[3] for c in copies])[order]
    else:
        flat = [v for c in copies for v in (c[3].tolist() if isinstance(c[3], np.ndarray) else c[3])]
        cached = [flat[i] for i in order.tolist()]
    si, rows, cols = si[order], rows[order], cols[order]
    cuts = np.flatnonzero(np.diff(si)) + 1
    starts = np.concatenate([[0], cuts]).tolist()
    stops = np.concatenate([cuts, [len(si)]]).tolist()
    base = len(frows)
    groups = []
    for a, b in zip(starts, stops):
        m = masters.get(int(si[a]))
        if m is None:
            raise FormulaError(f"shared formula si={int(si[a])} has no master",
                               cell_name(sheet, int(rows[a]), int(cols[a])))
        groups.append((base + a, base + b, ftexts[m], frows[m], fcols[m]))
    frows += rows.tolist()
    fcols += cols.tolist()
    values.append(cached)
    return _Texts(ftexts, groups, frows, fcols)


class _Texts(Sequence):
    """The formula texts of one sheet: those written out, then the copies of shared formulas,
    each made from its master's text (shifted as Excel copies a formula) only when asked for.
    ``groups``: (start, stop, master text, master row, master col) of each master's copies."""

    def __init__(self, written, groups, rows, cols):
        self.written, self.groups = written, groups
        self._rows, self._cols = rows, cols
        self._starts = [g[0] for g in groups]
        self._shift = {}

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i < len(self.written):
            return self.written[i]
        g = bisect.bisect_right(self._starts, i) - 1
        shift = self._shift.get(g)
        if shift is None:
            shift = self._shift[g] = shifter(self.groups[g][2])
        _, _, _, mrow, mcol = self.groups[g]
        return shift(self._rows[i] - mrow, self._cols[i] - mcol)

    def lengths(self):
        """int64 array of every text's length, the copies' worked out from their references
        (what len() of each would give, without making the texts): a copy differs from its
        master only in how many digits and letters its moved references take."""
        out = [np.fromiter(map(len, self.written), np.int64, len(self.written))]
        for start, stop, text, mrow, mcol in self.groups:
            dr = np.asarray(self._rows[start:stop], np.int64) - mrow
            dc = np.asarray(self._cols[start:stop], np.int64) - mcol
            if not copies_on_grid(text, dr, dc):
                out.append(np.array([len(self[i]) for i in range(start, stop)], np.int64))  # #REF!
                continue
            row, col, row_moves, col_moves, length = master_refs(text)
            rr, cc = row[row_moves] + 1, col[col_moves]
            fixed = length - ref_digits(rr).sum() - ref_letters(cc).sum()
            udr, ir = np.unique(dr, return_inverse=True)  # a few distinct offsets: a map's rows
            udc, ic = np.unique(dc, return_inverse=True)
            by_row = ref_digits(rr[None] + udr[:, None]).sum(1)
            by_col = ref_letters(cc[None] + udc[:, None]).sum(1)
            out.append(fixed + by_row[ir.ravel()] + by_col[ic.ravel()])
        return np.concatenate(out)




def _cached_arrays(parts):
    """(float64 values, {index: non-number}) from parts that are float64 arrays (all numbers)
    or lists of cached values of any kind."""
    values, others, at = [], {}, 0
    for part in parts:
        if isinstance(part, np.ndarray):
            values.append(part)
        else:
            column = np.full(len(part), np.nan)
            for i, v in enumerate(part):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    column[i] = v
                else:
                    others[at + i] = v
            values.append(column)
        at += len(part)
    return (np.concatenate(values) if values else np.zeros(0)), others


# --------------------------------------------------------------------------- defined names

def _defined_names(root, order):
    """{(sheet or None, name): definition} from workbook.xml's <definedNames>; ``order`` lists
    the sheet names in <sheets> order, which a name's localSheetId counts."""
    found = {}
    for el in root.iter():
        if _local(el.tag) != "definedName" or not el.get("name"):
            continue
        local = el.get("localSheetId")
        try:
            scope = None if local is None else order[int(local)]
        except (ValueError, IndexError):
            continue  # a scope that names no sheet: the name is unusable
        found[(scope, el.get("name"))] = (el.text or "").strip().removeprefix("=")
    return found


def _with_names(book, sheet, texts):
    """Formula texts with the defined names in scope on ``sheet`` put in (resolve_names).

    Only a formula that holds a name's letters, case aside, can change, so only those go through
    resolve_names.  When the texts and names are ASCII (lower-casing keeps every offset) that
    test runs on the sheet's texts joined and lower-cased once, with str.find per name; otherwise
    one case-insensitive regular expression per formula (the same set of formulas either way)."""
    if not book.defined_names:
        return texts
    names = {n.lower(): t for (scope, n), t in book.defined_names.items() if scope is None}
    names.update({n.lower(): t for (scope, n), t in book.defined_names.items() if scope == sheet})
    if not names or not texts:
        return texts
    hits = _name_candidates(texts, names)
    if hits is None:
        candidate = re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)), re.I)
        return [resolve_names(t, names) if candidate.search(t) else t for t in texts]
    out = list(texts)
    for i in hits:
        out[i] = resolve_names(texts[i], names)
    return out


def _name_candidates(texts, names):
    """Sorted indices of the texts containing some name of ``names`` (lower-case), case aside;
    None when a text or name is not ASCII (then lower-casing may move offsets, and a regular
    expression's case folding matches more than ASCII letters)."""
    blob = "\n".join(texts)
    if not blob.isascii() or not all(n.isascii() and n for n in names):
        return None
    starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])  # offset of each text in blob
    # A name with a character that has no case ('_', a digit, '.') can only be in the texts
    # holding that character: when every name has one, only those texts are lower-cased.
    marks = {next((c for c in n if c.lower() == c.upper()), None) for n in names}
    if None not in marks:
        some = set()
        for mark in marks:
            at = blob.find(mark)
            while at >= 0:
                i = int(np.searchsorted(starts, at, side="right")) - 1
                some.add(i)
                at = blob.find(mark, int(starts[i]) + len(texts[i]))
        some = sorted(some)
        if len(some) < len(texts):
            return [some[i] for i in _name_candidates([texts[i] for i in some], names)] if some else []
    low = blob.lower()
    found = set()
    for name in names:
        at = low.find(name)
        while at >= 0:
            i = int(np.searchsorted(starts, at, side="right")) - 1
            end = int(starts[i]) + len(texts[i])
            if at + len(name) <= end:  # within text i, not across the join: on to the next text
                found.add(i)
                at = low.find(name, end + 1)
            else:
                at = low.find(name, at + 1)
    return sorted(found)


# --------------------------------------------------------------------------- entry point

def read_workbook(path, *, max_total_size=DEFAULT_MAX_TOTAL, max_ratio=DEFAULT_MAX_RATIO,
                  ratio_min_size=DEFAULT_RATIO_MIN_SIZE):
    """Read every sheet of the .xlsx at ``path`` into a :class:`Book`.

    Raises :class:`WorkbookError` (a ValueError) for a file that is not a zip, a zip whose
    declared sizes exceed ``max_total_size`` in all or whose member expands more than
    ``max_ratio``:1 to more than ``ratio_min_size`` bytes, or a workbook without sheets."""
    with _open_zip(path, max_total_size, max_ratio, ratio_min_size) as zf:
        office = [t for typ, t in _rels(zf, "").values() if typ.endswith("/officeDocument")]
        wb_part = office[0] if office else "xl/workbook.xml"
        if wb_part not in zf.NameToInfo:
            raise WorkbookError(f"{path}: no workbook part ({wb_part}) in the zip")
        rels = _rels(zf, wb_part)
        names, parts, order = [], [], []
        root = ET.fromstring(_read_member(zf, wb_part))
        for el in root.iter():
            if _local(el.tag) != "sheet":
                continue
            order.append(el.get("name"))
            rid = next((x for k, x in el.attrib.items() if _local(k) == "id"), None)
            if rid in rels and rels[rid][1] in zf.NameToInfo:
                names.append(el.get("name"))
                parts.append(rels[rid][1])
        kept = [(n, p) for n, p in zip(names, parts) if "chartsheet" not in p]  # charts: no cells
        if not kept:
            raise WorkbookError(f"{path}: the workbook has no worksheets")
        sst = next((t for typ, t in rels.values() if typ.endswith("/sharedStrings")),
                   "xl/sharedStrings.xml")
        strings = _shared_strings(zf, sst)
        book = Book(path, [n for n, _ in kept])
        book.defined_names = _defined_names(root, order)
        with closing(_members_ahead(zf, [p for _, p in kept])) as members:  # worker done before zf closes
            for (name, _), data in zip(kept, members):
                try:
                    _interpret(book, name, _parse_sheet(data), strings)
                except WorkbookError:
                    raise
                except ValueError as e:  # a cell's text that is not what its type says (float() of 'abc')
                    raise WorkbookError(f"sheet {name!r}: a cell's value does not read as its type says "
                                        f"({e})") from None
    return book


def _members_ahead(zf, parts, ahead=2):
    """The members ``parts`` of ``zf`` in order, each inflated by a worker thread while the one
    before is parsed (zlib lets go of the GIL), at most ``ahead`` of them waiting in memory: as
    bytes, or, for a member of _STREAM_MIN bytes or more (a weight sheet), as an iterator of its
    pieces, each given as soon as it is inflated.  Only the worker reads the zip meanwhile."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        def submit(part):
            if zf.getinfo(part).file_size < _STREAM_MIN:
                return pool.submit(_read_member, zf, part)
            q = queue.SimpleQueue()
            pool.submit(_inflate_into, zf, part, q)
            return q

        waiting = deque(submit(p) for p in parts[:ahead])
        for i in range(len(parts)):
            got = waiting.popleft()
            if i + ahead < len(parts):
                waiting.append(submit(parts[i + ahead]))
            yield got.result() if isinstance(got, Future) else _drained(got)


_STREAM_MIN = 3 * _CHUNK
_PIECE = _CHUNK


def _inflate_into(zf, name, q):
    """Put member ``name`` into the queue ``q`` piece by piece as it inflates, then None (or
    the error that stopped it)."""
    info = zf.getinfo(name)
    try:
        total = 0
        with zf.open(info) as f:
            while piece := f.read(_PIECE):
                total += len(piece)
                if total > info.file_size:
                    raise WorkbookError(f"member {name} inflates beyond its declared size")
                q.put(piece)
        q.put(None)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        q.put(WorkbookError(f"member {name} is corrupt ({e})"))
    except BaseException as e:  # noqa: BLE001 - handed to the reading thread, which raises it
        q.put(e)


def _drained(q):
    while (piece := q.get()) is not None:
        if isinstance(piece, BaseException):
            raise piece
        yield piece
