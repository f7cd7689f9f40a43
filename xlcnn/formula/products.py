"""Sums of two-range SUMPRODUCTs as matrix products: a convolution's cells (window x output
channel) become one BLAS call over the distinct windows each side reads.
"""

from typing import NamedTuple

import numpy as np

from .parser import Binary, Call, Range
from .functions import _dot
from .grouping import row_ids


class Dot(NamedTuple):
    """A sum of two-range SUMPRODUCTs and other terms, ``calls[0] + calls[1] + ... + rest``:
    evaluated as one dot product over the concatenated ranges (one matrix product where the
    cells factor into (first range's position) x (second range's position), as a convolution's
    cells do: window x output channel)."""
    calls: tuple
    rest: tuple


def _terms(node, out):
    if isinstance(node, Binary) and node.op == "+":
        _terms(node.left, out)
        _terms(node.right, out)
    else:
        out.append(node)
    return out


def fuse(ast):
    """``ast`` with a top-level sum of SUMPRODUCT(range, range) terms made a :class:`Dot`."""
    if not (isinstance(ast, Binary) and ast.op == "+") and not isinstance(ast, Call):
        return ast
    terms = _terms(ast, [])
    calls = tuple(t for t in terms if isinstance(t, Call) and t.name == "SUMPRODUCT"
                  and len(t.args) == 2 and all(isinstance(a, Range) for a in t.args))
    if not calls:
        return ast
    return Dot(calls, tuple(t for t in terms if not (isinstance(t, Call) and t in calls)))


_DOT_CHUNK = 1 << 22  # elements of one gathered operand block (32 MB): the batch goes in slices


