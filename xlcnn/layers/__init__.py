"""Per-layer formula writers, one module per layer family, registered by the Keras classes they handle.

To add a layer: write a LayerWriter subclass in the family's module, decorate it with
@handles("KerasClassName"), declare every config option it reproduces in `options`, and prove it
against Keras with a test in tests/test_layers.py.
"""

from . import conv, core, depthwise, merge, normalization, pooling, reshaping  # noqa: F401  (importing registers the writers)
from . import conv_transpose, layer_normalization  # noqa: F401
from .base import HANDLERS, Context, LayerWriter

__all__ = ["HANDLERS", "Context", "LayerWriter", "writer_for"]


def writer_for(spec):
    """The writer for a layer (a LayerSpec, see xlcnn/spec.py), or None when no writer claims its class."""
    cls = HANDLERS.get(spec.kind)
    return cls(spec) if cls else None
