"""Evaluating one class's AST for all of its cells (or some of them) at once: references
become gathers, ranges gathered blocks, operators and functions NumPy operations.
"""

import numpy as np

from .functions import FUNCTIONS
from .parser import Binary, Bool, Call, Err, Missing, Num, Range, Ref, Str, Unary
from .products import Dot, run_dot, dot_plan
from .schedule import at
from .values import NAN, Rng, is_array, num


class Ctx:
    """One class (or part of it) being evaluated."""
    __slots__ = ("cls", "sub", "V", "M")

    def __init__(self, cls, sub, V, M):
        self.cls, self.sub, self.V, self.M = cls, sub, V, M


def ev(node, cx):
    return _EVAL[type(node)](node, cx)



def _ev_ref(node, cx):
    slot = cx.cls.slots[node.slot]
    r, c = at(slot.row, cx.sub), at(slot.col, cx.sub)
    out = cx.V[slot.sheet][:, r, c]
    return out if out.ndim == 2 else out[:, None]


def _ev_range(node, cx):
    cls = cx.cls
    h, w, jr, jc, _ = cls.ranges[node.first.slot]
    t = cls.slots[node.first.slot].sheet
    top, left = at(cls.slots[jr].row, cx.sub), at(cls.slots[jc].col, cx.sub)
    V, M = cx.V[t], cx.M[t]
    if isinstance(top, int) and isinstance(left, int):
        vals = V[:, top:top + h, left:left + w][:, None]
        mk = M[top:top + h, left:left + w]
        return Rng(vals, None if mk.all() else mk[None])
    index = cls.gather.get(node.first.slot) if cx.sub is None else None
    if index is None:  # gather indices (cells, h, 1) x (cells, 1, w), and their bounding box
        ri = np.add.outer(top, np.arange(h)).reshape(-1, h, 1)
        ci = np.add.outer(left, np.arange(w)).reshape(-1, 1, w)
        index = (ri, ci, slice(ri.min(), ri.max() + 1), slice(ci.min(), ci.max() + 1))
        if cx.sub is None:
            cls.gather[node.first.slot] = index
    ri, ci, box_r, box_c = index
    vals = V[:, ri, ci]
    # Usually every cell read is a number; check the bounding box before gathering a mask.
    if M[box_r, box_c].all():
        return Rng(vals, None)
    return Rng(vals, M[ri, ci])


def _ev_ref_as_range(node, cx):
    """A single reference handed to SUM/MAX/...: a 1x1 range, so empty cells are skipped."""
    slot = cx.cls.slots[node.slot]
    r, c = at(slot.row, cx.sub), at(slot.col, cx.sub)
    vals = cx.V[slot.sheet][:, r, c]
    mk = cx.M[slot.sheet][r, c]
    vals = vals.reshape(vals.shape[0], -1, 1, 1)
    return Rng(vals, None if np.all(mk) else np.reshape(mk, (-1, 1, 1)))


def _ev_unary(node, cx):
    x = ev(node.arg, cx)
    return Rng(-x.vals, None) if is_array(x) else -num(x)



def _array_op(fn, a, b):
    """Element-wise operator on arrays (batch, cells, h, w); scalars broadcast; empty cells
    are 0, text NaN (#VALUE!)."""
    av = a.vals if isinstance(a, Rng) else num(a)
    bv = b.vals if isinstance(b, Rng) else num(b)
    av = av[..., None, None] if isinstance(av, np.ndarray) and not isinstance(a, Rng) else av
    bv = bv[..., None, None] if isinstance(bv, np.ndarray) and not isinstance(b, Rng) else bv
    try:
        out = fn(av, bv)
    except ValueError:  # arrays of different shapes
        return NAN
    if fn in _CMP.values():
        out = np.where(np.isnan(av) | np.isnan(bv), np.nan, out)
    return Rng(np.asarray(out, np.float64), None)


def _text_of(x):
    """Excel's text for a constant in '&' (general number format)."""
    if isinstance(x, str):
        return x
    x = float(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return format(x, ".15g")


def _compare(op, a, b):
    """Comparison of constants where one side is text: numbers < text, text case-insensitive."""
    ka = (1, a.lower()) if isinstance(a, str) else (0, float(a))
    kb = (1, b.lower()) if isinstance(b, str) else (0, float(b))
    if ka[0] != kb[0]:
        ka, kb = (ka[0], 0), (kb[0], 0)
    return np.float64({"=": ka == kb, "<>": ka != kb, "<": ka < kb, ">": ka > kb,
                       "<=": ka <= kb, ">=": ka >= kb}[op])


_ARITH = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "^": np.power}
_CMP = {"=": np.equal, "<>": np.not_equal, "<": np.less, ">": np.greater,
        "<=": np.less_equal, ">=": np.greater_equal}


def _ev_binary(node, cx):
    a = ev(node.left, cx)
    b = ev(node.right, cx)
    op = node.op
    if is_array(a) or is_array(b):
        if op == "&" or isinstance(a, str) or isinstance(b, str):
            return NAN  # text arrays are not supported
        return _array_op(_CMP.get(op) or _ARITH[op], a, b)
    if op == "&":
        if isinstance(a, (str, np.floating, float)) and isinstance(b, (str, np.floating, float)):
            return _text_of(a) + _text_of(b)
        return np.full(np.broadcast_shapes(np.shape(num(a)), np.shape(num(b))), np.nan)
    if op in _CMP:
        if isinstance(a, str) or isinstance(b, str):
            if np.ndim(num(a)) == 0 and np.ndim(num(b)) == 0:
                return _compare(op, a, b)
            return np.full(np.broadcast_shapes(np.shape(num(a)), np.shape(num(b))), np.nan)
        a, b = num(a), num(b)
        out = _CMP[op](a, b)
        bad = np.isnan(a) | np.isnan(b)  # an error compared is still an error
        return np.where(bad, np.nan, out) if np.any(bad) else np.asarray(out, np.float64)[()]
    return _ARITH[op](num(a), num(b))


def _ev_call(node, cx):
    fn, _, _, takes_refs = FUNCTIONS[node.name]
    if takes_refs:
        args = [_ev_ref_as_range(a, cx) if isinstance(a, Ref) else ev(a, cx) for a in node.args]
    else:
        args = [ev(a, cx) for a in node.args]
    return fn(*args)

def _ev_dot(node, cx):
    cls = cx.cls
    plan = cls.gather.get("dot", None) if cx.sub is None else False
    if plan is None:
        plan = cls.gather["dot"] = dot_plan(node, cls)
    if plan is not False:
        out = run_dot(plan, cx)
        if out is None:  # a range holds text or a boolean: SUMPRODUCT's own path zeroes them
            cls.gather["dot"] = False
    own = plan is not False and out is not None  # a fresh array of run_dot's: added to in place
    if not own:
        out = None
        for t in node.calls:
            v = num(ev(t, cx))
            out = v if out is None else out + v
    for t in node.rest:
        v = num(ev(t, cx))
        if own and np.shape(out) == np.broadcast_shapes(np.shape(out), np.shape(v)):
            out += v  # a batch's worth: no second array to page in
        else:
            out = out + v
            own = True
    return out



_EVAL = {
    Dot: _ev_dot,
    Num: lambda n, cx: np.float64(n.value),
    Str: lambda n, cx: n.value,
    Bool: lambda n, cx: np.float64(n.value),
    Err: lambda n, cx: NAN,
    Missing: lambda n, cx: np.float64(0.0),
    Ref: _ev_ref,
    Range: _ev_range,
    Unary: _ev_unary,
    Binary: _ev_binary,
    Call: _ev_call,
}
