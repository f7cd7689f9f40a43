"""Group formula cells that are the same formula up to the letters and digits of their cell
references (the same R1C1 shape, or the same shape with other absolute references), without
tokenizing each cell.

Formulas of equal byte length whose text is equal once digits and capital letters are deleted
are stacked into one uint8 matrix (cells, length), C speed end to end.  One representative is
tokenized; the byte columns where any cell differs from it must all lie inside its references'
letters or digits (else the group is split by that rule, cell by cell against each new
representative).  The references' rows and columns then come out of the matrix with a handful
of NumPy operations, whatever the number of cells or of references per formula (a convolution
over 64 input channels has 256 references per cell).
"""

import functools

import numpy as np

from .parser import MAX_COLS, MAX_ROWS, SPLIT, STRIDE, col_index, split_formula

_DELETE = bytes(range(48, 58)) + bytes(range(65, 91))  # digits and A-Z: what may vary in a ref
_CHUNK_BYTES = 32 << 20                                # bound on one stacked matrix


def skeleton(text):
    """A formula's split pieces with its references' letters and digits blanked: the key of
    its group, and what :func:`xlcnn.formula.parser.parse` reads."""
    parts = split_formula(text)
    n = len(parts[3::STRIDE])
    if n:
        parts[3::STRIDE] = parts[5::STRIDE] = [None] * n
    return tuple(parts)


def shifted_refs(text, drow, dcol):
    """(rows, cols) int32 (n, k), 0-based, of the k references of ``text`` in n copies of it
    moved by (drow[i], dcol[i]), as Excel copies a formula (the copies of a shared formula):
    relative rows and columns move, $-absolute ones stay; in the order of the references in
    :func:`group_formulas`, under the key ``skeleton(text)``.  None when a copy's reference
    leaves the grid (Excel writes #REF! there)."""
    row, col, row_moves, col_moves, _ = master_refs(text)
    drow = np.asarray(drow, np.int64)
    dcol = np.asarray(dcol, np.int64)
    if not copies_on_grid(text, drow, dcol):
        return None
    rows = np.repeat(row[None].astype(np.int32), len(drow), axis=0)
    cols = np.repeat(col[None].astype(np.int32), len(dcol), axis=0)
    rows[:, row_moves] += drow.astype(np.int32)[:, None]
    cols[:, col_moves] += dcol.astype(np.int32)[:, None]
    return rows, cols


def copies_on_grid(text, drow, dcol):
    """Whether every reference of ``text`` stays on the grid in copies moved by drow, dcol."""
    row, col, row_moves, col_moves, _ = master_refs(text)
    return _on_grid(row[row_moves], drow, MAX_ROWS) and _on_grid(col[col_moves], dcol, MAX_COLS)


def _on_grid(at, moves, limit):
    return not len(at) or not len(moves) or (at.min() + moves.min() >= 0 and at.max() + moves.max() < limit)


@functools.lru_cache(maxsize=4096)  # a workbook's masters, read by compile and lint
def master_refs(text):
    """(rows, cols, row moves, col moves, length) of the references of ``text``, in order:
    0-based int64 rows and columns, whether each row and column is relative (moves in a copy),
    and the length of ``text`` with every reference spelt as a copy spells it (parser.shifter:
    no leading zeros)."""
    parts = split_formula(text)
    refs = [(parts[k + 2], col_index(parts[k + 3]), parts[k + 4], int(parts[k + 5]) - 1,
             len(parts[k + 3]) + len(parts[k + 5]))
            for k in range(0, len(parts) - 1, STRIDE) if parts[k + 1] is None]
    if not refs:
        z = np.zeros(0, np.int64)
        return z, z, z.astype(bool), z.astype(bool), len(text)
    cdol, col, rdol, row, spelt = zip(*refs)
    row, col = np.array(row, np.int64), np.array(col, np.int64)
    length = len(text) - sum(spelt) + int(ref_digits(row + 1).sum() + ref_letters(col).sum())
    return row, col, np.array(rdol) != "$", np.array(cdol) != "$", length


