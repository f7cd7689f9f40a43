"""Build benchmark (issue #12): every figure next to its reference, from one run.

    python bench/bench_build.py [--repeat 3] [--only lenet-size] [--zip-levels]

Each measurement is a fresh process, as a user's `xlcnn build` is, timed from outside:
- floor: Python + importing Keras + loading the model (a process that imports xlcnn.model and
  loads the model, nothing else), the part of a build no workbook writer can remove;
- xlcnn build: `xlcnn build MODEL digit_7.png -o OUT.xlsx`; minus the floor, that is xlcnn's work;
- naive: bench/naive_xlsxwriter.py, plain XlsxWriter one write_number/write_formula call per cell,
  the same cell counts and formula shapes as the LeNet-size workbook.
Each figure is the fastest of --repeat runs (the machine is shared: read the ratios). Peak memory is
the process's peak RSS; "beyond the floor" subtracts the floor process's. Models: the bundled
samples, and a LeNet-size model (20@5x5 same, pool, 50@5x5 same, pool, dense 500, dense 10) with
random weights. --zip-levels also times deflate levels on the LeNet-size workbook's parts (the
level xlcnn.workbook.ZIP_LEVEL uses). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
IMAGE = ROOT / "samples" / "digits" / "digit_7.png"


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


# -- the measured processes ----------------------------------------------------------------------

def child(kind, args):
    """Runs in the measured process; prints one JSON line."""
    if kind != "naive":
        from xlcnn.memory import keep_freed_memory
        keep_freed_memory()  # as `xlcnn build` sets it (xlcnn/cli.py)
    t = time.perf_counter()
    out = {}
    if kind == "floor":
        from xlcnn import model as model_mod
        model_mod.load(args[0])
    elif kind == "build":
        from xlcnn.build import build
        marks = {}

        def progress(msg, *_count):  # the estimate is made once the model is loaded and checked
            if msg.startswith("estimate"):
                marks["loaded"] = time.perf_counter()
        r = build(args[0], args[1], args[2], force=True, progress=progress)
        out = dict(sheets=r.sheets, formulas=r.formulas, constants=r.constants, bytes=r.bytes,
                   after_load_s=time.perf_counter() - marks["loaded"])
    elif kind == "naive":
        sys.path.insert(0, str(ROOT / "bench"))
        import naive_xlsxwriter
        out = naive_xlsxwriter.write(Path(args[0]))
    out["inner_s"] = time.perf_counter() - t
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_once(kind, *args):
    """One fresh process: its wall seconds (start-up included) and its report."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", kind, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{kind} {args} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["s"] = seconds
    return report


def fastest(*kinds_args, repeat=1):
    """The fastest of `repeat` runs of each, the runs taken in turn (floor, build, floor, build...)
    so that the machine's load drifts over both alike."""
    best = [None] * len(kinds_args)
    for _ in range(repeat):
        for n, (kind, *args) in enumerate(kinds_args):
            report = run_once(kind, *args)
            if best[n] is None or report["s"] < best[n]["s"]:
                best[n] = report
    return best


def zip_levels(path, levels=(1, 3, 6, 9)):
    with zipfile.ZipFile(path) as z:
        parts = [z.read(n) for n in z.namelist()]
    raw = sum(map(len, parts))
    print(f"\ndeflate levels on {path.name}'s {raw / 1e6:.0f} MB of XML (xlcnn.workbook.ZIP_LEVEL chooses one):")
    for level in levels:
        t = time.perf_counter()
        size = 0
        for data in parts:
            c = zlib.compressobj(level, zlib.DEFLATED, -15)
            size += len(c.compress(data)) + len(c.flush())
        print(f"  level {level}: {time.perf_counter() - t:5.2f} s  {size / 1e6:6.1f} MB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="run one model: lenet.keras, padding_cf.h5 or lenet-size")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the fastest counts (default 3)")
    ap.add_argument("--zip-levels", action="store_true", help="also time deflate levels on the LeNet-size workbook")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1:])
    tmp = Path(tempfile.mkdtemp(prefix="xlcnn-bench-"))
    models = {"lenet.keras": ROOT / "samples" / "lenet.keras", "padding_cf.h5": ROOT / "samples" / "padding_cf.h5"}
    if not args.only or args.only == "lenet-size":
        models["lenet-size"] = lenet_size(tmp / "lenet_size.keras")
    rows = {}
    print(f"{'model':<14} {'floor s':>8} {'build s':>8} {'beyond':>7} {'loaded+':>7} {'sheets':>7} {'formulas':>9} "
          f"{'constants':>10} {'cells/s':>9} {'MB':>6} {'RSS MB':>7} {'beyond':>7}")
    for name, path in models.items():
        if args.only and args.only != name:
            continue
        floor, b = fastest(("floor", path), ("build", path, IMAGE, tmp / f"{name}.xlsx"), repeat=args.repeat)
        beyond = b["s"] - floor["s"]
        rows[name] = dict(floor=floor, build=b, beyond=beyond)
        cells = b["formulas"] + b["constants"]
        print(f"{name:<14} {floor['s']:8.2f} {b['s']:8.2f} {beyond:7.2f} {b['after_load_s']:7.2f} {b['sheets']:7d} "
              f"{b['formulas']:9,d} {b['constants']:10,d} {cells / max(beyond, 1e-3):9,.0f} {b['bytes'] / 1e6:6.1f} "
              f"{b['rss_mb']:7.0f} "
              f"{b['rss_mb'] - floor['rss_mb']:7.0f}")
    print("(floor: a fresh Python that imports Keras and loads the model; beyond: build minus floor; loaded+: the "
          "build's own time after its model is loaded, which the machine's noise disturbs less; cells/s over "
          "the time beyond the floor)")
    print()
    if "lenet-size" in rows:
        r = rows["lenet-size"]
        naive, = fastest(("naive", tmp / "naive.xlsx"), repeat=args.repeat)
        ratio = naive["s"] / max(r["beyond"], 1e-3)
        print(f"LeNet-size, xlcnn build beyond the floor: {r['beyond']:6.2f} s "
              f"(after loading: {r['build']['after_load_s']:.2f} s)   "
              f"naive XlsxWriter (bench/naive_xlsxwriter.py, {naive['formulas']:,} formulas, "
              f"{naive['constants']:,} constants): {naive['s']:6.2f} s   "
              f"ratio {ratio:.1f}x {'(goal >= 3x: met)' if ratio >= 3 else '(goal >= 3x: NOT met)'}")
    if "padding_cf.h5" in rows:
        r = rows["padding_cf.h5"]
        print(f"padding_cf.h5 (650 parameters), build beyond the floor: {r['beyond']:.2f} s "
              f"(after loading: {r['build']['after_load_s']:.2f} s) "
              f"{'(goal < 1 s: met)' if r['beyond'] < 1 else '(goal < 1 s: NOT met)'}")
    if args.zip_levels and "lenet-size" in rows:
        zip_levels(tmp / "lenet-size.xlsx")


if __name__ == "__main__":
    main()
