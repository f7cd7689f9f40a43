"""xlcnn: a trained Keras CNN and one image become a live-formula Excel workbook, then proven right.

Rooms of the house:
  model.py        reading the Keras file and walking its layers
  image.py        turning an image file into the model's input tensor
  layers/         one module per layer family: the formula writers, registered by Keras class name
  layout.py       workbook layout: sheet names, tensor placement, styles, templates
  build.py        the build pipeline (check every layer, then write atomically)
  formula/        the independent formula evaluator (never imports the writers)
  verify.py       re-evaluates a workbook and compares every stage with Keras
  cli.py          the command line
"""

import os

__version__ = "0.1.0"

# TensorFlow runs channels_first (NCHW) convolutions and pooling on the CPU only through oneDNN, and
# turns oneDNN on by default only on CPUs with AVX-512 VNNI or AMX. Elsewhere (AMD EPYC with AVX2,
# older Intel) a channels_first Conv2D fails with "only supports the NHWC tensor format". Importing
# xlcnn asks for oneDNN before TensorFlow is imported, so every model runs on every machine; a user
# who set TF_ENABLE_ONEDNN_OPTS keeps their setting, and model.py names it if a layer then cannot run.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
