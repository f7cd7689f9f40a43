"""Layers that move values without arithmetic, and the global poolings that reduce a whole map:
ZeroPadding, Cropping, UpSampling (nearest) in 1-D and 2-D, Reshape, GlobalAveragePooling and
GlobalMaxPooling in 1-D and 2-D.

Every output cell is a formula: a copy of the one input cell it comes from (`='02 conv c0'!B4`),
or, for ZeroPadding2D's border, the formula `=0`. The border could have been constants, but a stage
is a range of formulas (verify refuses constants inside a stage, as they usually mean a value was
pasted over a formula), and `=0` says plainly that Keras's padded value depends on nothing.
"""

from __future__ import annotations

import numpy as np

from ..layout import FIRST_COL, FIRST_ROW, Tensor, text
from .base import (LayerWriter, channel_axis, check_layout, handles, one_of, pair, positive_ints, which_text,
                   write_copy_maps)

DATA_FORMATS = one_of("channels_last", "channels_first")


def _pairs(value):
    """Keras's ((top, bottom), (left, right)) from an int, a pair, or a pair of pairs."""
    if isinstance(value, int):
        return (value, value), (value, value)
    height, width = value
    return pair(height), pair(width)


def _non_negative_pairs(value, _config):
    try:
        pairs = _pairs(value)
    except (TypeError, ValueError):
        return f"{value!r} is not an int, a pair, or ((top, bottom), (left, right))"
    if any(v < 0 for p in pairs for v in p):
        return f"{value!r} must not be negative"
    return None


@handles("ZeroPadding2D")
class ZeroPadding2DWriter(LayerWriter):
    options = {"padding": _non_negative_pairs, "data_format": DATA_FORMATS}

    def describe(self):
        (t, b), (l, r) = _pairs(self.config["padding"])
        return text("describe.zero_padding", top=t, bottom=b, left=l, right=r)

    rank = 3

    def pads(self):
        return _pairs(self.config["padding"])

    def write(self, ctx, x):
        axis = check_layout(self, x, self.rank)
        (t, b), (l, r) = self.pads()
        out = np.pad(x.chw(), ((0, 0), (t, b), (l, r)))
        H, W = x.hw

        def source(c, i, j):
            if t <= i < t + H and l <= j < l + W:
                return x.cell(c, i - t, j - l)
            return None

        key = "zero_padding" if self.rank == 3 else "zero_padding_1d"
        return write_copy_maps(ctx, self, out, source, axis,
                               lambda c: text(f"reshaping.{key}", step=ctx.step, name=self.name, kind=self.kind,
                                              which=which_text(self.rank == 2, c, x.channels, False),
                                              top=t, bottom=b, left=l, right=r),
                               text("reshaping.zero_padding_explain"), self.rank)


@handles("Cropping2D")
class Cropping2DWriter(LayerWriter):
    options = {"cropping": _non_negative_pairs, "data_format": DATA_FORMATS}

    def describe(self):
        (t, b), (l, r) = _pairs(self.config["cropping"])
        return text("describe.cropping", top=t, bottom=b, left=l, right=r)

    rank = 3

    def cuts(self):
        return _pairs(self.config["cropping"])

    def write(self, ctx, x):
        axis = check_layout(self, x, self.rank)
        (t, b), (l, r) = self.cuts()
        H, W = x.hw
        if t + b >= H or (self.rank == 3 and l + r >= W):
            self.refuse(f"cropping {self.config['cropping']} leaves nothing of the {H}×{W} map")
        out = x.chw()[:, t:H - b, l:W - r]
        key = "cropping" if self.rank == 3 else "cropping_1d"
        return write_copy_maps(ctx, self, out, lambda c, i, j: x.cell(c, i + t, j + l), axis,
                               lambda c: text(f"reshaping.{key}", step=ctx.step, name=self.name, kind=self.kind,
                                              which=which_text(self.rank == 2, c, x.channels, False),
                                              top=t, bottom=b, left=l, right=r),
                               text("reshaping.cropping_explain"), self.rank)


