"""Build benchmark: time, cells written, cells per second, file size and peak memory.

    python bench/bench_build.py [--only lenet-size]

Models: the bundled samples, and a LeNet-size model (20@5x5 same, pool, 50@5x5 same, pool,
dense 500, dense 10; about 1.3 M cells) with random weights. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def lenet_size(path):
    from xlcnn.model import quiet_keras
    keras = quiet_keras()
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(20, 5, padding="same", activation="relu", name="conv1"),
        L.MaxPooling2D(2, name="pool1"),
        L.Conv2D(50, 5, padding="same", activation="relu", name="conv2"),
        L.MaxPooling2D(2, name="pool2"),
        L.Flatten(name="flatten"),
        L.Dense(500, activation="relu", name="fc1"),
        L.Dense(10, activation="softmax", name="fc2"),
    ])
    model.save(str(path))
    return path


def measure(model, image, out):
    from xlcnn.build import build
    tracemalloc.start()
    t = time.perf_counter()
    result = build(model, image, out, force=True)
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    cells = result.formulas + result.constants
    return dict(seconds=seconds, formulas=result.formulas, constants=result.constants, cells=cells,
                cells_per_s=cells / seconds, mb=result.bytes / 1e6, sheets=result.sheets,
                peak_py_mb=peak / 1e6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="run one model: lenet.keras, padding_cf.h5 or lenet-size")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xlcnn-bench-"))
    image = ROOT / "samples" / "digits" / "digit_7.png"
    models = {"lenet.keras": ROOT / "samples" / "lenet.keras", "padding_cf.h5": ROOT / "samples" / "padding_cf.h5"}
    if not args.only or args.only == "lenet-size":
        models["lenet-size"] = lenet_size(tmp / "lenet_size.keras")
    print(f"{'model':<14} {'seconds':>8} {'sheets':>7} {'formulas':>9} {'constants':>10} {'cells/s':>9} "
          f"{'MB':>6} {'peak py MB':>10}")
    for name, path in models.items():
        if args.only and args.only != name:
            continue
        m = measure(path, image, tmp / f"{name}.xlsx")
        print(f"{name:<14} {m['seconds']:8.2f} {m['sheets']:7d} {m['formulas']:9,d} {m['constants']:10,d} "
              f"{m['cells_per_s']:9,.0f} {m['mb']:6.1f} {m['peak_py_mb']:10.0f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS (TensorFlow included): {rss:.0f} MB")


if __name__ == "__main__":
    main()
