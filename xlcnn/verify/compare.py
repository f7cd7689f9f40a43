"""Comparing the workbook's stages with Keras: the tolerance, one stage's errors and worst cell, and a
batch of images through the workbook's formulas.

Tolerance: Keras computes in float32, the workbook in float64. A float32 result carries a relative
rounding error of about 6e-8 per operation, which grows with the number of terms summed and the
depth of the stack; measured differences on the samples are around 1e-7 of a layer's scale. The
default, |workbook - keras| <= atol + rtol * scale with rtol = 1e-4 and atol = 1e-6 (scale = the
largest |value| Keras gives for that layer), leaves a hundredfold margin for deeper models while a
wrong formula, weight or padding shows errors of the order of the scale itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import manifest as mf
from ..errors import XlcnnError
from ..formula import cell_name
from .engines import input_overrides, prepare_like


DEFAULT_RTOL = 1e-4


DEFAULT_ATOL = 1e-6


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".npy", ".csv", ".wav"}


@dataclass
class StageResult:
    layer: str
    klass: str
    shape: tuple
    max_abs_error: float
    max_rel_error: float
    normalized_error: float
    scale: float
    passed: bool
    worst_cell: str = ""
    workbook_value: float = 0.0
    keras_value: float = 0.0
    message: str = ""



def locate(entries, layer, index):
    """The sheet cell holding element `index` (Keras layout) of a layer's tensor."""
    rows = [e for e in entries if e.layer == layer]
    e0 = rows[0]
    if e0.channel is None:
        r0, c0, _, _ = e0.range
        return cell_name(e0.sheet, r0 + index[0], c0)
    axis = e0.channel_axis if e0.channel_axis is not None else len(index) - 1
    channel = index[axis]
    spatial = [v for k, v in enumerate(index) if k != axis]
    i, j = (spatial[0], spatial[1]) if len(spatial) == 2 else (spatial[0], 0)   # a signal: (step, 0)
    e = next(e for e in rows if e.channel == channel)
    return cell_name(e.sheet, e.range[0] + i, e.range[1] + j)



def compare_stage(entries, layer, got, want, atol, rtol):
    klass = next(e.klass for e in entries if e.layer == layer)
    if got.shape != want.shape:
        return StageResult(layer, klass, tuple(got.shape), float("inf"), float("inf"), float("inf"), 0.0,
                           False, message=f"shape {got.shape} in the workbook, {want.shape} in Keras")
    diff = np.abs(got - want)
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    max_abs = float(diff[worst]) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(want), 1e-12)
    passed = bool(max_abs <= atol + rtol * scale)
    return StageResult(layer, klass, tuple(want.shape), max_abs, float(np.max(rel)) if rel.size else 0.0,
                       max_abs / scale if scale > 0 else max_abs, scale, passed,
                       locate(entries, layer, worst) if diff.size else "",
                       float(got[worst]) if diff.size else 0.0, float(want[worst]) if diff.size else 0.0)



def stage_targets(entries, layer_names):
    """The cells of the stages ``layer_names`` as evaluate()'s targets [(sheet, r0, c0, r1, c1)]:
    a batch runs only the formulas they depend on (no gallery, traces or overview)."""
    rects = []
    for layer in layer_names:
        mf.assemble(entries, layer, lambda *r: rects.append(r) or np.zeros((r[3] - r[1] + 1, r[4] - r[2] + 1)))
    return rects


def compare_batch(report, book, entries, input_layer, layer_names, loaded, about, images_dir, say):
    from ..formula import evaluate
    folder = Path(images_dir)
    if not folder.is_dir():
        raise XlcnnError(f"--images {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise XlcnnError(f"--images {folder} holds no png/jpg/bmp/gif/npy files")
    say(f"preparing {len(files)} images")
    xb = np.stack([prepare_like(p, loaded, about) for p in files])
    rects = stage_targets(entries, layer_names)
    t = time.perf_counter()
    result = evaluate(book, overrides=input_overrides(entries, input_layer, xb), targets=rects)
    report.batch_seconds = time.perf_counter() - t
    outs = loaded.layer_outputs(xb)
    worst = 0.0
    for layer in layer_names:
        got = mf.assemble(entries, layer, result.block)
        want = outs[layer]
        scale = max(float(np.max(np.abs(want))), 1e-12)
        worst = max(worst, float(np.nanmax(np.abs(got - want))) / scale)
    final = mf.assemble(entries, layer_names[-1], result.block)
    report.images = len(files)
    report.batch_worst_error = worst
    if final.ndim == 2:
        report.top1_agreement = float(np.mean(np.argmax(final, 1) == np.argmax(outs[layer_names[-1]], 1)))
    if worst > report.rtol:
        report.stages.append(StageResult("(batch)", "", tuple(final.shape), worst, worst, worst, 1.0, False,
                                         message=f"worst error over {len(files)} images"))
