"""Ordering a Program's classes: Tarjan on the class graph, and classes that may read each
other (or themselves) ordered cell by cell in levels that are still evaluated as vectors; a
cycle of cells is a FormulaError naming one of them.
"""

import numpy as np

from .parser import FormulaError, cell_name


def by_sheet(cls, sub):
    """[(sheet, positions within the class's cells ``sub`` or None for all, rows, cols)]: where
    the cells of a class (or the part ``sub`` of it) are, one entry per sheet written."""
    if sub is None and "parts" in cls.gather:
        return cls.gather["parts"]
    rows, cols = (cls.rows, cls.cols) if sub is None else (cls.rows[sub], cls.cols[sub])
    if cls.hosts is None:
        return [(cls.sheet, None, rows, cols)]
    if sub is None:
        cls.gather["parts"] = by_sheet(cls, np.arange(len(rows)))
        return cls.gather["parts"]
    hosts = cls.hosts if sub is None else cls.hosts[sub]
    order = np.argsort(hosts, kind="stable")
    cuts = np.flatnonzero(np.diff(hosts[order])) + 1
    return [(int(hosts[g[0]]), _run(g), rows[g], cols[g]) for g in np.split(order, cuts)]


def _run(g):
    """Positions g (ascending: one group of a stable sort) as a slice when they are consecutive,
    as a class's cells lie sheet after sheet: its values for one sheet are then a view."""
    if int(g[-1]) - int(g[0]) == len(g) - 1:
        return slice(int(g[0]), int(g[-1]) + 1)
    return g


def at(v, sub):
    """A slot coordinate for the cells ``sub`` of its class (None: all of them)."""
    return v if sub is None or isinstance(v, int) else v[sub]


def class_refs(cls):
    """(sheet, top, left, h, w) of every read of a class: a range by the slots giving its top row
    and left column and its size, a single reference with h = w = None.  top and left are ints
    when all cells share them, else per-cell arrays."""
    in_range = set()
    for first, (h, w, jr, jc, last) in cls.ranges.items():
        in_range.update((first, last))
        yield cls.slots[first].sheet, cls.slots[jr].row, cls.slots[jc].col, h, w
    for j, slot in enumerate(cls.slots):
        if j not in in_range:
            yield slot.sheet, slot.row, slot.col, None, None


def class_reads(cls):
    """(sheet, row index, col index) of every read of a class, as arrays that broadcast to
    (cells,) for single references and (cells, h, w) for ranges."""
    for t, top, left, h, w in class_refs(cls):
        if h is None:
            yield t, np.asarray(top), np.asarray(left)
        else:
            yield (t, np.add.outer(top, np.arange(h)).reshape(-1, h, 1),
                   np.add.outer(left, np.arange(w)).reshape(-1, 1, w))


def _span(v):
    """(smallest, largest) of a slot coordinate (an int or a per-cell array)."""
    return (v, v) if isinstance(v, int) else (int(v.min()), int(v.max()))


def _class_deps(prog, cls):
    """Classes whose cells ``cls`` may read: exact for single references, everything in the
    bounding box of a range's cells (an over-estimate can only cause a needless cell-level
    sort, never a wrong order)."""
    found = []
    for t, top, left, h, w in class_refs(cls):
        W = prog.writer[t]
        if W is None:
            continue
        if h is None:
            found.append(np.ravel(W[top, left]))
            continue
        (r0, r1), (c0, c1) = _span(top), _span(left)
        box = W[r0:r1 + h, c0:c1 + w]
        lo, hi = box.min(), box.max()
        found.append(np.array([hi]) if lo == hi else box.ravel())  # usually one writer
    if not found:
        return np.zeros(0, np.int64)
    ids = np.concatenate(found)
    return np.unique(ids[ids >= 0])


def _sccs(n, deps):
    """Tarjan's strongly connected components, iteratively; dependencies come out first."""
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack, out = [], []
    counter = 0
    for root in range(n):
        if index[root] >= 0:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            succ = deps[v]
            while i < len(succ):
                w = int(succ[i])
                i += 1
                if index[w] < 0:
                    work.append((v, i))
                    work.append((w, 0))
                    break
                if on_stack[w]:
                    low[v] = min(low[v], index[w])
            else:
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        comp.append(w)
                        if w == v:
                            break
                    out.append(comp)
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
    return out


