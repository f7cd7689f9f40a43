"""The geometry of window layers (convolutions and pooling, 1-D and 2-D): Keras's int-or-tuple
options, 'same' and 'causal' padding, which input cells each output reads, and the texts that say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..layout import text


def pair(value):
    """Keras's int-or-tuple option as a tuple: 3 -> (3, 3); (3,) and (3, 1) stay as they are."""
    if isinstance(value, int):
        return (value, value)
    return tuple(int(v) for v in value)


def channel_axis(data_format, rank):
    """Which axis of a Keras tensor (no batch axis) of this rank holds the channels."""
    return 0 if data_format == "channels_first" else rank - 1


def same_padding(n, k, s, d=1):
    """Keras 'same' padding: (before, after); the odd extra cell goes after (bottom/right)."""
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def padding_text(padding, family, pads, one_d=False):
    """The header text that makes Keras's (asymmetric) padding visible; family is conv or pool.
    A 1-D layer's padding is along time (the h axis of its maps)."""
    (top, bottom), (left, right) = pads
    suffix = "_1d" if one_d else ""
    if padding == "valid":
        return text(f"padding.valid{suffix}")
    if padding == "causal":
        return text("padding.causal_conv_1d", top=top)
    if top == bottom == left == right == 0:
        return text(f"padding.none_needed{suffix}")
    return text(f"padding.same_{family}{suffix}", top=top, bottom=bottom, left=left, right=right)


@dataclass
class Window:
    """A window layer's geometry (convolution or pooling) in the (h, w) frame of its maps: size,
    stride and dilation per axis, and Keras's padding mode. A 1-D layer's time axis is h, and its
    w axis is the trivial window (1, stride 1, 'valid'), so one code path serves both ranks."""
    size: tuple
    strides: tuple
    dilation: tuple
    padding: str
    one_d: bool = False

    @classmethod
    def from_config(cls, config, size_key, one_d, default_strides_to_size=False):
        size = pair(config[size_key])
        strides = config.get("strides")
        strides = size if strides is None and default_strides_to_size else pair(strides or 1)
        dilation = pair(config.get("dilation_rate", 1) or 1)
        if one_d:
            size, strides, dilation = (size[0], 1), (strides[0], 1), (dilation[0], 1)
        return cls(size, strides, dilation, config["padding"], one_d)

    def apply(self, H, W, clip=True):
        """((oh, taps_h, pads_h), (ow, taps_w, pads_w)) for an H x W input map; clip=False gives
        the full windows, reaching into the padding (see window_geometry)."""
        (kh, kw), (sh, sw), (dh, dw) = self.size, self.strides, self.dilation
        return (window_geometry(H, kh, sh, dh, self.padding, clip),
                window_geometry(W, kw, sw, dw, "valid" if self.one_d else self.padding, clip))

    def pads(self, H, W):
        """The padding ((top, bottom), (left, right)) Keras adds around an H x W input."""
        (_, _, pads_h), (_, _, pads_w) = self.apply(H, W)
        return pads_h, pads_w

    def taps_for(self, x):
        """The windows over Tensor x: full ones when x keeps a blank border as wide as the padding
        (the padding is then visible on its sheet), clipped at the edges otherwise."""
        H, W = x.hw
        pads = self.pads(H, W)
        return self.apply(H, W, clip=not x.has_border(pads))

    def text(self, what, show_dilation=True):
        """'kernel 3×3 · stride 2×2 · dilation 1×1', or 'kernel 5 · stride 1 · dilation 2' in 1-D;
        what is 'kernel' or 'pool', said in the workbook's language (stage.window_kernel)."""
        (kh, kw), (sh, sw), (dh, dw) = self.size, self.strides, self.dilation
        word = text(f"stage.window_{what}")
        if self.one_d:
            dilation = text("stage.dilation_1d", dh=dh) if show_dilation else ""
            return text("stage.geometry_1d", what=word, kh=kh, sh=sh, dilation=dilation)
        dilation = text("stage.dilation_2d", dh=dh, dw=dw) if show_dilation else ""
        return text("stage.geometry_2d", what=word, kh=kh, kw=kw, sh=sh, sw=sw, dilation=dilation)

    def padding_text(self, family, pads):
        return padding_text(self.padding, family, pads, self.one_d)


def which_text(one_d, channel, channels, output=True):
    """'output channel 3 of 8' on a per-channel sheet; for a 1-D stage (one sheet) its layout."""
    if one_d:
        return text("stage.which_signal", channels=channels)
    return text("stage.which_channel" if output else "stage.which_channel_in", channel=channel, channels=channels)


def window_geometry(n, k, s, d, padding, clip=True):
    """Output length, for each output index the input taps (index, kernel tap), and the pads
    (before, after). With clip the taps lie inside 0..n-1; without, the full window is given, its
    taps in the padding outside 0..n-1 (where a map keeps a blank border, see MapSheets)."""
    if padding == "same":
        out = -(-n // s)
        before = same_padding(n, k, s, d)[0]
        pads = same_padding(n, k, s, d)
    elif padding == "causal":    # Keras pads (k - 1) * d zeros before the signal, none after
        before = (k - 1) * d
        out = (n - 1) // s + 1
        pads = (before, 0)
    else:
        out = (n - (k - 1) * d - 1) // s + 1
        before = 0
        pads = (0, 0)
    taps = []
    for o in range(max(out, 0)):
        start = o * s - before
        taps.append([(start + a * d, a) for a in range(k) if not clip or 0 <= start + a * d < n])
    return out, taps, pads
