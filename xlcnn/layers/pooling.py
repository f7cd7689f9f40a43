"""Pooling: MaxPooling and AveragePooling (1-D and 2-D), MAX or AVERAGE of each window with Keras's
'same' semantics, and the global poolings that reduce a whole map (1-D and 2-D).

Keras pads max pooling with -infinity and divides average pooling by the number of real cells: the
window reads the input's blank padding border, which MAX and AVERAGE skip (see placement.py).
"""

from __future__ import annotations

import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, Tensor, text
from .base import (LayerWriter, MapSheets, Window, check_layout, handles, ok, one_of,
                   positive_ints_or_none, which_text, write_copy_maps)

DATA_FORMATS = one_of("channels_last", "channels_first")


def pool_values(x_chw, taps_h, taps_w, reduce):
    c = x_chw.shape[0]
    out = np.empty((c, len(taps_h), len(taps_w)))
    for i, th in enumerate(taps_h):
        rows = [r for r, _ in th]
        for j, tw in enumerate(taps_w):
            cols = [q for q, _ in tw]
            window = x_chw[:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            out[:, i, j] = reduce(window.reshape(c, -1), axis=1)
    return out


@handles("MaxPooling2D", "AveragePooling2D")
class Pooling2DWriter(LayerWriter):
    """One writer for max and average pooling in 1-D and 2-D, as Keras's base_pooling.py."""
    pads_input = True
    one_d = False
    options = {
        "pool_size": positive_ints_or_none, "strides": positive_ints_or_none,
        "padding": one_of("valid", "same"),
        "data_format": one_of("channels_last", "channels_first"),
    }

    @property
    def is_max(self):
        return self.kind.startswith("Max")

    @property
    def window(self):
        return Window.from_config(self.config, "pool_size", self.one_d, default_strides_to_size=True)

    def check_inputs(self, input_shapes):
        self.expect_rank(input_shapes, 2 if self.one_d else 3)

    def describe(self):
        return text("describe.pool_max" if self.is_max else "describe.pool_avg",
                    geometry=self.window.text("pool", show_dilation=False), padding=self.config["padding"])

    def write(self, ctx, x):
        rank = 2 if self.one_d else 3
        axis = check_layout(self, x, rank)
        geo = self.window
        H, W = x.hw
        (oh, taps_h, pads_h), (ow, taps_w, pads_w) = geo.apply(H, W)
        if oh < 1 or ow < 1:
            self.refuse(f"the pool window does not fit the {H}×{W} input")
        fn = "MAX" if self.is_max else "AVERAGE"
        out = pool_values(x.chw(), taps_h, taps_w, np.max if self.is_max else np.mean)
        # the formulas read whole windows where the input keeps its padding visible as blank cells,
        # which MAX and AVERAGE skip: Keras's -infinity padding and real-cells-only divisor
        (_, taps_h, _), (_, taps_w, _) = geo.taps_for(x)
        key = "pool_max" if self.is_max else "pool_avg"
        ptext = geo.padding_text("pool", (pads_h, pads_w))

        def title(ch):
            return text(f"stage.{key}", step=ctx.step, name=self.name, kind=self.kind,
                        which=which_text(self.one_d, ch, x.channels, output=False),
                        geometry=geo.text("pool", show_dilation=False), padding_text=ptext)

        maps = MapSheets(ctx, self.name, x.channels, oh, ow, rank, title, lambda _c: text(f"stage.{key}_explain"))
        places = []
        for ch in range(x.channels):
            sheet, r0, c0 = maps.start(ch)
            for i, th in enumerate(taps_h):
                for j, tw in enumerate(taps_w):
                    window = x.window(ch, th[0][0], th[-1][0], tw[0][0], tw[-1][0])
                    sheet.formula(r0 + i, c0 + j, f"{fn}({window})", out[ch, i, j])
            places.append((sheet.name, r0, c0))
        maps.color_all(0, out)
        return maps.tensor(self.name, out, rank, axis, places)


@handles("MaxPooling1D", "AveragePooling1D")
class Pooling1DWriter(Pooling2DWriter):
    one_d = True


@handles("GlobalAveragePooling2D", "GlobalMaxPooling2D")
class GlobalPooling2DWriter(LayerWriter):
    options = {"data_format": DATA_FORMATS, "keepdims": ok}
    rank = 3

    @property
    def is_max(self):
        return self.kind.startswith("GlobalMax")

    def describe(self):
        keep = " (keepdims)" if self.config.get("keepdims") else ""
        return text("describe.global_max" if self.is_max else "describe.global_avg", keepdims=keep)

    def write(self, ctx, x):
        axis = check_layout(self, x, self.rank)
        H, W = x.hw
        fn = "MAX" if self.is_max else "AVERAGE"
        key = "global_max" if self.is_max else "global_avg"
        chw = x.chw().reshape(x.channels, -1)
        out = chw.max(axis=1) if self.is_max else chw.mean(axis=1)
        book = ctx.book
        size = f"{H}×{W}" if self.rank == 3 else text("reshaping.size_steps", n=H)
        explain = text(f"reshaping.{key}_explain", size=size)
        if self.config.get("keepdims"):
            return write_copy_maps(ctx, self, out[:, None, None],
                                   lambda c, i, j: f"{fn}({x.window(c, 0, H - 1, 0, W - 1)})", axis,
                                   lambda c: text(f"reshaping.{key}_channel", step=ctx.step, name=self.name,
                                                  kind=self.kind,
                                                  which=which_text(self.rank == 2, c, x.channels)),
                                   explain, self.rank)
        name = ctx.sheet_name(self.name)
        sheet = book.add_sheet(name, text(f"reshaping.{key}", step=ctx.step, name=self.name, kind=self.kind,
                                          channels=x.channels), explain)
        sheet.label(FIRST_ROW - 1, FIRST_COL, text("reshaping.global_header"), book.fmt_header)
        for c in range(x.channels):
            sheet.ws.write_number(FIRST_ROW + c, 0, c, book.fmt_axis)
            sheet.formula(FIRST_ROW + c, FIRST_COL, f"{fn}({x.window(c, 0, H - 1, 0, W - 1)})", out[c])
        return Tensor(self.name, out, None, [(name, FIRST_ROW, FIRST_COL)])


@handles("GlobalAveragePooling1D", "GlobalMaxPooling1D")
class GlobalPooling1DWriter(GlobalPooling2DWriter):
    rank = 2