_TENS = 10 ** np.arange(1, 8)
_LETTER_EDGES = np.array([26, 26 + 26 ** 2])


def ref_digits(n):
    """Digits of each positive integer of n (a reference's row, 1-based)."""
    return np.searchsorted(_TENS, n, side="right") + 1


def ref_letters(c):
    """Letters of each 0-based column index of c."""
    return np.searchsorted(_LETTER_EDGES, c, side="right") + 1


def _ref_spans(text, encoded):
    """Byte spans (letters start, end, digits start, end) of every cell reference of ``text``."""
    spans = [(m.start(3), m.end(3), m.start(5), m.end(5)) for m in SPLIT.finditer(text)
             if m.group(3) is not None]
    if len(encoded) != len(text):  # non-ASCII text (a sheet name): character -> byte offsets
        spans = [tuple(len(text[:p].encode()) for p in s) for s in spans]
    return spans


def _decode(M, starts, ends, base, zero):
    """Numbers spelt in byte columns [starts[k], ends[k]) of every row of M: digits (base 10,
    zero '0') or column letters (base 26, zero '@' so that 'A' is 1).  Returns (rows, refs)
    int32 (a reference has at most 7 digits and 3 letters: SPLIT's pattern), by Horner's rule
    over the digit positions: one gathered (rows, refs) column set per position, at most 7."""
    width = ends - starts
    out = np.zeros((len(M), len(starts)), np.int32)
    for j in range(int(width.max()) if len(width) else 0):
        live = width > j
        d = M[:, np.where(live, starts + j, starts)].astype(np.int32)
        d -= zero
        if live.all():
            out *= base
            out += d
        else:
            out = np.where(live, out * base + d, out)
    return out


def _numbers(M, spans, rep, varies):
    """(rows, cols) (cells, refs) int32, 0-based, of the references of the rows of M; ``varies``
    marks the byte columns where some row differs from ``rep``."""
    n, k = len(M), len(spans)
    if k == 0:
        z = np.zeros((n, 0), np.int32)
        return z, z
    sp = np.array(spans, np.int64)
    cum = np.concatenate([[0], np.cumsum(varies)])
    out = []
    for a, b, base, zero in ((0, 1, 26, 64), (2, 3, 10, 48)):
        starts, ends = sp[:, a], sp[:, b]
        moving = cum[ends] > cum[starts]
        whole = _decode(rep[None], starts, ends, base, zero)[0] - 1
        arr = np.repeat(whole[None], n, axis=0)
        if moving.any():
            arr[:, moving] = _decode(M, starts[moving], ends[moving], base, zero) - 1
        out.append(arr)
    cols, rows = out
    return rows, cols


def _split_matrix(A, texts, idx, out):
    """Split the stacked formulas A (rows are texts[idx]) into same-skeleton sets.  The rows
    that do not share the first row's skeleton are partitioned by their bytes outside its
    references (where sheet names and functions differ) before the next representative is
    tried, so a hundred per-channel skeletons cost about one pass over A, not a hundred."""
    work = [np.arange(len(idx))]
    while work:
        remaining = work.pop()
        r0 = int(remaining[0])
        text = texts[idx[r0]]
        rep = A[r0]
        spans = _ref_spans(text, rep.tobytes())
        L = A.shape[1]
        kind = np.zeros(L, np.int8)  # 0 other, 1 letter of a ref, 2 digit of a ref
        for a, b, c, d in spans:
            kind[a:b] = 1
            kind[c:d] = 2
        sub = A if remaining.size == len(A) else A[remaining]
        moved = _moving(sub, rep)
        outside = moved & (kind == 0)  # bytes outside references that differ somewhere
        if not outside.any():
            ok = np.ones(len(sub), bool)
        else:
            ok = ~(sub[:, outside] != rep[outside]).any(1)
        for k, lo, hi in ((1, 65, 90), (2, 48, 57)):
            cols = moved & (kind == k)
            if cols.any():
                part = sub[:, cols]
                ok &= ((part >= lo) & (part <= hi)).all(1)
        members = remaining[ok]
        M = sub[ok] if not ok.all() else sub
        rows, cols = _numbers(M, spans, rep, moved if ok.all() else _moving(M, rep))
        out.setdefault(skeleton(text), []).append((idx[members], rows, cols))
        if ok.all():
            continue
        rest, left = remaining[~ok], sub[~ok]
        other = np.flatnonzero((kind == 0) & _moving(left, left[0]))
        if not len(other):
            work.append(rest)
            continue
        which = _row_classes(left[:, other])
        order = np.argsort(which, kind="stable")
        work += np.split(rest[order], np.flatnonzero(np.diff(which[order])) + 1)[::-1]


