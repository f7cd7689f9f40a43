"""The command line: `xlcnn build MODEL IMAGE -o OUT.xlsx` and `xlcnn verify OUT.xlsx`.

Exit codes: 0 success (verify: the workbook matches Keras), 1 verify found a mismatch,
2 bad input or usage (one line on stderr, never a traceback), 3 an internal error.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .errors import XlcnnError
from .memory import keep_freed_memory


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"xlcnn: error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser():
    p = _Parser(prog="xlcnn", description="Turn a trained Keras CNN and one image into a live-formula "
                                          "Excel workbook, and prove the workbook right.")
    p.add_argument("--version", action="version", version=f"xlcnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("build", help="write the workbook for MODEL and IMAGE")
    b.add_argument("model", help="a .keras or .h5 model file, or a .json architecture (with --weights)")
    b.add_argument("image",
                   help="a png/jpg/bmp/gif image; a signal: a .csv (one column per channel, one row per "
                        "step, optional header row) or a PCM .wav (scaled to -1..1); or a .npy holding the "
                        "model input")
    b.add_argument("-o", "--output", required=True, help="the .xlsx file to write")
    b.add_argument("--weights", metavar="WEIGHTS.h5",
                   help="the weights (model.save_weights) for a MODEL.json written by model.to_json()")
    b.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    b.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                   help="invert the image (auto: for one-channel models when the ground is light)")
    b.add_argument("--scale", default=None,
                   help="multiply pixels by this (default 1/255; 1 for models that start with Rescaling)")
    b.add_argument("--lang", choices=["en", "ja"], default="en",
                   help="the language of the workbook's texts (titles, explanations); the terminal stays English")
    b.add_argument("--no-trace", action="store_true",
                   help="leave out the trace sheets (one per convolution, pooling and Dense stage, where you "
                        "type a channel, row and col and see how that output value is made)")
    b.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    v = sub.add_parser("verify", help="re-evaluate every formula and compare every stage with Keras")
    v.add_argument("workbook", help="an .xlsx written by xlcnn build")
    v.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    v.add_argument("--junit", metavar="FILE",
                   help="also write JUnit XML for CI: one testcase per stage and per workbook check")
    v.add_argument("--images", metavar="DIR", help="also run every image in DIR through the workbook")
    v.add_argument("--model", help="the model file (default: the one recorded in the workbook)")
    v.add_argument("--weights", metavar="WEIGHTS.h5",
                   help="the weights for a .json model (default: the ones recorded in the workbook)")
    v.add_argument("--image", help="compare for this input instead of the workbook's input cells")
    v.add_argument("--atol", type=float, default=None, help="absolute tolerance (default 1e-6)")
    v.add_argument("--rtol", type=float, default=None,
                   help="tolerance relative to each stage's scale, its largest |value| (default 1e-4)")
    v.add_argument("--engine", choices=["numpy", "libreoffice"], default="numpy",
                   help="who evaluates the formulas: xlcnn's NumPy engine or LibreOffice headless")
    v.add_argument("--no-keras", action="store_true",
                   help="check the workbook alone (evaluate every formula, cached values, constants, Excel's "
                        "limits) without TensorFlow; no stage is compared with the model")
    v.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def _progress(quiet):
    """Progress on a terminal only: one line per step, and for the stages a bar with counts."""
    if quiet or not sys.stderr.isatty():
        return None

    def show(msg, done=None, total=None):
        if done is None or not total:
            print(f"  … {msg}", file=sys.stderr, flush=True)
            return
        filled = round(20 * done / total)
        print(f"  [{'#' * filled}{'.' * (20 - filled)}] {done}/{total} {msg}", file=sys.stderr, flush=True)
    return show


def _build(args):
    from .build import build
    from .image import parse_scale
    scale = parse_scale(args.scale) if args.scale is not None else None
    result = build(args.model, args.image, args.output, force=args.force, invert=args.invert, scale=scale,
                   progress=_progress(args.quiet), weights=args.weights, lang=args.lang,
                   trace=not args.no_trace)
    if not args.quiet:
        for step in result.preprocessing:
            print(f"input: {step}")
        for note in result.notes:
            print(f"note: {note}")
        if result.estimate is not None:
            print(f"estimate before writing: {result.estimate.text()}")
            for warning in result.estimate.warnings():
                print(f"note: {warning}")
        if result.predicted is not None:
            what = "probability" if result.output_is_probability else "score"
            print(f"predicted class {result.predicted} ({what} {result.probability:.4f})")
        print(f"wrote {result.path}: {result.sheets} sheets, {result.formulas:,} formulas, "
              f"{result.constants:,} constants, longest formula {result.longest_formula:,} characters, "
              f"{result.bytes / 1e6:.2f} MB in {result.seconds:.1f} s")
    return 0


def _verify(args):
    from .verify import run_cli
    return run_cli(args, progress=_progress(args.quiet))


def main(argv=None):
    args = _parser().parse_args(argv)
    keep_freed_memory()  # the command's arrays reuse freed memory (xlcnn/memory.py)
    try:
        return _build(args) if args.command == "build" else _verify(args)
    except XlcnnError as exc:
        print(f"xlcnn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xlcnn: stopped; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("xlcnn: error: out of memory; try a smaller model or input", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"xlcnn: error: {exc.strerror or exc} ({exc.filename or 'file'}); nothing was written"
              if args.command == "build" else f"xlcnn: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug in xlcnn: still one line, with a way to see more
        if os.environ.get("XLCNN_DEBUG"):
            raise
        print(f"xlcnn: internal error: {type(exc).__name__}: {exc} (set XLCNN_DEBUG=1 for a traceback, "
              "and please report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
