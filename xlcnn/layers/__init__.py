"""Per-layer formula writers, one module per layer family (named as in Keras's keras/src/layers/),
registered by the Keras classes they handle:

  conv.py              Conv1D, Conv2D
  conv_transpose.py    Conv1DTranspose, Conv2DTranspose
  depthwise.py         DepthwiseConv1D/2D, SeparableConv1D/2D
  pooling.py           Max/AveragePooling1D/2D, GlobalMax/GlobalAveragePooling1D/2D
  reshaping.py         ZeroPadding, Cropping, UpSampling (1-D and 2-D), Reshape
  core.py              Flatten, Dense, and the pass-through layers (Dropout & co.)
  activations.py       Activation, ReLU, LeakyReLU, PReLU, ELU, Softmax
  batch_normalization.py, layer_normalization.py, preprocessing.py (Normalization, Rescaling)
  merge.py             Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate

What they share: base.py (LayerWriter, registry, option checkers; the toolbox re-exported from
geometry.py, placement.py and stages.py), elementwise.py (parameter sheets), functions.py (the
activation functions as formulas and NumPy twins). CONTRIBUTING.md has the add-a-layer checklist.
"""

from . import (activations, batch_normalization, conv, conv_transpose, core, depthwise,  # noqa: F401
               layer_normalization, merge, pooling, preprocessing, reshaping)       # (importing registers them)
from .base import HANDLERS, Context, LayerWriter

__all__ = ["HANDLERS", "Context", "LayerWriter", "writer_for"]


def writer_for(spec):
    """The writer for a layer (a LayerSpec, see xlcnn/spec.py), or None when no writer claims its class."""
    cls = HANDLERS.get(spec.kind)
    return cls(spec) if cls else None
