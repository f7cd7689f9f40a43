"""MaxPooling2D, AveragePooling2D and their 1-D twins: MAX or AVERAGE of each window, with Keras's 'same' semantics.

Keras pads max pooling with -infinity and divides average pooling by the number of real cells, so
in both cases the window is simply clipped at the border: MAX and AVERAGE of the real cells.
"""

from __future__ import annotations

import numpy as np

from ..layout import text
from .base import LayerWriter, MapSheets, Window, channel_axis, handles, one_of, positive_ints_or_none, which_text


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
        what = "max" if self.is_max else "average"
        return f"{what} of windows: {self.window.text('pool', show_dilation=False)}, padding {self.config['padding']}"

    def write(self, ctx, x):
        c = self.config
        rank = 2 if self.one_d else 3
        axis = channel_axis(c["data_format"], rank)
        if x.rank != rank or x.channel_axis != axis:
            self.refuse(f"expects a {rank}-D {c['data_format']} input, got shape {x.values.shape}")
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
