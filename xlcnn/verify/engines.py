"""Who evaluates the formulas: xlcnn's NumPy engine (xlcnn.formula) or LibreOffice headless, and the
inputs handed to them (the workbook's input cells, an image prepared as the workbook records).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checks import finite


def input_overrides(entries, input_layer, xb):
    """{(sheet, row, col): values over the batch} for the input cells, from a (B, ...) batch."""
    out = {}
    for e in entries:
        if e.layer != input_layer:
            continue
        r0, c0, r1, c1 = e.range
        if e.channel is None:
            maps = xb.reshape(xb.shape[0], -1, 1)
        else:
            maps = np.moveaxis(xb, e.channel_axis + 1, 1)[:, e.channel]
            if maps.ndim == 2:      # a signal: each channel is a column of steps
                maps = maps[:, :, None]
        for i in range(r1 - r0 + 1):
            for j in range(c1 - c0 + 1):
                out[(e.sheet, r0 + i, c0 + j)] = maps[:, i, j].astype(np.float64)
    return out



def prepare_like(image, loaded, about):
    from ..image import prepare
    layout = about.get("input_layout", "channels_last")
    invert = about.get("invert", "auto").split(" ")[0]
    scale = float(about["scale"]) if about.get("scale") else None
    return prepare(image, loaded.input_shape, layout, invert=invert, scale=scale).tensor.astype(np.float64)



def libreoffice_values(path):
    import tempfile
    from ..formula import read_workbook
    from ..libreoffice import recalculate
    with tempfile.TemporaryDirectory(prefix="xlcnn-verify-") as tmp:
        out = recalculate([path], Path(tmp) / "lo")[0]
        recalculated = read_workbook(out)
    cached = recalculated.cached

    def value_of(sheet, r, c):
        v = cached.get((sheet, r, c))
        if v is None:
            v = recalculated.value(sheet, r, c)
        return float(v) if finite(v) else np.nan

    def block(sheet, r0, c0, r1, c1):
        return np.array([[value_of(sheet, r, c) for c in range(c0, c1 + 1)] for r in range(r0, r1 + 1)])

    def cells(sheet, rows, cols):
        return np.array([value_of(sheet, r, c) for r, c in zip(rows, cols)], np.float64)

    return block, cells