def _moving(X, row):
    """Columns of the uint8 matrix X where some row differs from ``row`` (a row of X or one
    all rows share elsewhere): two reductions, no (rows, bytes) temporary."""
    return (X.min(0) != row) | (X.max(0) != row)


def _row_classes(X):
    """An id per row of the uint8 matrix X, equal exactly for equal rows: rows fingerprinted by
    a random projection, then each checked against its class's first row (np.unique's sort of
    whole rows when a fingerprint is ever shared by different rows)."""
    finger = X @ np.random.default_rng(0).random(X.shape[1])
    _, first, which = np.unique(finger, return_index=True, return_inverse=True)
    which = which.ravel()
    if (X == X[first[which]]).all():
        return which
    _, which = np.unique(X, axis=0, return_inverse=True)
    return which.ravel()


def group_formulas(texts):
    """{skeleton: [(indices into ``texts``, rows (n, k), cols (n, k)), ...]}: formulas equal up
    to the letters and digits of their k references, with those references' 0-based rows and
    columns as int32 arrays (a row has at most 7 digits).  Every formula lands in exactly one set."""
    coarse = {}
    for i, text in enumerate(texts):
        b = text.encode()
        key = (len(b), b.translate(None, _DELETE))
        g = coarse.get(key)
        if g is None:
            coarse[key] = [i]
        else:
            g.append(i)
    out = {}
    for (length, _), members in coarse.items():
        per = max(1, _CHUNK_BYTES // max(length, 1))
        for s in range(0, len(members), per):
            idx = np.asarray(members[s:s + per], np.int64)
            blob = b"".join([texts[i].encode() for i in idx.tolist()])
            A = np.frombuffer(blob, np.uint8).reshape(len(idx), length)
            _split_matrix(A, texts, idx, out)
    return out

def row_ids(K):
    """(index of one row per distinct row, id of each row's distinct row) of an int array
    (n, m).  Rows compare after subtracting the first row (same distinctness) and dropping
    repeated columns, so a key of many columns that move together costs one column."""
    n = len(K)
    D = K - K[0]
    D = D[:, (D != 0).any(0)]
    if D.shape[1] == 0:
        return np.zeros(1, np.int64), np.zeros(n, np.int64)
    if D.shape[1] > 1:  # distinct columns: fingerprint, then check the dropped ones exactly
        finger = np.random.default_rng(0).random(n) @ D
        _, keep, which = np.unique(finger, return_index=True, return_inverse=True)
        same = (D == D[:, keep[which.ravel()]]).all(0)
        D = D[:, np.union1d(keep, np.flatnonzero(~same))]
    code = np.zeros(n, np.int64)
    for col in D.T:
        _, col = np.unique(col, return_inverse=True)
        code = code * (int(col.max()) + 1) + col.ravel()
        if code.max() > (1 << 40):  # keep the mixed-radix code small
            _, code = np.unique(code, return_inverse=True)
            code = code.ravel()
    _, first, inv = np.unique(code, return_index=True, return_inverse=True)
    return first, inv.ravel()
