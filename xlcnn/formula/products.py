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
    batch = max(cx.V[t].shape[0] for side in sides for t, *_ in side)
    width = sum(h * w for _, _, _, h, w in sides[0])
    rows = max(len(sides[0][0][1]), len(sides[1][0][1]))
    step = max(1, _DOT_CHUNK // max(1, rows * width))
    outs = []
    for b0 in range(0, batch, step):
        a = _side_values(sides[0], cx, b0, b0 + step)
        b = _side_values(sides[1], cx, b0, b0 + step)
        if a is None or b is None:
            return None
        if product:
            outs.append(_matmul(a, b)[:, inv[0], inv[1]])
        else:
            outs.append(_dot(a, b))
        if a.shape[0] == 1 and b.shape[0] == 1:
            break  # nothing varies over the batch
    return outs[0] if len(outs) == 1 else np.concatenate(outs)


def _matmul(a, b):
    """(Ba, Pa, K) x (Bb, Pb, K) -> (B, Pa, Pb), one BLAS call when one side is shared."""
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


def _side_values(side, cx, b0, b1):
    """(batch, windows, K) values read by one side of a Dot (batch slice b0:b1, or 1 when
    nothing read varies over the batch); None when a read holds text or a boolean."""
    parts = []
    for t, top, left, h, w in side:
        V, M = cx.V[t], cx.M[t]
        V = V[b0:b1] if V.shape[0] > 1 else V
        ri = (top[:, None] + np.arange(h)).reshape(-1, h, 1)
        ci = (left[:, None] + np.arange(w)).reshape(-1, 1, w)
        vals = V[:, ri, ci]
        r0, c0 = int(top.min()), int(left.min())
        if not M[r0:int(top.max()) + h, c0:int(left.max()) + w].all():
            off = ~M[ri, ci]  # empty cells read as 0 and are 0; text and booleans are not
            if (vals[:, off] != 0).any():
                return None
        parts.append(vals.reshape(vals.shape[0], len(top), h * w))
    if len(parts) > 1 and len({p.shape[0] for p in parts}) > 1:
        size = max(p.shape[0] for p in parts)
        parts = [np.broadcast_to(p, (size,) + p.shape[1:]) for p in parts]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
