"""MaxPooling2D and AveragePooling2D: MAX or AVERAGE of each window, with Keras's 'same' semantics.

Keras pads max pooling with -infinity and divides average pooling by the number of real cells, so
in both cases the window is simply clipped at the border: MAX and AVERAGE of the real cells.
"""

from __future__ import annotations

import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, Tensor, text
from .base import LayerWriter, handles, one_of, padding_text, pair, window_geometry


def _positive_pair_or_none(value, _config):
    if value is None:
        return None
    if any(v < 1 for v in pair(value)):
        return f"{value!r} must be positive"
    return None


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
    options = {
        "pool_size": _positive_pair_or_none, "strides": _positive_pair_or_none,
        "padding": one_of("valid", "same"),
        "data_format": one_of("channels_last", "channels_first"),
    }

    @property
    def is_max(self):
        return self.kind == "MaxPooling2D"

    def geometry(self):
        c = self.config
        ph, pw = pair(c["pool_size"])
        sh, sw = pair(c["strides"]) if c.get("strides") is not None else (ph, pw)
        return (ph, pw), (sh, sw)

    def describe(self):
        (ph, pw), (sh, sw) = self.geometry()
        what = "max" if self.is_max else "average"
        return f"{what} of {ph}×{pw} windows, stride {sh}×{sw}, padding {self.config['padding']}"

    def write(self, ctx, x):
        c = self.config
        channel_axis = 0 if c["data_format"] == "channels_first" else 2
        if x.rank != 3 or x.channel_axis != channel_axis:
            self.refuse(f"expects a 3-D {c['data_format']} input, got shape {x.values.shape}")
        (ph, pw), (sh, sw) = self.geometry()
        H, W = x.hw
        oh, taps_h, pads_h = window_geometry(H, ph, sh, 1, c["padding"])
        ow, taps_w, pads_w = window_geometry(W, pw, sw, 1, c["padding"])
        if oh < 1 or ow < 1:
            self.refuse(f"the pool window does not fit the {H}×{W} input")
        fn = "MAX" if self.is_max else "AVERAGE"
        out = pool_values(x.chw(), taps_h, taps_w, np.max if self.is_max else np.mean)
        key = "pool_max" if self.is_max else "pool_avg"
        book = ctx.book
        places = []
        for ch in range(x.channels):
            name = ctx.sheet_name(self.name, f" c{ch}")
            title = text(f"stage.{key}", step=ctx.step, name=self.name, channel=ch, channels=x.channels,
                         ph=ph, pw=pw, sh=sh, sw=sw,
                         padding_text=padding_text(c["padding"], "pool", (pads_h, pads_w)))
            sheet = book.add_sheet(name, title, text(f"stage.{key}_explain"), map_width=ow)
            sheet.axis_labels(FIRST_ROW, FIRST_COL, oh, ow)
            for i, th in enumerate(taps_h):
                for j, tw in enumerate(taps_w):
                    window = x.window(ch, th[0][0], th[-1][0], tw[0][0], tw[-1][0])
                    sheet.formula(FIRST_ROW + i, FIRST_COL + j, f"{fn}({window})", out[ch, i, j])
            sheet.color_scale(FIRST_ROW, FIRST_COL, FIRST_ROW + oh - 1, FIRST_COL + ow - 1, values=out[ch])
            places.append((name, FIRST_ROW, FIRST_COL))
        return Tensor(self.name, np.moveaxis(out, 0, channel_axis), channel_axis, places)