@handles("UpSampling2D")
class UpSampling2DWriter(LayerWriter):
    # 'bilinear', 'bicubic', 'lanczos3', 'lanczos5' and 'area' resample; only 'nearest' copies cells
    options = {"size": positive_ints, "data_format": DATA_FORMATS,
               "interpolation": lambda v, c: None if str(v).lower() == "nearest" else
                   f"interpolation={v!r} is not supported (supported: 'nearest')"}

    def describe(self):
        sh, sw = pair(self.config["size"])
        return text("describe.upsampling", sh=sh, sw=sw)

    rank = 3

    def sizes(self):
        return pair(self.config["size"])

    def write(self, ctx, x):
        axis = check_layout(self, x, self.rank)
        sh, sw = self.sizes()
        out = np.repeat(np.repeat(x.chw(), sh, axis=1), sw, axis=2)
        key = "upsampling" if self.rank == 3 else "upsampling_1d"
        return write_copy_maps(ctx, self, out, lambda c, i, j: x.cell(c, i // sh, j // sw), axis,
                               lambda c: text(f"reshaping.{key}", step=ctx.step, name=self.name, kind=self.kind,
                                              which=which_text(self.rank == 2, c, x.channels, False), sh=sh, sw=sw),
                               text("reshaping.upsampling_explain", sh=sh, sw=sw), self.rank)


def _target_rank(value, _config):
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        return f"target_shape={value!r} is not a tuple of ints"
    if len(shape) not in (1, 2, 3):
        return (f"target_shape={value!r} of rank {len(shape)} is not supported: xlcnn lays out vectors, "
                "signals (steps, channels) and image maps (height, width, channels)")
    return None


@handles("Reshape")
class ReshapeWriter(LayerWriter):
    options = {"target_shape": _target_rank}

    def describe(self):
        return text("describe.reshape", shape=tuple(self.config["target_shape"]))

    def write(self, ctx, x):
        target = tuple(int(v) for v in self.config["target_shape"])
        try:
            values = x.values.reshape(target)
        except ValueError:
            self.refuse(f"cannot reshape {x.values.shape} into {target}")
        refs = x.ref_array().reshape(target)
        book = ctx.book
        shape_text = "(" + ", ".join(map(str, values.shape)) + ")"
        if values.ndim == 1:
            name = ctx.sheet_name(self.name)
            sheet = book.add_sheet(name, text("reshaping.reshape_1d", step=ctx.step, name=self.name, shape=shape_text),
                                   text("reshaping.reshape_explain", order=""))
            sheet.label(FIRST_ROW - 1, FIRST_COL, text("reshaping.reshape_header"), book.fmt_header)
            origin = x.origin_array()
            if origin is not None:
                origin = origin.reshape(-1, origin.shape[-1])
                sheet.label(FIRST_ROW - 1, FIRST_COL + 1, text("reshaping.reshape_from"), book.fmt_header)
                sheet.ws.set_column(FIRST_COL + 1, FIRST_COL + 1, 22)
            for i, (r, v) in enumerate(zip(refs, values)):
                sheet.formula(FIRST_ROW + i, FIRST_COL, r, v)
                sheet.ws.write_number(FIRST_ROW + i, 0, i, book.fmt_axis)
                if origin is not None:
                    sheet.label(FIRST_ROW + i, FIRST_COL + 1, x.origin_text(origin[i]))
            return Tensor(self.name, values, None, [(name, FIRST_ROW, FIRST_COL)])
        fmt = ctx.next_data_format or self.spec.fact("image_data_format", "channels_last")
        rank = values.ndim
        axis = channel_axis(fmt, rank)
        chw_refs = Tensor(self.name, refs, axis, []).chw()
        where = text("reshaping.stored_sheets" if rank == 3 else "reshaping.stored_columns")
        order = text("reshaping.reshape_stored", data_format=fmt, axis=axis, shape=shape_text, where=where)
        chw = Tensor(self.name, values, axis, []).chw()
        return write_copy_maps(ctx, self, chw, lambda c, i, j: chw_refs[c, i, j], axis,
                               lambda c: text("reshaping.reshape_3d", step=ctx.step, name=self.name, shape=shape_text,
                                              which=which_text(rank == 2, c, values.shape[axis], False)),
                               text("reshaping.reshape_explain", order=order), rank)


# -- the 1-D twins: the same writers on signals (steps run down a column, see base.MapSheets) ----

def _pair_1d(value):
    """Keras's 1-D (before, after) from an int or a pair."""
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _non_negative_pair_1d(value, _config):
    try:
        if any(v < 0 for v in _pair_1d(value)):
            return f"{value!r} must not be negative"
    except (TypeError, ValueError):
        return f"{value!r} is not an int or a pair (before, after)"
    return None


@handles("ZeroPadding1D")
class ZeroPadding1DWriter(ZeroPadding2DWriter):
    rank = 2
    options = {"padding": _non_negative_pair_1d, "data_format": DATA_FORMATS}

    def pads(self):
        return _pair_1d(self.config["padding"]), (0, 0)

    def describe(self):
        before, after = _pair_1d(self.config["padding"])
        return text("describe.zero_padding_1d", before=before, after=after)


@handles("Cropping1D")
class Cropping1DWriter(Cropping2DWriter):
    """Keras's Cropping1D has no data_format: it cuts axis 1, the steps of a channels_last signal."""
    rank = 2
    options = {"cropping": _non_negative_pair_1d}

    def cuts(self):
        return _pair_1d(self.config["cropping"]), (0, 0)

    def describe(self):
        before, after = _pair_1d(self.config["cropping"])
        return text("describe.cropping_1d", before=before, after=after)


@handles("UpSampling1D")
class UpSampling1DWriter(UpSampling2DWriter):
    """Keras's UpSampling1D has no data_format: it repeats axis 1, the steps of a channels_last signal."""
    rank = 2
    options = {"size": lambda v, c: None if isinstance(v, int) and v >= 1 else f"size={v!r} must be a positive int"}

    def sizes(self):
        return int(self.config["size"]), 1

    def describe(self):
        return text("describe.upsampling_1d", n=self.config["size"])