def run_dot(plan, cx):
    sides, inv, product = plan
    varies = [any(cx.V[t].shape[0] > 1 for t, *_ in side) for side in sides]
    batch = max(cx.V[t].shape[0] for side in sides for t, *_ in side)
    # A side that does not vary over the batch (the weights) is gathered once; the batch goes
    # in slices sized by what the varying side gathers, so a dense layer's weight matrix is
    # neither re-gathered nor multiplied per slice of a few images.
    fixed = [None if v else _fixed_side(side, k, cx) for k, (side, v) in enumerate(zip(sides, varies))]
    if any(not v and f is None for v, f in zip(varies, fixed)):
        return None
    width = sum(h * w for _, _, _, h, w in sides[0])
    rows = max([len(side[0][1]) for side, v in zip(sides, varies) if v] or [1])
    step = max(1, _DOT_CHUNK // max(1, rows * width))
    if not any(varies):
        step = batch = 1  # nothing varies over the batch (a slice of one image does)
    # One buffer per varying side serves every slice's gather (fresh memory for each slice
    # would be paged in again), and the cells' values go into (cells, batch) memory, as the
    # sheets lie.
    buffers = [np.empty(len(side[0][1]) * width * step) if v and batch > step else None
               for side, v in zip(sides, varies)]
    result = None
    for b0 in range(0, batch, step):
        b1 = min(batch, b0 + step)
        a, b = (f if f is not None else _side_values(side, cx, b0, b1, buf)
                for side, f, buf in zip(sides, fixed, buffers))
        if a is None or b is None:
            return None
        got = pick(_matmul(a, b), inv[0], inv[1]) if product else _dot(a, b)
        if b1 - b0 == batch or got.shape[0] != b1 - b0:
            return got  # the whole batch in one slice
        if result is None:
            result = np.empty((got.shape[1], batch)).T
        result[b0:b1] = got
    return result


def _fixed_side(side, k, cx):
    """_side_values of a side that does not vary over the batch.  Kept on the class when every
    sheet it reads is the program's own (read-only: no override, no formula written there this
    run), so a dense layer's weight matrix is gathered once, not on every run."""
    own = cx.sub is None and all(not cx.V[t].flags.writeable and not cx.M[t].flags.writeable
                                 for t, *_ in side)
    key = ("fixed side", k)
    if own and key in cx.cls.gather:
        return cx.cls.gather[key]
    out = _side_values(side, cx, 0, 1)
    if own and out is not None:
        out.flags.writeable = False
        cx.cls.gather[key] = out
    return out


def _lying(x):
    """The (K, P*B) matrix a (B, P, K) operand from _side_values lies in (memory (K, P, B)),
    or None when it is laid out otherwise."""
    t = x.transpose(2, 1, 0)
    return t.reshape(t.shape[0], -1) if t.flags.c_contiguous else None


def _matmul(a, b):
    """(Ba, Pa, K) x (Bb, Pb, K) -> (B, Pa, Pb), one BLAS call when one side is shared.  A
    batched side as _side_values lays it out, (K, windows x batch), is multiplied as it lies:
    one (Pb, K) x (K, Pa*B) product for every window and image at once."""
    if b.shape[0] == 1 and a.shape[0] > 1 and _lying(a) is not None:
        B, P, _ = a.shape
        return (b[0] @ _lying(a)).reshape(-1, P, B).transpose(2, 1, 0)
    if a.shape[0] == 1 and b.shape[0] > 1 and _lying(b) is not None:
        B, P, _ = b.shape
        return (a[0] @ _lying(b)).reshape(-1, P, B).transpose(2, 0, 1)
    if b.shape[0] == 1:
        B, P, K = a.shape
        return (a.reshape(B * P, K) @ b[0].T).reshape(B, P, -1)
    if a.shape[0] == 1:
        B, P, K = b.shape
        return (b.reshape(B * P, K) @ a[0].T).reshape(B, P, -1).transpose(0, 2, 1)
    return a @ b.transpose(0, 2, 1)


def dot_plan(node, cls):
    """How to evaluate a Dot for the whole class: for each side (the first, then the second
    argument of every SUMPRODUCT) the distinct windows it reads and which one each cell uses.
    When (distinct first windows) x (distinct second windows) is not much more than the cells,
    one matrix product gives every cell's value; else the dot is taken cell by cell."""
    shapes = []
    for call in node.calls:
        h1, w1 = cls.ranges[call.args[0].first.slot][:2]
        h2, w2 = cls.ranges[call.args[1].first.slot][:2]
        if (h1, w1) != (h2, w2):
            return False  # #VALUE!: left to SUMPRODUCT itself
        shapes.append((h1, w1))
    n = len(cls.rows)
    sides, inv = [], []
    for k in (0, 1):
        keys, reads = [], []
        for call, (h, w) in zip(node.calls, shapes):
            _, _, jr, jc, _ = cls.ranges[call.args[k].first.slot]
            top, left = cls.slots[jr].row, cls.slots[jc].col
            keys += [np.broadcast_to(top, (n,)), np.broadcast_to(left, (n,))]
            reads.append((cls.slots[call.args[k].first.slot].sheet, h, w))
        key = np.stack(keys, 1)
        first, where = row_ids(key)
        uniq = key[first]
        inv.append(where)
        sides.append([(t, uniq[:, 2 * i], uniq[:, 2 * i + 1], h, w) for i, (t, h, w) in enumerate(reads)])
    product = len(sides[0][0][1]) * len(sides[1][0][1]) <= 4 * n
    if not product:  # each cell's own windows
        sides = [[(t, top[where], left[where], h, w) for t, top, left, h, w in side]
                 for side, where in zip(sides, inv)]
    return sides, inv, product


def _side_values(side, cx, b0, b1, buffer=None):
    """(batch, windows, K) values read by one side of a Dot (batch slice b0:b1, or 1 when
    nothing read varies over the batch); None when a read holds text or a boolean.  The
    gather runs on the sheets' (R, C, batch) memory, so each window cell moves a contiguous
    batch vector straight into its place, and the result lies in memory as (K, windows,
    batch): a (K, windows x batch) matrix for _matmul."""
    reads = []
    for t, top, left, h, w in side:
        V, M = cx.V[t], cx.M[t]
        V = V[b0:b1] if V.shape[0] > 1 else V
        rows = (top + np.arange(h)[:, None])[:, None, :]       # (h, 1, windows)
        cols = (left + np.arange(w)[:, None])[None, :, :]      # (1, w, windows)
        flat = (rows * M.shape[1] + cols).reshape(-1)          # cell (i, j) of window p
        box = M[int(top.min()):int(top.max()) + h, int(left.min()):int(left.max()) + w]
        if b0 == 0 and not box.all():  # window cells holding no number ('same' padding)
            # A cell holding no number holds the same value for every image (empty 0, a text
            # or boolean constant, a text formula's NaN): the first image's tells for all, and
            # the first slice of the batch (b0 0) for every slice.
            other = flat[~M.reshape(-1)[flat]]
            if (V[0][other // M.shape[1], other % M.shape[1]] != 0).any():
                return None  # empty cells read as 0 and are 0; text and booleans are not
        reads.append((V, flat))
    batch = max(V.shape[0] for V, _ in reads)
    windows = len(side[0][1])
    shape = (sum(h * w for *_, h, w in side), windows, batch)
    out = np.empty(shape) if buffer is None else buffer[:np.prod(shape)].reshape(shape)
    k = 0
    for (V, flat), (t, top, left, h, w) in zip(reads, side):
        dst = out[k:k + h * w].reshape(-1, batch)
        k += h * w
        src = V.transpose(1, 2, 0).reshape(-1, V.shape[0])    # (cells, batch): a view
        if src.shape[1] == batch:
            np.take(src, flat, axis=0, out=dst, mode="clip")   # flat is inside the sheet
        else:
            dst[...] = src[flat]
    return out.transpose(2, 1, 0)


def pick(x, i, j):
    """x[:, i, j] of a (B, Pa, Pb) product, moving whole batch vectors when x lies in memory
    as (Pa, Pb, B) or (Pb, Pa, B): (B, len(i)) whose memory is (len(i), B)."""
    B, Pa, Pb = x.shape
    for m, flat in ((x.transpose(1, 2, 0), i * Pb + j), (x.transpose(2, 1, 0), j * Pa + i)):
        if m.flags.c_contiguous:
            return np.take(m.reshape(-1, B), flat, axis=0, mode="clip").T
    return x[:, i, j]
