"""Before writing anything: estimate the workbook's size and refuse what Excel or LibreOffice cannot open.

The estimate sums each layer writer's plan (layers/base.py LayerWriter.plan), made from the shapes
Keras computes for the layers and their parameter counts: no forward pass, no build. It is
deliberately a little generous (it counts a fused activation's second block, the weight sheets'
label rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import XlcnnError

MAX_SHEETS = 10_000          # LibreOffice's MAXTABCOUNT (Excel: memory only)
MAX_ROWS = 1_048_576
MAX_COLS = 16_384
MAX_BYTES = 2_000_000_000    # beyond this neither program opens the file on an ordinary machine
BYTES_PER_CONSTANT = 15      # measured on the samples and the LeNet-size bench model
BYTES_PER_FORMULA = 40
GALLERY_CELLS = 200_000      # the gallery's cap (styles.toml gallery.max_cells)
TRACE_FORMULAS = 400         # about what one trace sheet holds (12 channel blocks of a 3x3 window)

# What opening the workbook takes in LibreOffice 7.4 (a hard recalculation: every formula computed
# on load), fitted by bench/bench_libreoffice.py as start + per sheet + per formula + per constant.
# Memory fits within 1% on the synthetic workbooks and over-estimates the LeNet-size one by 13%;
# about 6 MB a sheet is what makes a 2,600-sheet workbook need 14 GB. Seconds are rougher: they
# under-estimate workbooks of long formulas (LeNet-size: 12 s for 18 s measured).
LO_SECONDS = (2.5, 0.037, 2.0e-5, 2.2e-6)
LO_MB = (150.0, 5.9, 9.5e-4, 2.7e-4)
LAPTOP_MB = 4_000             # past this, warn: an ordinary laptop has no more to give


@dataclass
class Estimate:
    sheets: int = 3          # overview, manifest, about
    formulas: int = 0
    constants: int = 0
    max_rows: int = 0
    max_cols: int = 0
    widest: str = ""         # the layer that needs the most rows or columns
    longest_formula: int = 0

    @property
    def bytes(self):
        return self.constants * BYTES_PER_CONSTANT + self.formulas * BYTES_PER_FORMULA

    def _fit(self, coef):
        start, per_sheet, per_formula, per_constant = coef
        return start + per_sheet * self.sheets + per_formula * self.formulas + per_constant * self.constants

    @property
    def libreoffice_seconds(self):
        """Opening (and recalculating) the workbook in LibreOffice, by bench/bench_libreoffice.py's fit."""
        return self._fit(LO_SECONDS)

    @property
    def libreoffice_mb(self):
        """LibreOffice's peak memory for it, by the same fit."""
        return self._fit(LO_MB)

    def text(self):
        return (f"{self.sheets:,} sheets, {self.formulas:,} formulas, {self.constants:,} constants, "
                f"at most {self.max_rows:,} rows × {self.max_cols:,} columns on one sheet, "
                f"longest formula about {self.longest_formula:,} characters, about {self.bytes / 1e6:,.1f} MB; "
                f"opening it in LibreOffice takes about {_seconds(self.libreoffice_seconds)} and "
                f"{_memory(self.libreoffice_mb)}")

    def warnings(self):
        """Notes (not refusals) for a workbook that will be hard to open."""
        if self.libreoffice_mb > LAPTOP_MB:
            return [f"opening this workbook in LibreOffice will need about {_memory(self.libreoffice_mb)} of memory, "
                    f"more than a laptop with {LAPTOP_MB / 1000:.0f} GB has; "
                    "a smaller input size or fewer channels make a lighter workbook"]
        return []


def _seconds(s):
    return f"{s:,.0f} s" if s >= 10 else f"{s:.1f} s"


def _memory(mb):
    return f"{mb / 1000:,.1f} GB" if mb >= 1000 else f"{mb:,.0f} MB"


def estimate(loaded, writers) -> Estimate:
    """The workbook's size: the input's sheets plus every writer's plan (layers/base.py Footprint),
    from the shapes Keras computes for the layers; no forward pass and no switch on layer kinds."""
    est = Estimate()
    shape = tuple(loaded.input_shape)
    est.constants += int(np.prod(shape))
    est.sheets += shape[-1] if len(shape) == 3 else 1
    for writer, _reads in writers:
        fp = writer.plan(writer.spec.input_shapes)
        est.sheets += fp.sheets
        est.formulas += fp.formulas
        est.constants += fp.constants
        est.longest_formula = max(est.longest_formula, fp.longest_formula)
        if fp.rows > est.max_rows or fp.cols > est.max_cols:
            est.widest = fp.where
        est.max_rows, est.max_cols = max(est.max_rows, fp.rows), max(est.max_cols, fp.cols)
    # the sheets every workbook adds besides the stages: the overview's live picture and scores,
    # the gallery (a live tile per output cell of every map stage, capped), the trace sheets
    from .trace import MAX_TRACES, TRACED
    maps = sum(int(np.prod(w.spec.output_shape)) for w, _ in writers
               if len(w.spec.output_shape) > 1 and not w.passthrough)
    traces = min(sum(1 for w, _ in writers if w.kind in TRACED), MAX_TRACES)
    est.sheets += 1 + traces
    est.formulas += int(np.prod(shape)) + min(maps, GALLERY_CELLS) + TRACE_FORMULAS * traces
    return est


def check(est):
    """Refuse, with the estimate and what to do, a workbook the spreadsheet programs cannot hold."""
    problems = []
    if est.sheets > MAX_SHEETS:
        problems.append(f"{est.sheets:,} sheets (LibreOffice opens at most {MAX_SHEETS:,})")
    if est.max_rows > MAX_ROWS:
        problems.append(f"{est.max_rows:,} rows on '{est.widest}' (a sheet has {MAX_ROWS:,})")
    if est.max_cols > MAX_COLS:
        problems.append(f"{est.max_cols:,} columns on '{est.widest}' (a sheet has {MAX_COLS:,})")
    if est.bytes > MAX_BYTES:
        problems.append(f"about {est.bytes / 1e9:.1f} GB")
    if problems:
        raise XlcnnError("this model is too big for a workbook: " + "; ".join(problems) +
                         f" [estimate: {est.text()}]; use a smaller input size or fewer channels")
    return est
