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

__version__ = "0.1.0"
