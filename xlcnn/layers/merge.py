"""Merge layers of branching graphs: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate.

Elementwise merges write one formula per cell over the same cell of every input. Concatenation
along the channel axis computes nothing: its channels are the input's channel sheets, so the
manifest points at them. Along another axis (or for 1-D tensors) the values are copied into one
new map or column, so later stages can read a contiguous range.
"""

from __future__ import annotations

import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, Tensor, text
from .base import LayerWriter, MapSheets, handles, ok, which_text, write_cellwise_stage

_ELEMENTWISE = {
    # Keras class -> (formula from the input cell references, float64 reduction); the words are
    # texts.toml's stage.merge_what
    "Add": (lambda refs: "+".join(refs), lambda xs: np.sum(xs, axis=0)),
    "Subtract": (lambda refs: f"{refs[0]}-{refs[1]}", lambda xs: xs[0] - xs[1]),
    "Multiply": (lambda refs: "*".join(refs), lambda xs: np.prod(xs, axis=0)),
    "Average": (lambda refs: f"AVERAGE({','.join(refs)})", lambda xs: np.mean(xs, axis=0)),
    "Maximum": (lambda refs: f"MAX({','.join(refs)})", lambda xs: np.max(xs, axis=0)),
    "Minimum": (lambda refs: f"MIN({','.join(refs)})", lambda xs: np.min(xs, axis=0)),
}


def _same_layout(writer, inputs):
    first = inputs[0]
    for t in inputs[1:]:
        if t.values.shape != first.values.shape or t.channel_axis != first.channel_axis:
            writer.refuse(f"inputs of shapes {[tuple(t.values.shape) for t in inputs]} need broadcasting, "
                          "which xlcnn does not reproduce; give the inputs the same shape")


@handles(*_ELEMENTWISE)
class ElementwiseMergeWriter(LayerWriter):
    multi_input = True
    options = {}

    def describe(self):
        return text(f"stage.merge_what.{self.kind}")

    def write(self, ctx, inputs):
        if self.kind == "Subtract" and len(inputs) != 2:
            self.refuse("Subtract takes exactly two inputs")
        if len(inputs) > 200:
            self.refuse(f"{len(inputs)} inputs would pass Excel's 255-argument limit")
        _same_layout(self, inputs)
        formula, reduce = _ELEMENTWISE[self.kind]
        what = text(f"stage.merge_what.{self.kind}")
        first = inputs[0]
        out = reduce(np.stack([t.values for t in inputs]))

        def title(channel):
            if channel is None:
                return text("stage.merge_1d", step=ctx.step, name=self.name, kind=self.kind, what=what)
            return text("stage.merge", step=ctx.step, name=self.name, kind=self.kind, channel=channel,
                        channels=first.channels, what=what)
        return write_cellwise_stage(ctx, self, first, out, lambda index: formula([t.cell_at(index) for t in inputs]),
                                    title)


@handles("Concatenate")
class ConcatenateWriter(LayerWriter):
    multi_input = True
    reuses_input_cells = True   # along the channels its channels are the inputs' own maps
    options = {"axis": ok}

    def describe(self):
        return text("describe.concat", axis=self.config["axis"])

    def write(self, ctx, inputs):
        first = inputs[0]
        rank = first.rank
        axis = self.config["axis"]
        axis = axis - 1 if axis > 0 else rank + axis   # Keras counts the batch axis
        if not 0 <= axis < rank or any(t.rank != rank for t in inputs):
            self.refuse(f"axis {self.config['axis']} does not fit inputs of rank {rank}")
        if rank > 1 and any(t.channel_axis != first.channel_axis for t in inputs):
            self.refuse("inputs with different data formats cannot be joined")
        out = np.concatenate([t.values for t in inputs], axis=axis)
        if rank > 1 and axis == first.channel_axis:
            # nothing to compute: the joined channels are the inputs' own channel maps
            places = [p for t in inputs for p in t.places]
            border = tuple(tuple(min(t.border[a][b] for t in inputs) for b in range(2)) for a in range(2))
            return Tensor(self.name, out, first.channel_axis, places, border)
        refs = np.concatenate([t.ref_array() for t in inputs], axis=axis)
        book = ctx.book
        if rank == 1:
            name = ctx.sheet_name(self.name)
            sheet = book.add_sheet(name, text("stage.concat_1d", step=ctx.step, name=self.name, n=len(out)))
            for i, (r, v) in enumerate(zip(refs, out)):
                sheet.formula(FIRST_ROW + i, FIRST_COL, r, v)
            sheet.axis_labels(FIRST_ROW, FIRST_COL, len(out), 0)
            return Tensor(self.name, out, None, [(name, FIRST_ROW, FIRST_COL)])
        refs_chw = Tensor(self.name, refs, first.channel_axis, []).chw()
        out_chw = Tensor(self.name, out, first.channel_axis, []).chw()
        c, h, w = out_chw.shape
        maps = MapSheets(ctx, self.name, c, h, w, rank,
                         lambda ch: text("stage.concat", step=ctx.step, name=self.name, axis=self.config["axis"],
                                         which=which_text(rank == 2, ch, c, False)))
        places = []
        for ch in range(c):
            sheet, r0, c0 = maps.start(ch)
            for i in range(h):
                for j in range(w):
                    sheet.formula(r0 + i, c0 + j, refs_chw[ch, i, j], out_chw[ch, i, j])
            places.append((sheet.name, r0, c0))
        maps.color_all(0, out_chw)
        return Tensor(self.name, out, first.channel_axis, places, maps.border)
