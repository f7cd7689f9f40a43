"""Benchmark of xlcnn.formula: write a LeNet-sized workbook of live formulas with XlsxWriter, read
it back and recalculate it, check it against a NumPy forward pass, and print the figures.

    python bench/bench_evaluator.py                 # LeNet-sized workbook
    python bench/bench_evaluator.py --batch 32      # plus one batched pass of 32 inputs
    python bench/bench_evaluator.py --formulas      # plus the `formulas` package on a conv-only book

Only prints; never asserts on times.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import xlsxwriter
from xlsxwriter.utility import xl_range_abs, xl_rowcol_to_cell

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from xlcnn.formula import evaluate, read_workbook  # noqa: E402

R0, C0 = 3, 1  # every grid starts at B4


def q(sheet):
    return "'" + sheet.replace("'", "''") + "'"


def cell(r, c, row_abs=False, col_abs=False):
    return xl_rowcol_to_cell(r, c, row_abs, col_abs)


def rng(r0, c0, r1, c1):
    return f"{cell(r0, c0)}:{cell(r1, c1)}"


class Net:
    """Weights of the benchmark network (seeded), and its NumPy forward pass."""

    def __init__(self, size=28, c1=20, c2=50, dense=500, classes=10, k=5, seed=0):
        g = np.random.default_rng(seed)
        self.size, self.k = size, k
        self.w1 = g.normal(0, np.sqrt(2 / (k * k)), (c1, 1, k, k))
        self.b1 = g.normal(0, 0.05, c1)
        self.w2 = g.normal(0, np.sqrt(2 / (k * k * c1)), (c2, c1, k, k))
        self.b2 = g.normal(0, 0.05, c2)
        flat = (size // 4) ** 2 * c2
        self.wd = g.normal(0, np.sqrt(2 / flat), (flat, dense))
        self.bd = g.normal(0, 0.05, dense)
        self.wo = g.normal(0, np.sqrt(1 / dense), (classes, dense))
        self.bo = g.normal(0, 0.05, classes)

    @staticmethod
    def conv_same(x, w, b):  # x (cin, H, W), w (cout, cin, k, k): cross-correlation, zero padding
        k = w.shape[-1]
        p = k // 2
        xp = np.pad(x, ((0, 0), (p, p), (p, p)))
        H, W = x.shape[1:]
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))  # cin,H,W,k,k
        return np.einsum("chwij,ocij->ohw", win[:, :H, :W], w) + b[:, None, None]

    @staticmethod
    def pool(x):
        c, h, w = x.shape
        return x.reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))

    def forward(self, img):
        from math import erf
        a = np.maximum(0, self.conv_same(img[None], self.w1, self.b1))
        a = self.pool(a)
        a = np.maximum(0, self.pool(self.conv_same(a, self.w2, self.b2)))
        flat = a.transpose(1, 2, 0).reshape(-1)  # channels last, like Keras' Flatten
        d = flat @ self.wd + self.bd
        d = 0.5 * d * (1 + np.vectorize(erf)(d / np.sqrt(2)))
        z = self.wo @ d + self.bo
        e = np.exp(z - z.max())
        return e / e.sum()


def conv_formula(out_r, out_c, in_sheets, wsheet, wrow, size, k):
    """Clipped 'same' window: border cells read a smaller block of input and kernel."""
    p = k // 2
    y0, y1 = max(out_r - p, 0), min(out_r + p, size - 1)
    x0, x1 = max(out_c - p, 0), min(out_c + p, size - 1)
    ky0, kx0 = y0 - (out_r - p), x0 - (out_c - p)
    terms = []
    for i, src in enumerate(in_sheets):
        a = rng(R0 + y0, C0 + x0, R0 + y1, C0 + x1)
        wc = 2 + i * k
        wr = xl_range_abs(wrow + ky0, wc + kx0, wrow + ky0 + y1 - y0, wc + kx0 + x1 - x0)
        terms.append(f"SUMPRODUCT({q(src)}!{a},{q(wsheet)}!{wr})")
    return "+".join(terms) + f"+{q(wsheet)}!{cell(wrow, 1, True, True)}"


def write_lenet(path, net, img, conv_only=False, conv_channels=None):
    wb = xlsxwriter.Workbook(path)
    size, k = net.size, net.k
    inp = "01 input c0"
    ws = wb.add_worksheet(inp)
    ws.write(0, 0, "input channel 0")
    for y in range(size):
        ws.write_row(R0 + y, C0, img[y].tolist())

    def weight_sheet(name, w, b):
        ws = wb.add_worksheet(name)
        ws.write(0, 0, name)
        for o in range(w.shape[0]):
            r = 4 + o * (k + 1)
            ws.write(r, 1, b[o])
            for i in range(w.shape[1]):
                for ky in range(k):
                    ws.write_row(r + ky, 2 + i * k, w[o, i, ky].tolist())

    def conv_layer(prefix, wname, w, ins, size):
        names = []
        for o in range(w.shape[0]):
            name = f"{prefix} c{o}"
            ws = wb.add_worksheet(name)
            ws.write(0, 0, name)
            for y in range(size):
                for x in range(size):
                    ws.write_formula(R0 + y, C0 + x, "=" + conv_formula(y, x, ins, wname, 4 + o * (k + 1), size, k))
            names.append(name)
        return names

    def grid_layer(prefix, srcs, size, make):
        names = []
        for o, src in enumerate(srcs):
            name = f"{prefix} c{o}"
            ws = wb.add_worksheet(name)
            ws.write(0, 0, name)
            for y in range(size):
                for x in range(size):
                    ws.write_formula(R0 + y, C0 + x, "=" + make(q(src), y, x))
            names.append(name)
        return names

    w1 = net.w1 if conv_channels is None else net.w1[:conv_channels]
    weight_sheet("w conv1", w1, net.b1)
    conv1 = conv_layer("02 conv", "w conv1", w1, [inp], size)
    if conv_only:
        wb.close()
        return
    relu1 = grid_layer("03 relu", conv1, size, lambda s, y, x: f"MAX(0,{s}!{cell(R0 + y, C0 + x)})")
    half = size // 2
    pool1 = grid_layer("04 pool", relu1, half,
                       lambda s, y, x: f"MAX({s}!{rng(R0 + 2 * y, C0 + 2 * x, R0 + 2 * y + 1, C0 + 2 * x + 1)})")
    weight_sheet("w conv2", net.w2, net.b2)
    conv2 = conv_layer("05 conv", "w conv2", net.w2, pool1, half)
    quarter = half // 2
    pool2 = grid_layer("06 pool", conv2, quarter,
                       lambda s, y, x: f"MAX(0,{s}!{rng(R0 + 2 * y, C0 + 2 * x, R0 + 2 * y + 1, C0 + 2 * x + 1)})")
    ws = wb.add_worksheet("07 flatten")
    n_flat = quarter * quarter * len(pool2)
    for y in range(quarter):
        for x in range(quarter):
            for o, src in enumerate(pool2):
                ws.write_formula(R0 + (y * quarter + x) * len(pool2) + o, 1, f"={q(src)}!{cell(R0 + y, C0 + x)}")
    ws = wb.add_worksheet("w dense")
    ws.write_row(3, 2, net.bd.tolist())
    for r in range(n_flat):
        ws.write_row(4 + r, 2, net.wd[r].tolist())
    ws = wb.add_worksheet("08 dense")
    flat_rng = xl_range_abs(R0, 1, R0 + n_flat - 1, 1)
    for j in range(net.wd.shape[1]):
        col = 2 + j
        w = f"{cell(4, col, True, False)}:{cell(4 + n_flat - 1, col, True, False)}"
        ws.write_formula(3, col, f"=SUMPRODUCT('07 flatten'!{flat_rng},'w dense'!{w})+'w dense'!{cell(3, col, True)}")
        ws.write_formula(4, col, f"=0.5*{cell(3, col)}*(1+ERF({cell(3, col)}/SQRT(2)))")
    ws = wb.add_worksheet("w dense2")
    for i in range(net.wo.shape[0]):
        ws.write(4 + i, 1, net.bo[i])
        ws.write_row(4 + i, 2, net.wo[i].tolist())
    ws = wb.add_worksheet("09 dense2")
    dense_out = xl_range_abs(4, 2, 4, 1 + net.wd.shape[1])
    for i in range(net.wo.shape[0]):
        w = f"{cell(4 + i, 2, False, True)}:{cell(4 + i, 1 + net.wd.shape[1], False, True)}"
        ws.write_formula(R0 + i, 1, f"=SUMPRODUCT('08 dense'!{dense_out},'w dense2'!{w})+'w dense2'!{cell(4 + i, 1, False, True)}")
    ws = wb.add_worksheet("10 softmax")
    n = net.wo.shape[0]
    col_b = xl_range_abs(R0, 1, R0 + n - 1, 1)
    col_c = xl_range_abs(R0, 2, R0 + n - 1, 2)
    for i in range(n):
        ws.write_formula(R0 + i, 1, f"='09 dense2'!{cell(R0 + i, 1)}")
        ws.write_formula(R0 + i, 2, f"=EXP({cell(R0 + i, 1)}-MAX({col_b}))")
        ws.write_formula(R0 + i, 3, f"={cell(R0 + i, 2)}/SUM({col_c})")
    wb.close()


def input_overrides(imgs, size):
    """{('01 input c0', row, col): values over the batch}."""
    return {("01 input c0", R0 + y, C0 + x): imgs[:, y, x] for y in range(size) for x in range(size)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="workbook path (default: a temporary file)")
    ap.add_argument("--reuse", action="store_true", help="reuse --out if it exists")
    ap.add_argument("--batch", type=int, default=0, help="also evaluate a batch of B inputs")
    ap.add_argument("--formulas", action="store_true",
                    help="also time the `formulas` package on a conv-only workbook")
    ap.add_argument("--formulas-channels", type=int, default=7,
                    help="conv channels of that workbook (7 x 28 x 28 = 5,488 SUMPRODUCT cells)")
    args = ap.parse_args()

    net = Net()
    g = np.random.default_rng(1)
    img = g.random((net.size, net.size))
    tmp = tempfile.mkdtemp(prefix="xlcnn-bench-")
    path = args.out or os.path.join(tmp, "lenet.xlsx")
    if not (args.reuse and os.path.exists(path)):
        t = time.perf_counter()
        write_lenet(path, net, img)
        print(f"wrote {path} with XlsxWriter in {time.perf_counter() - t:.1f} s "
              f"({os.path.getsize(path) / 1e6:.1f} MB)")

    t = time.perf_counter()
    book = read_workbook(path)
    t_read = time.perf_counter() - t
    n_const = len(book.constants)
    n_form = len(book.formulas)
    res = evaluate(book)
    t_eval = res.seconds
    res2 = evaluate(book)  # compiled plan reused
    probs = np.array([res.value("10 softmax", R0 + i, 3) for i in range(10)])
    err = np.abs(probs - net.forward(img)).max()
    print(f"sheets           {len(book.sheets)}")
    print(f"cells read       {n_const + n_form:,} ({n_const:,} constants, {n_form:,} formulas)")
    print(f"read             {t_read:.2f} s")
    print(f"evaluate         {t_eval:.2f} s first (compile + run), {res2.seconds:.2f} s again")
    print(f"read + evaluate  {t_read + t_eval:.2f} s  -> {(n_const + n_form) / (t_read + t_eval):,.0f} cells/s, "
          f"{n_form / t_eval:,.0f} formulas/s")
    print(f"max |softmax - numpy| = {err:.2e}")

    if args.batch:
        imgs = g.random((args.batch, net.size, net.size))
        res_b = evaluate(book, input_overrides(imgs, net.size))
        probs = np.stack([res_b.value("10 softmax", R0 + i, 3) for i in range(10)], 1)
        ref = np.stack([net.forward(x) for x in imgs])
        print(f"batched B={args.batch}: {res_b.seconds:.2f} s ({args.batch / res_b.seconds:.1f} images/s), "
              f"max |softmax - numpy| = {np.abs(probs - ref).max():.2e}")

    if args.formulas:
        bench_formulas_package(net, img, tmp, args.formulas_channels)


def bench_formulas_package(net, img, tmp, channels):
    try:
        import formulas
    except ImportError:
        print("`formulas` is not installed (pip install formulas); skipped")
        return
    path = os.path.join(tmp, "conv.xlsx")
    write_lenet(path, net, img, conv_only=True, conv_channels=channels)
    t = time.perf_counter()
    book = read_workbook(path)
    res = evaluate(book)
    ours = time.perf_counter() - t
    n = len(book.formulas)
    t = time.perf_counter()
    model = formulas.ExcelModel().loads(path).finish()
    sol = model.calculate()
    theirs = time.perf_counter() - t
    # spot-check one cell against the other engine
    key = next(k for k in sol if k.upper().endswith("'[CONV.XLSX]02 CONV C0'!C5"))
    other = float(np.asarray(sol[key].value).ravel()[0])
    mine = res.value("02 conv c0", 4, 2)
    print(f"conv-only workbook: {n:,} SUMPRODUCT formulas")
    print(f"  xlcnn.formula  read + evaluate {ours:.2f} s")
    print(f"  formulas       load + calculate {theirs:.2f} s")
    print(f"  speed ratio    {theirs / ours:,.0f}x   (cell C5: {mine:.12g} vs {other:.12g})")


if __name__ == "__main__":
    main()
