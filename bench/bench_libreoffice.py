"""What opening a workbook costs in LibreOffice (issue #12): hard-recalculation time and peak memory
against sheets, formulas and constants, and a linear fit of both.

    python bench/bench_libreoffice.py [--quick] [--check WORKBOOK.xlsx ...]

Synthetic xlcnn workbooks are built from tiny models with random weights (input H x H x 1,
Conv2D(C, 3, same, relu), MaxPooling2D(2), Conv2D(C, 3, same, relu), GlobalAveragePooling2D,
Dense(D, relu), Dense(10)): more channels C give more sheets, a larger H more formulas per sheet,
a wider D more constants.
Each is recalculated from scratch by LibreOffice headless (the throwaway profile of
xlcnn/libreoffice.py, OOXMLRecalcMode = 0), one file per start, under /usr/bin/time -v: wall
seconds and the peak RSS of the process tree. Then seconds and MB are fitted as
    a + b * sheets + c * formulas + d * constants
(least squares), the model xlcnn/limits.py states in the build estimate; the figures it uses are
printed as Python to paste there. --check adds workbooks (e.g. the LeNet-size one from
bench_build.py) to compare with the fit, without fitting on them. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# (channels, input size, dense units): spans sheets, formulas per sheet and constants apart
GRID = [(2, 16, 10), (16, 16, 10), (48, 8, 10), (64, 8, 10), (4, 64, 10), (16, 16, 8000), (16, 48, 10)]
QUICK = [(2, 16, 10), (48, 8, 10), (4, 48, 10), (16, 16, 4000)]


def make_model(path, c, h, d):
    from xlcnn.model import quiet_keras
    keras = quiet_keras()
    keras.utils.set_random_seed(0)
    L = keras.layers
    keras.Sequential([keras.Input((h, h, 1)), L.Conv2D(c, 3, padding="same", activation="relu"),
                      L.MaxPooling2D(2), L.Conv2D(c, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(),
                      L.Dense(d, activation="relu"), L.Dense(10, activation="softmax")]).save(str(path))
    return path


def counts(xlsx):
    """sheets, formulas, constants and MB of a workbook, read from its XML."""
    sheets = formulas = numbers = 0
    with zipfile.ZipFile(xlsx) as z:
        for name in z.namelist():
            if name.startswith("xl/worksheets/sheet"):
                xml = z.read(name)
                sheets += 1
                formulas += xml.count(b"<f>")
                numbers += len(re.findall(rb'<c r="[A-Z]+\d+" s="\d+"><v>', xml))
    return sheets, formulas, numbers, Path(xlsx).stat().st_size / 1e6


def recalc(xlsx, outdir):
    """LibreOffice's hard recalculation of one workbook: (wall seconds, peak RSS MB)."""
    code = ("import sys; from xlcnn.libreoffice import recalculate; "
            "recalculate([sys.argv[1]], sys.argv[2], timeout=3000)")
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", code, str(xlsx), str(outdir)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"LibreOffice failed on {xlsx}:\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    h, m, s = wall.groups()
    seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    return seconds, rss


def fit(rows):
    X = np.array([[1.0, r["sheets"], r["formulas"], r["constants"]] for r in rows])
    out = {}
    for what in ("seconds", "mb"):
        y = np.array([r[what] for r in rows])
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        out[what] = coef
    return out


def predict(coef, r):
    return float(coef @ np.array([1.0, r["sheets"], r["formulas"], r["constants"]]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="four workbooks instead of eight")
    ap.add_argument("--check", nargs="*", default=[], help="workbooks to compare with the fit")
    args = ap.parse_args()
    from xlcnn.build import build
    from xlcnn.libreoffice import soffice
    if soffice() is None:
        raise SystemExit("LibreOffice is not installed (apt-get install libreoffice-calc-nogui)")
    tmp = Path(tempfile.mkdtemp(prefix="xlcnn-lo-bench-"))
    image = ROOT / "samples" / "digits" / "digit_7.png"
    rows = []
    print(f"{'workbook':<22} {'sheets':>6} {'formulas':>9} {'constants':>10} {'MB':>6} {'LO s':>7} {'LO peak MB':>10}")

    def measure(name, xlsx, fitted=True):
        sheets, formulas, constants, mb = counts(xlsx)
        seconds, rss = recalc(xlsx, tmp / "out")
        row = dict(name=name, sheets=sheets, formulas=formulas, constants=constants, seconds=seconds, mb=rss,
                   fitted=fitted)
        rows.append(row)
        print(f"{name:<22} {sheets:6d} {formulas:9,d} {constants:10,d} {mb:6.1f} {seconds:7.1f} {rss:10.0f}",
              flush=True)

    for c, h, d in (QUICK if args.quick else GRID):
        name = f"c{c} {h}x{h} dense{d}"
        model = make_model(tmp / f"m_{c}_{h}_{d}.keras", c, h, d)
        xlsx = tmp / f"m_{c}_{h}_{d}.xlsx"
        build(model, image, xlsx)
        measure(name, xlsx)
    for path in args.check:
        measure(Path(path).name[:22], Path(path), fitted=False)
    coef = fit([r for r in rows if r["fitted"]])
    s, m = coef["seconds"], coef["mb"]
    print(f"\nfit: seconds = {s[0]:.2f} + {s[1]:.4f} x sheets + {s[2] * 1e6:.1f} x formulas/1e6 "
          f"+ {s[3] * 1e6:.2f} x constants/1e6")
    print(f"     peak MB = {m[0]:.0f} + {m[1]:.3f} x sheets + {m[2] * 1e3:.3f} x formulas/1e3 "
          f"+ {m[3] * 1e3:.4f} x constants/1e3")
    print(f"{'workbook':<22} {'LO s':>7} {'fit s':>7} {'LO MB':>7} {'fit MB':>7}")
    for r in rows:
        print(f"{r['name']:<22} {r['seconds']:7.1f} {predict(s, r):7.1f} {r['mb']:7.0f} {predict(m, r):7.0f}"
              f"{'' if r['fitted'] else '   (not fitted on)'}")
    print("\n# for xlcnn/limits.py")
    print(f"LO_SECONDS = ({s[0]:.3g}, {s[1]:.3g}, {s[2]:.3g}, {s[3]:.3g})   # start, per sheet, formula, constant")
    print(f"LO_MB = ({m[0]:.3g}, {m[1]:.3g}, {m[2]:.3g}, {m[3]:.3g})")


if __name__ == "__main__":
    main()
