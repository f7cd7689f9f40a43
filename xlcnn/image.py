"""Turning an input file into the model's input tensor, and saying what was done.

Images: grayscale or RGB to match the model, transparency flattened onto white, resized to the
model's height and width (Pillow, bilinear), optionally inverted (MNIST-style models want a light
digit on a dark ground, people draw dark on light), scaled (default 1/255), channels placed on the
axis the model expects; a (height, width) model input without a channel axis gets one grayscale plane.
Signals (`signals.py`): a .csv (one column per channel) or a .wav (PCM scaled to -1..1) for a model
input of shape (steps,), (steps, channels) or, channels_first, (channels, steps).
A .npy is the model input as is (a missing channel axis of size 1 is added).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from . import signals
from .errors import XlcnnError
from .layout import Said

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
MAX_PIXELS = 50_000_000  # refuse decompression bombs long before they are expanded


@dataclass
class Prepared:
    tensor: np.ndarray            # model input without the batch axis, float32
    steps: list = field(default_factory=list)   # what was done, in words (layout.Said: English, and the workbook's)
    preview: np.ndarray | None = None           # (H, W) or (H, W, 3) in 0..1 for the overview picture
    inverted: bool = False
    scale: float = 1 / 255
    source_size: tuple | None = None
    channel_names: list | None = None           # a CSV header's names (a WAV: left, right), per channel
    sample_rate: int | None = None              # a WAV's samples per second
    kind: str = "image"                         # image, npy, csv or wav


def parse_scale(text):
    """'1/255', '0.5', '1' -> float."""
    try:
        return float(Fraction(str(text)))
    except (ValueError, ZeroDivisionError):
        raise XlcnnError(f"--scale {text!r} is not a number; use for example 1/255 or 1") from None


def spatial_shape(input_shape, layout):
    """(height, width, channels) of a 3-D model input; (height, width, 1) of a 2-D one, a grayscale
    image without the channel axis (as old MNIST tutorials have), whatever the layout."""
    if len(input_shape) == 2:
        h, w = input_shape
        return h, w, 1
    if len(input_shape) != 3:
        raise XlcnnError(f"the model's input has shape {tuple(input_shape)}, not an image (height, width, channels); "
                         "give the input as a .npy of that shape" + (", a .csv (one column) or a .wav"
                                                                   if len(input_shape) == 1 else ""))
    if layout == "channels_first":
        c, h, w = input_shape
    else:
        h, w, c = input_shape
    return h, w, c


def _check_path(path):
    path = Path(path)
    if not path.exists():
        raise XlcnnError(f"input file not found: {path}; check the path")
    if path.is_dir():
        raise XlcnnError(f"input path {path} is a folder; give one image or signal file")
    if path.stat().st_size == 0:
        raise XlcnnError(f"input file {path} is empty")
    suffix = path.suffix.lower()
    if suffix != ".npy" and suffix not in IMAGE_SUFFIXES and suffix not in signals.SIGNAL_SUFFIXES:
        raise XlcnnError(f"input file {path} has the extension '{suffix}'; xlcnn reads images "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))}), signals (.csv, .wav) and .npy")
    return path


def _open_image(path):
    """Open and decode an image file, refusing decompression bombs from their header."""
    from PIL import Image, UnidentifiedImageError
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > MAX_PIXELS:
                raise Image.DecompressionBombError("too many pixels")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise XlcnnError(f"image {path} declares too many pixels for a safe load (limit {MAX_PIXELS:,}); "
                         "resize it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise XlcnnError(f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else 'not an image'}; "
                         "is it a valid PNG/JPEG/BMP/GIF?") from None
    return img


def _load_npy(path):
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise XlcnnError(f"cannot read {path} as a NumPy array: {str(exc).splitlines()[0]}") from None
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise XlcnnError(f"{path} must hold finite numbers")
    return arr


def check_input(path):
    """The cheap checks of an input file, made before the model is loaded (and TensorFlow imported):
    it exists, has a known kind, and decodes (an image: not a decompression bomb; a CSV: every cell a
    number, every row as long as the first; a WAV: uncompressed PCM, not truncated)."""
    path = _check_path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        _load_npy(path)
    elif suffix in signals.SIGNAL_SUFFIXES:
        signals.read_signal(path)
    else:
        _open_image(path)
    return path


def prepare(path, input_shape, layout, invert="auto", scale=None, default_scale=1 / 255):
    path = _check_path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _prepare_npy(path, input_shape, layout)
    if suffix in signals.SIGNAL_SUFFIXES:
        return _prepare_signal(path, input_shape, layout, invert, scale)
    plane = len(input_shape) == 2   # (height, width): a grayscale image without its channel axis
    h, w, c = spatial_shape(input_shape, layout)
    if c not in (1, 3):
        raise XlcnnError(f"the model expects {c} input channels; an image gives 1 (grayscale) or 3 (RGB): "
                         f"give the input as a .npy of shape {input_shape}")
    from PIL import Image
    img = _open_image(path)
    steps = [Said("preprocessing.read_image", file=path.name, w=img.width, h=img.height, format=img.format,
                  mode=img.mode)]
    source_size = (img.width, img.height)
    if getattr(img, "n_frames", 1) > 1:
        steps.append(Said("preprocessing.first_frame"))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(ground, rgba)
        steps.append(Said("preprocessing.transparency"))
    target_mode = "L" if c == 1 else "RGB"
    if img.mode != target_mode:
        img = img.convert(target_mode)
        steps.append(Said("preprocessing.to_grayscale" if c == 1 else "preprocessing.to_rgb"))
    if (img.width, img.height) != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
        steps.append(Said("preprocessing.resized", w=w, h=h))
    pixels = np.asarray(img, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    do_invert = _decide_invert(pixels, c, invert)
    if do_invert:
        pixels = 255.0 - pixels
        steps.append(Said("preprocessing.inverted", why=Said("preprocessing.invert_auto" if invert == "auto" else
                                                             "preprocessing.invert_yes")))
    elif invert == "auto" and c == 1:
        steps.append(Said("preprocessing.not_inverted"))
    factor = default_scale if scale is None else scale
    scaled = pixels * factor
    steps.append(Said("preprocessing.scaled", factor=_fraction_text(factor), lo=f"{scaled.min():.3g}",
                      hi=f"{scaled.max():.3g}"))
    if plane:
        tensor = scaled[:, :, 0]
        steps.append(Said("preprocessing.plane", shape=tuple(input_shape)))
    elif layout == "channels_first":
        tensor = np.moveaxis(scaled, 2, 0)
        steps.append(Said("preprocessing.channels_first_image"))
    else:
        tensor = scaled
    preview = pixels[:, :, 0] / 255.0 if c == 1 else pixels / 255.0
    return Prepared(tensor.astype(np.float32), steps, preview, do_invert, factor, source_size)


def _fraction_text(factor):
    frac = Fraction(factor).limit_denominator(100000)
    return f"{frac.numerator}/{frac.denominator}" if frac.denominator != 1 else str(frac.numerator)


def _decide_invert(pixels, channels, invert):
    if invert == "yes":
        return True
    if invert == "no":
        return False
    if channels != 1:  # colour models are trained on natural images: never guess
        return False
    border = np.concatenate([pixels[0, :, 0], pixels[-1, :, 0], pixels[:, 0, 0], pixels[:, -1, 0]])
    return float(np.mean(border)) > 127.5


def _prepare_npy(path, input_shape, layout="channels_last"):
    arr = _load_npy(path)
    shape = tuple(input_shape)
    if arr.shape == (1, *shape):
        arr = arr[0]
    steps = [Said("preprocessing.read_npy", file=path.name, shape=arr.shape, dtype=arr.dtype)]
    # a (steps,) signal for a (steps, 1) model, a (28, 28) picture for a (28, 28, 1) one: the one
    # channel's axis is added where the model has it
    channel_axis = 0 if layout == "channels_first" else len(shape) - 1
    if len(shape) >= 2 and shape[channel_axis] == 1 and arr.shape == shape[:channel_axis] + shape[channel_axis + 1:]:
        arr = np.expand_dims(arr, channel_axis)
        steps.append(Said("preprocessing.npy_channel_axis", shape=arr.shape))
    if arr.shape != shape:
        hint = ""
        if len(shape) == 2 and arr.shape == shape[::-1] and shape[0] != shape[1]:
            hint = (f"; it looks transposed: the model ({layout}) wants "
                    + ("(channels, steps)" if layout == "channels_first" else "(steps, channels)"))
        raise XlcnnError(f"{path} holds an array of shape {arr.shape}; the model expects {shape} "
                         f"(or {(1, *shape)} with the batch axis){hint}")
    preview = None
    if arr.ndim == 3:
        c_last = arr if arr.shape[-1] in (1, 3) else np.moveaxis(arr, 0, -1)
        if c_last.shape[-1] in (1, 3):
            lo, hi = float(c_last.min()), float(c_last.max())
            norm = (c_last - lo) / (hi - lo) if hi > lo else np.zeros_like(c_last, dtype=np.float64)
            preview = norm[:, :, 0] if c_last.shape[-1] == 1 else norm
    return Prepared(arr.astype(np.float32), steps, preview, False, 1.0, None, kind="npy")


def _prepare_signal(path, input_shape, layout, invert, scale):
    """A .csv or .wav for a (steps,), (steps, channels) or (channels, steps) model input. The values
    are used as read (a WAV's PCM scaled to -1..1); --scale, when given, multiplies them too."""
    what = "WAV" if path.suffix.lower() == ".wav" else "CSV"
    if invert == "yes":
        raise XlcnnError(f"--invert yes applies to images; {path} is a signal, used as read: leave --invert out")
    sig = signals.read_signal(path)
    values, placed = signals.place(sig, path, input_shape, layout, what)
    steps = [sig.described, *sig.notes]
    factor = 1.0 if scale is None else scale
    if scale is not None:
        values = values * factor
        steps.append(Said("preprocessing.scaled_signal", factor=_fraction_text(factor), lo=f"{values.min():.4g}",
                          hi=f"{values.max():.4g}"))
    elif what == "CSV":
        steps.append(Said("preprocessing.as_is"))
    steps += placed
    return Prepared(values.astype(np.float32), steps, None, False, factor, None, channel_names=sig.names,
                    sample_rate=sig.sample_rate, kind=what.lower())
