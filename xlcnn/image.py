"""Turning an image file (or a .npy) into the model's input tensor, and saying what was done.

Images: grayscale or RGB to match the model, transparency flattened onto white, resized to the
model's height and width (Pillow, bilinear), optionally inverted (MNIST-style models want a light
digit on a dark ground, people draw dark on light), scaled (default 1/255), channels placed on the
axis the model expects.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import XlcnnError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
MAX_PIXELS = 50_000_000  # refuse decompression bombs long before they are expanded


@dataclass
class Prepared:
    tensor: np.ndarray            # model input without the batch axis, float32
    steps: list = field(default_factory=list)   # what was done, in words
    preview: np.ndarray | None = None           # (H, W) or (H, W, 3) in 0..1 for the overview picture
    inverted: bool = False
    scale: float = 1 / 255
    source_size: tuple | None = None


def parse_scale(text):
    """'1/255', '0.5', '1' -> float."""
    try:
        return float(Fraction(str(text)))
    except (ValueError, ZeroDivisionError):
        raise XlcnnError(f"--scale {text!r} is not a number; use for example 1/255 or 1") from None


def spatial_shape(input_shape, layout):
    """(height, width, channels) of a 3-D model input."""
    if len(input_shape) != 3:
        raise XlcnnError(f"the model's input has shape {input_shape}, not an image (height, width, channels); "
                         "give the input as a .npy of that shape")
    if layout == "channels_first":
        c, h, w = input_shape
    else:
        h, w, c = input_shape
    return h, w, c


def _check_path(path):
    path = Path(path)
    if not path.exists():
        raise XlcnnError(f"image file not found: {path}; check the path")
    if path.is_dir():
        raise XlcnnError(f"image path {path} is a folder; give one image file")
    if path.stat().st_size == 0:
        raise XlcnnError(f"image file {path} is empty")
    suffix = path.suffix.lower()
    if suffix != ".npy" and suffix not in IMAGE_SUFFIXES:
        raise XlcnnError(f"image file {path} has the extension '{suffix}'; xlcnn reads "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))} and .npy")
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
    it exists, has a known kind, and decodes (an image: not a decompression bomb)."""
    path = _check_path(path)
    if path.suffix.lower() == ".npy":
        _load_npy(path)
    else:
        _open_image(path)
    return path


def prepare(path, input_shape, layout, invert="auto", scale=None, default_scale=1 / 255):
    path = _check_path(path)
    if path.suffix.lower() == ".npy":
        return _prepare_npy(path, input_shape)
    h, w, c = spatial_shape(input_shape, layout)
    if c not in (1, 3):
        raise XlcnnError(f"the model expects {c} input channels; an image gives 1 (grayscale) or 3 (RGB): "
                         f"give the input as a .npy of shape {input_shape}")
    from PIL import Image
    img = _open_image(path)
    steps = [f"read {path.name}: {img.width}×{img.height} {img.format} ({img.mode})"]
    source_size = (img.width, img.height)
    if getattr(img, "n_frames", 1) > 1:
        steps.append("used the first frame")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(ground, rgba)
        steps.append("flattened transparency onto white")
    target_mode = "L" if c == 1 else "RGB"
    if img.mode != target_mode:
        img = img.convert(target_mode)
        steps.append("converted to grayscale" if c == 1 else "converted to RGB")
    if (img.width, img.height) != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
        steps.append(f"resized to {w}×{h} (bilinear)")
    pixels = np.asarray(img, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    do_invert = _decide_invert(pixels, c, invert)
    if do_invert:
        pixels = 255.0 - pixels
        steps.append("inverted (255 − v): " + ("the ground is light and the model expects a dark ground"
                                               if invert == "auto" else "--invert yes"))
    elif invert == "auto" and c == 1:
        steps.append("not inverted: the ground is already dark")
    factor = default_scale if scale is None else scale
    scaled = pixels * factor
    steps.append(f"scaled by {_fraction_text(factor)} (values {scaled.min():.3g}..{scaled.max():.3g})")
    tensor = np.moveaxis(scaled, 2, 0) if layout == "channels_first" else scaled
    if layout == "channels_first":
        steps.append("channels first: (channels, height, width)")
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


def _prepare_npy(path, input_shape):
    arr = _load_npy(path)
    if arr.shape == (1, *input_shape):
        arr = arr[0]
    if arr.shape != tuple(input_shape):
        raise XlcnnError(f"{path} holds an array of shape {arr.shape}; the model expects {tuple(input_shape)} "
                         f"(or {(1, *input_shape)} with the batch axis)")
    steps = [f"read {path.name}: array {arr.shape} {arr.dtype}, used as is (no resizing, inversion or scaling)"]
    preview = None
    if arr.ndim == 3:
        c_last = arr if arr.shape[-1] in (1, 3) else np.moveaxis(arr, 0, -1)
        if c_last.shape[-1] in (1, 3):
            lo, hi = float(c_last.min()), float(c_last.max())
            norm = (c_last - lo) / (hi - lo) if hi > lo else np.zeros_like(c_last, dtype=np.float64)
            preview = norm[:, :, 0] if c_last.shape[-1] == 1 else norm
    return Prepared(arr.astype(np.float32), steps, preview, False, 1.0, None)
