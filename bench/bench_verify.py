"""Verify benchmark on the LeNet-size model: xlcnn's NumPy evaluation against LibreOffice's hard
recalculation, and images per second for a batch pushed through the workbook's own formulas.

    python bench/bench_verify.py [--images 200]

Prints figures; asserts nothing. (bench/bench_evaluator.py compares against the `formulas` package.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    from bench_build import lenet_size
    from PIL import Image

    from xlcnn.build import build
    from xlcnn.formula import evaluate, read_workbook
    from xlcnn.libreoffice import recalculate, soffice
    from xlcnn.verify import verify

    tmp = Path(tempfile.mkdtemp(prefix="xlcnn-bench-verify-"))
    model = lenet_size(tmp / "lenet_size.keras")
    book_path = tmp / "lenet_size.xlsx"
    build(model, ROOT / "samples" / "digits" / "digit_7.png", book_path)

    t = time.perf_counter()
    book = read_workbook(book_path)
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    evaluate(book)
    eval_s = time.perf_counter() - t
    print(f"LeNet-size workbook: {len(book.formulas):,} formulas")
    print(f"xlcnn read:     {read_s:6.2f} s")
    print(f"xlcnn evaluate: {eval_s:6.2f} s   (read + evaluate {read_s + eval_s:.2f} s)")
    if soffice():
        t = time.perf_counter()
        recalculate([book_path], tmp / "lo")
        lo_s = time.perf_counter() - t
        print(f"LibreOffice hard recalculation (start, load, recalc, save): {lo_s:6.2f} s")
        print(f"speed-up, read + evaluate vs LibreOffice: {lo_s / (read_s + eval_s):.1f}x")
    t = time.perf_counter()
    report = verify(book_path)
    print(f"whole verify (model load, read, evaluate, Keras, compare): {time.perf_counter() - t:.2f} s; "
          f"passed={report.passed}")

    rng = np.random.default_rng(0)
    folder = tmp / "images"
    folder.mkdir()
    digits = sorted((ROOT / "samples" / "digits").glob("*.png"))
    for i in range(args.images):
        img = np.asarray(Image.open(digits[i % len(digits)]).convert("L"), dtype=np.float64)
        noisy = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"img_{i:04d}.png")
    t = time.perf_counter()
    report = verify(book_path, images_dir=folder)
    total = time.perf_counter() - t
    print(f"batch of {report.images} images: formulas evaluated for all in {report.batch_seconds:.2f} s "
          f"({report.images / report.batch_seconds:,.0f} images/s); whole verify {total:.1f} s; "
          f"top-1 agreement {report.top1_agreement:.1%}, worst error/scale {report.batch_worst_error:.1e}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
