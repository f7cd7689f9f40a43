"""Before writing anything: estimate the workbook's size and refuse what Excel or LibreOffice cannot open.

The estimate comes from Keras's own output shapes and parameter counts, so it costs one forward
pass of zeros, not a build. It is deliberately a little generous (it counts a fused activation's
second block, the weight sheets' label rows).
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
HEADER_ROWS = 5


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

    def text(self):
        return (f"{self.sheets:,} sheets, {self.formulas:,} formulas, {self.constants:,} constants, "
                f"at most {self.max_rows:,} rows × {self.max_cols:,} columns on one sheet, "
                f"longest formula about {self.longest_formula:,} characters, about {self.bytes / 1e6:,.1f} MB")


def _grow(est, rows, cols, where):
    if rows > est.max_rows or cols > est.max_cols:
        est.widest = where if (rows >= est.max_rows or cols >= est.max_cols) else est.widest
    est.max_rows = max(est.max_rows, rows)
    est.max_cols = max(est.max_cols, cols)


def estimate(loaded, writers):
    shapes = {name: out.shape[1:] for name, out in
              loaded.layer_outputs(np.zeros((1, *loaded.input_shape), np.float32)).items()}
    shapes[loaded.input_name] = tuple(loaded.input_shape)
    est = Estimate()
    est.constants += int(np.prod(loaded.input_shape))
    first = shapes[loaded.input_name]
    est.sheets += first[-1] if len(first) == 3 else 1
    for writer, reads in writers:
        layer = writer.layer
        shape = shapes[writer.name]
        size = int(np.prod(shape))
        cfg = writer.config
        fused = str(cfg.get("activation", "linear")) not in ("linear", "None")
        params = writer.params()
        est.constants += params
        if writer.passthrough:
            continue
        if len(shape) == 3:
            channel_axis = 0 if cfg.get("data_format") == "channels_first" else 2
            est.sheets += shape[channel_axis]
            h, w = [s for i, s in enumerate(shape) if i != channel_axis]
            _grow(est, h + HEADER_ROWS, 2 * (w + 1) + 2, writer.name)
        elif len(shape) == 2:          # a signal: one sheet, a column per channel, steps down
            est.sheets += 1
            _grow(est, max(shape) + HEADER_ROWS, 2 * (max(shape) + 1) + 2, writer.name)
        else:
            est.sheets += 1
            _grow(est, size + HEADER_ROWS, 4, writer.name)
        est.formulas += size * (2 if fused else 1)
        if writer.kind == "SeparableConv2D":    # depthwise helper sheets and a second weight sheet
            depthwise = layer.weights[0].shape
            est.sheets += depthwise[2] * depthwise[3] + 1
        elif writer.kind == "SeparableConv1D":  # one depthwise helper sheet and a second weight sheet
            est.sheets += 2
        if params:
            est.sheets += 1
            kernel = layer.weights[0].shape
            if len(kernel) == 2:       # Dense: one row per input, one column per unit
                _grow(est, kernel[0] + HEADER_ROWS + 1, kernel[1] + 1, f"{writer.name} weights")
            elif len(kernel) in (3, 4):     # convolution kernels: a block per (output, input) channel pair
                kh, kw, cin, cout = kernel if len(kernel) == 4 else (kernel[0], 1, *kernel[1:])
                _grow(est, cout * (kh + 1) + HEADER_ROWS, cin * (kw + 1) + 3, f"{writer.name} weights")
                est.longest_formula = max(est.longest_formula, min(cin * 70, 8000))
        in_shape = shapes[reads[0]]
        if len(shape) == 1 and len(in_shape) == 1:
            est.longest_formula = max(est.longest_formula, 90)
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