def order_steps(book, prog):
    deps = prog.deps = [_class_deps(prog, c) for c in prog.classes]
    for comp in _sccs(len(deps), deps):
        c = comp[0]
        if len(comp) == 1 and not np.isin(c, deps[c]).any():
            prog.steps.append((c, None))
        else:
            prog.steps.extend(_cell_levels(book, prog, comp))


def _cell_levels(book, prog, comp):
    """Order the cells of classes that (may) depend on each other by exact cell dependencies,
    as levels evaluated one after another; raise on a true cycle."""
    classes = [prog.classes[c] for c in comp]
    sizes = [len(c.rows) for c in classes]
    start = np.cumsum([0] + sizes)
    n = int(start[-1])
    cell_map = {}
    for cls, s0 in zip(classes, start):
        for t, sel, rows, cols in by_sheet(cls, None):
            m = cell_map.get(t)
            if m is None:
                m = cell_map[t] = np.full(prog.shapes[t], -1, np.int64)
            ids = np.arange(s0, s0 + len(cls.rows))
            m[rows, cols] = ids if sel is None else ids[sel]
    src, dst = [], []
    for cls, s0 in zip(classes, start):
        host = np.arange(s0, s0 + len(cls.rows))
        for t, ri, ci in class_reads(cls):
            if t not in cell_map:
                continue
            ids = np.asarray(cell_map[t][ri, ci])
            ids = ids.reshape(ids.shape[0], -1) if ids.ndim else ids.reshape(1, 1)
            ids = np.broadcast_to(ids, (len(host), ids.shape[1]))
            h = np.broadcast_to(host[:, None], ids.shape)
            keep = ids >= 0
            src.append(h[keep])
            dst.append(ids[keep])
    src = np.concatenate(src) if src else np.zeros(0, np.int64)
    dst = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    pending = np.bincount(src, minlength=n)  # unresolved dependencies of each cell
    order = np.argsort(dst, kind="stable")
    dependents = src[order]
    bounds = np.searchsorted(dst[order], np.arange(n + 1))
    owner = np.repeat(np.arange(len(classes)), sizes)
    local = np.arange(n) - start[owner]
    frontier = np.flatnonzero(pending == 0)
    done = 0
    steps = []
    while frontier.size:
        done += frontier.size
        for k in np.unique(owner[frontier]):
            sel = frontier[owner[frontier] == k]
            steps.append((comp[k], local[sel]))
        counts = bounds[frontier + 1] - bounds[frontier]
        if counts.sum() == 0:
            break
        pos = np.repeat(bounds[frontier] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        hit = dependents[pos]
        np.subtract.at(pending, hit, 1)
        frontier = np.unique(hit[pending[hit] == 0])
    if done < n:
        stuck = pending > 0
        cell = int(np.flatnonzero(stuck)[0])
        fwd = np.argsort(src, kind="stable")
        fsrc, fdst = src[fwd], dst[fwd]
        seen = set()
        while cell not in seen:  # walk unresolved dependencies until one repeats: on a cycle
            seen.add(cell)
            lo, hi = np.searchsorted(fsrc, [cell, cell + 1])
            nxt = fdst[lo:hi]
            cell = int(nxt[stuck[nxt]][0])
        k = int(owner[cell])
        cls = classes[k]
        i = int(local[cell])
        host = cls.sheet if cls.hosts is None else int(cls.hosts[i])
        name = cell_name(book.sheets[host], int(cls.rows[i]), int(cls.cols[i]))
        raise FormulaError("circular reference", name)
    return steps


def needed_classes(prog, rects):
    """Boolean mask over prog.classes: the classes that write a cell of one of ``rects``
    [(sheet index, r0, c0, r1, c1)] (inclusive) and every class those read from, transitively
    (the class graph over-estimates reads, so this is a superset of what the cells need)."""
    need = np.zeros(len(prog.classes), bool)
    todo = []
    for s, r0, c0, r1, c1 in rects:
        W = prog.writer[s]
        if W is None:
            continue
        ids = np.unique(W[r0:r1 + 1, c0:c1 + 1])
        todo += [int(i) for i in ids[ids >= 0] if not need[i]]
        need[ids[ids >= 0]] = True
    while todo:
        for d in prog.deps[todo.pop()].tolist():
            if not need[d]:
                need[d] = True
                todo.append(d)
    return need
