"""xlcnn verify: re-evaluate every formula of a workbook and compare every stage with Keras.

Independent of the writers by design: it reads the formulas back from the file (xlcnn.formula),
finds the tensors through the manifest sheet, and runs the Keras model itself. It never trusts the
cached values; it checks them too, since a stale cached value shows a wrong number to anyone who
opens the file without recalculating.

Tolerance: Keras computes in float32, the workbook in float64. A float32 result carries a relative
rounding error of about 6e-8 per operation, which grows with the number of terms summed and the
depth of the stack; measured differences on the samples are around 1e-7 of a layer's scale. The
default, |workbook - keras| <= atol + rtol * scale with rtol = 1e-4 and atol = 1e-6 (scale = the
largest |value| Keras gives for that layer), leaves a hundredfold margin for deeper models while a
wrong formula, weight or padding shows errors of the order of the scale itself.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import manifest as mf
from .formula import cell_name
from .errors import XlcnnError

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-6
CACHED_RTOL = 1e-9

PORTABLE_FUNCTIONS = {
    "SUMPRODUCT", "SUM", "MAX", "MIN", "AVERAGE", "EXP", "LN", "LOG10", "TANH", "SQRT", "ABS", "IF",
    "ERF", "POWER", "COUNT", "MATCH", "INDEX", "ROUND", "INT", "SIGN", "AND", "OR", "NOT",
}
EXCEL_MAX_FORMULA = 8192
EXCEL_MAX_ARGS = 255
EXCEL_MAX_NESTING = 64
_BAD_SHEET = re.compile(r"[\\/?*\[\]:]")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".npy", ".csv", ".wav"}


@dataclass
class StageResult:
    layer: str
    klass: str
    shape: tuple
    max_abs_error: float
    max_rel_error: float
    normalized_error: float
    scale: float
    passed: bool
    worst_cell: str = ""
    workbook_value: float = 0.0
    keras_value: float = 0.0
    message: str = ""


@dataclass
class Report:
    workbook: str
    model: str
    engine: str
    passed: bool = True
    evaluate_seconds: float = 0.0
    formulas: int = 0
    stages: list = field(default_factory=list)
    first_failure: str | None = None
    cached_checked: bool = False
    cached_mismatches: int = 0
    cached_examples: list = field(default_factory=list)
    constant_cells: list = field(default_factory=list)
    lint: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    predicted_workbook: int | None = None
    predicted_keras: int | None = None
    images: int = 0
    top1_agreement: float | None = None
    batch_worst_error: float | None = None
    batch_seconds: float | None = None
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    def to_dict(self):
        d = asdict(self)
        d["stages"] = [dict(asdict(s), shape=list(s.shape)) for s in self.stages]
        return d

    def to_dataframe(self):
        import pandas as pd
        return pd.DataFrame([asdict(s) for s in self.stages])


# -- reading ------------------------------------------------------------------------------------

def _open(path):
    from .formula import FormulaError, read_workbook
    path = Path(path)
    if not path.exists():
        raise XlcnnError(f"workbook not found: {path}; check the path")
    if path.is_dir():
        raise XlcnnError(f"{path} is a folder; give an .xlsx file")
    try:
        return read_workbook(path)
    except FormulaError as exc:
        raise XlcnnError(f"{path}: {exc}") from None
    except (ValueError, OSError, KeyError) as exc:
        raise XlcnnError(f"cannot read {path} as an .xlsx workbook: {exc}") from None


def sheet_rows(book, sheet, width=8, max_rows=1_000_000, stop_after_empty=20):
    """The values of a sheet's first columns, row by row, until a run of empty rows."""
    rows, empty = [], 0
    for r in range(max_rows):
        row = [book.value(sheet, r, c) for c in range(width)]
        if all(v is None for v in row):
            empty += 1
            if empty >= stop_after_empty:
                break
        else:
            empty = 0
        rows.append(row)
    while rows and all(v is None for v in rows[-1]):
        rows.pop()
    return rows


def read_contract(book, path):
    if "manifest" not in book.sheets:
        raise XlcnnError(f"{path} has no 'manifest' sheet; verify reads workbooks written by xlcnn build")
    entries = mf.parse(sheet_rows(book, "manifest", width=7), book.sheets)
    about = mf.about(sheet_rows(book, "about", width=2, max_rows=200)) if "about" in book.sheets else {}
    return entries, about


def _recorded_file(path, about, key, what, option):
    """A file the about sheet records relative to the workbook (model_path, weights_path)."""
    recorded = about.get(key)
    if not recorded:
        return None
    found = Path(recorded)
    if not found.is_absolute():
        found = (Path(path).resolve().parent / found).resolve()
    if not found.exists():
        raise XlcnnError(f"the {what} this workbook was built from ({recorded}, relative to the workbook) is not "
                         f"there; pass it with {option}")
    return found


def _resolve_model(path, about, model_arg, weights_arg=None):
    """(model file, weights file or None, notes) for the model the workbook was built from."""
    from .model import sha256
    if model_arg:
        model = Path(model_arg)
        if not model.exists():
            raise XlcnnError(f"model file not found: {model}; check --model")
        weights = Path(weights_arg) if weights_arg else None
        if weights is None and model.suffix.lower() == ".json":
            weights = _recorded_file(path, about, "weights_path", "weights file", "--weights WEIGHTS.h5")
        return model, weights, []
    model = _recorded_file(path, about, "model_path", "model", "--model MODEL")
    if model is None:
        raise XlcnnError(f"{path} does not record its model; pass it with --model MODEL")
    weights = (Path(weights_arg) if weights_arg else
               _recorded_file(path, about, "weights_path", "weights file", "--weights WEIGHTS.h5"))
    notes = []
    for key, file in (("model_sha256", model), ("weights_sha256", weights)):
        digest = about.get(key)
        if file is not None and digest and sha256(file) != digest:
            notes.append(f"{'model' if key == 'model_sha256' else 'weights'} file {file} differs from the one "
                         "the workbook was built from (sha256)")
    return model, weights, notes


# -- comparing ----------------------------------------------------------------------------------

def _locate(entries, layer, index):
    """The sheet cell holding element `index` (Keras layout) of a layer's tensor."""
    rows = [e for e in entries if e.layer == layer]
    e0 = rows[0]
    if e0.channel is None:
        r0, c0, _, _ = e0.range
        return cell_name(e0.sheet, r0 + index[0], c0)
    axis = e0.channel_axis if e0.channel_axis is not None else len(index) - 1
    channel = index[axis]
    spatial = [v for k, v in enumerate(index) if k != axis]
    i, j = (spatial[0], spatial[1]) if len(spatial) == 2 else (spatial[0], 0)   # a signal: (step, 0)
    e = next(e for e in rows if e.channel == channel)
    return cell_name(e.sheet, e.range[0] + i, e.range[1] + j)


def compare_stage(entries, layer, got, want, atol, rtol):
    klass = next(e.klass for e in entries if e.layer == layer)
    if got.shape != want.shape:
        return StageResult(layer, klass, tuple(got.shape), float("inf"), float("inf"), float("inf"), 0.0,
                           False, message=f"shape {got.shape} in the workbook, {want.shape} in Keras")
    diff = np.abs(got - want)
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    max_abs = float(diff[worst]) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(want), 1e-12)
    passed = bool(max_abs <= atol + rtol * scale)
    return StageResult(layer, klass, tuple(want.shape), max_abs, float(np.max(rel)) if rel.size else 0.0,
                       max_abs / scale if scale > 0 else max_abs, scale, passed,
                       _locate(entries, layer, worst) if diff.size else "",
                       float(got[worst]) if diff.size else 0.0, float(want[worst]) if diff.size else 0.0)


def lint(book):
    """Excel's limits and portability: formula length, argument count, nesting, functions, names."""
    problems = []
    for name in book.sheets:
        if not 1 <= len(name) <= 31 or _BAD_SHEET.search(name) or name.startswith("'") or name.endswith("'"):
            problems.append(f"sheet name {name!r} is not valid in Excel (1-31 characters, none of \\ / ? * [ ] :)")
    seen_functions = set()
    for (sheet, row, col), text in book.formulas.items():
        where = cell_name(sheet, row, col)
        if len(text) + 1 > EXCEL_MAX_FORMULA:
            problems.append(f"{where}: formula of {len(text) + 1} characters (Excel's limit is 8,192)")
        if text.count("(") > EXCEL_MAX_NESTING or text.count(",") >= EXCEL_MAX_ARGS:
            depth, args, worst_depth, worst_args = 0, [0], 0, 0
            for ch in re.sub(r"'(?:[^']|'')*'|\"[^\"]*\"", "", text):
                if ch == "(":
                    depth += 1
                    args.append(0)
                    worst_depth = max(worst_depth, depth)
                elif ch == ")":
                    worst_args = max(worst_args, args.pop() + 1)
                    depth -= 1
                elif ch == ",":
                    args[-1] += 1
            if worst_depth > EXCEL_MAX_NESTING:
                problems.append(f"{where}: nesting {worst_depth} levels deep (Excel's limit is 64)")
            if worst_args > EXCEL_MAX_ARGS:
                problems.append(f"{where}: a function with {worst_args} arguments (Excel's limit is 255)")
        for fn in re.findall(r"([A-Za-z_][A-Za-z0-9_.]*)\(", re.sub(r"'(?:[^']|'')*'|\"[^\"]*\"", "", text)):
            if fn.upper() not in PORTABLE_FUNCTIONS and fn.upper() not in seen_functions:
                seen_functions.add(fn.upper())
                problems.append(f"{where}: function {fn} is not in xlcnn's portable set (Excel 2010+ and LibreOffice)")
    return problems


def _stage_cells(entries, input_layer):
    """(sheet, row, col) of every stage cell that must hold a formula (the input's cells are constants)."""
    input_cells = set()
    for e in entries:
        if e.layer == input_layer:
            r0, c0, r1, c1 = e.range
            input_cells.add((e.sheet, r0, c0, r1, c1))
    cells = []
    for e in entries:
        if e.layer == input_layer or (e.sheet, *e.range) in input_cells:
            continue  # pass-through stages of the input point at the input's constants
        r0, c0, r1, c1 = e.range
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                cells.append((e.sheet, r, c))
    return cells


def _constants_on_stage_sheets(book, entries, input_layer):
    """Numbers typed into a stage sheet's data rows, outside the manifest's ranges too (say in the
    z block beside a fused activation): only column A (labels) may hold constants there."""
    input_sheets = {e.sheet for e in entries if e.layer == input_layer}
    first_row = {}
    for e in entries:
        if e.layer != input_layer and e.sheet not in input_sheets:
            first_row[e.sheet] = min(first_row.get(e.sheet, e.range[0]), e.range[0])
    found = []
    for sheet, r0 in first_row.items():
        data = book.sheet_array(sheet)[r0:, 1:]
        for r, c in np.argwhere(~np.isnan(data)):
            found.append(cell_name(sheet, r0 + int(r), 1 + int(c)))
    return found


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def check_cached(book, values_of):
    """Formula cells whose cached value disagrees with the evaluator's value."""
    bad = []
    for key in book.formulas:
        cached = book.cached.get(key)
        got = values_of(*key)
        if isinstance(got, np.ndarray):
            got = float(got.reshape(-1)[0])
        if not _finite(cached):
            if cached is None or (isinstance(cached, str) and not np.isfinite(got)):
                if cached is None:
                    bad.append((key, got, None))
                continue
            if isinstance(cached, str) and cached.startswith("#"):
                bad.append((key, got, cached))
            continue
        if not np.isfinite(got) or abs(got - float(cached)) > CACHED_RTOL * max(1.0, abs(got)):
            bad.append((key, got, cached))
    return bad


# -- the whole check ----------------------------------------------------------------------------

def verify(workbook, model=None, image=None, atol=None, rtol=None, engine="numpy", images_dir=None,
           progress=None, weights=None):
    from .formula import FormulaError, evaluate
    from .model import load
    say = progress or (lambda _m: None)
    atol = DEFAULT_ATOL if atol is None else atol
    rtol = DEFAULT_RTOL if rtol is None else rtol
    path = Path(workbook)
    say("reading the workbook")
    book = _open(path)
    entries, about = read_contract(book, path)
    model_path, weights_path, notes = _resolve_model(path, about, model, weights)
    report = Report(str(path), str(model_path), engine, atol=atol, rtol=rtol, notes=notes,
                    formulas=len(book.formulas))
    say("loading the model")
    loaded = load(model_path, weights_path)
    input_layer = mf.layers(entries)[0]
    layer_names = [l.name for l in loaded.layers]
    missing = [n for n in layer_names if n not in mf.layers(entries)]
    if missing:
        raise XlcnnError(f"the manifest of {path} has no rows for layer(s) {', '.join(missing)} of {model_path}; "
                         "is this the model the workbook was built from? (pass --model)")

    # input: the workbook's own input cells, or an image prepared the way the workbook records
    overrides = None
    x = mf.assemble(entries, input_layer, lambda *cells: _constant_block(book, *cells))
    if image:
        x = _prepare_like(image, loaded, about)
        overrides = _input_overrides(entries, input_layer, x[None])
        overrides = {k: float(v[0]) for k, v in overrides.items()}

    say(f"evaluating {len(book.formulas):,} formulas ({engine})")
    t = time.perf_counter()
    if engine == "libreoffice":
        if image:
            raise XlcnnError("--image cannot be combined with --engine libreoffice; use the numpy engine")
        block, value_of = _libreoffice_values(path)
    else:
        try:
            result = evaluate(book, overrides=overrides)
        except FormulaError as exc:
            raise XlcnnError(f"{path}: {exc}") from None
        block, value_of = result.block, result.value
    report.evaluate_seconds = time.perf_counter() - t

    # the stages must be formulas, and their cached values current
    for sheet, r, c in _stage_cells(entries, input_layer):
        if (sheet, r, c) not in book.formulas:
            report.constant_cells.append(cell_name(sheet, r, c))
    report.constant_cells += [c for c in _constants_on_stage_sheets(book, entries, input_layer)
                              if c not in report.constant_cells]
    if not image:
        report.cached_checked = True
        bad = check_cached(book, value_of)
        report.cached_mismatches = len(bad)
        report.cached_examples = [f"{cell_name(*k)}: cached {c!r}, formulas give {g:.9g}" for k, g, c in bad[:5]]
    report.lint = lint(book)

    say("running Keras")
    outs = loaded.layer_outputs(x[None])
    for layer in [input_layer] + layer_names:
        got = mf.assemble(entries, layer, block)
        want = x.astype(np.float64) if layer == input_layer else outs[layer][0]
        report.stages.append(compare_stage(entries, layer, got, want, atol, rtol))
    final = report.stages[-1]
    if final.shape and len(final.shape) == 1:
        report.predicted_workbook = int(np.argmax(mf.assemble(entries, layer_names[-1], block)))
        report.predicted_keras = int(np.argmax(outs[layer_names[-1]][0]))

    if images_dir:
        _batch(report, book, entries, input_layer, layer_names, loaded, about, images_dir, say)

    failing = [s for s in report.stages if not s.passed]
    report.first_failure = failing[0].layer if failing else None
    report.passed = not (failing or report.cached_mismatches or report.constant_cells or report.lint
                         or (report.predicted_workbook != report.predicted_keras)
                         or (report.top1_agreement is not None and report.top1_agreement < 1.0))
    return report


def _constant_block(book, sheet, r0, c0, r1, c1):
    """Numeric constants of a rectangle (NaN where there is none), from the sheet's own array."""
    out = np.full((r1 - r0 + 1, c1 - c0 + 1), np.nan)
    arr = book.sheet_array(sheet)[r0:r1 + 1, c0:c1 + 1]
    out[:arr.shape[0], :arr.shape[1]] = arr
    return out


def _input_overrides(entries, input_layer, xb):
    """{(sheet, row, col): values over the batch} for the input cells, from a (B, ...) batch."""
    out = {}
    for e in entries:
        if e.layer != input_layer:
            continue
        r0, c0, r1, c1 = e.range
        if e.channel is None:
            maps = xb.reshape(xb.shape[0], -1, 1)
        else:
            maps = np.moveaxis(xb, e.channel_axis + 1, 1)[:, e.channel]
            if maps.ndim == 2:      # a signal: each channel is a column of steps
                maps = maps[:, :, None]
        for i in range(r1 - r0 + 1):
            for j in range(c1 - c0 + 1):
                out[(e.sheet, r0 + i, c0 + j)] = maps[:, i, j].astype(np.float64)
    return out


def _prepare_like(image, loaded, about):
    from .image import prepare
    layout = about.get("input_layout", "channels_last")
    invert = about.get("invert", "auto").split(" ")[0]
    scale = float(about["scale"]) if about.get("scale") else None
    return prepare(image, loaded.input_shape, layout, invert=invert, scale=scale).tensor.astype(np.float64)


def _libreoffice_values(path):
    import tempfile
    from .formula import read_workbook
    from .libreoffice import recalculate
    with tempfile.TemporaryDirectory(prefix="xlcnn-verify-") as tmp:
        out = recalculate([path], Path(tmp) / "lo")[0]
        recalculated = read_workbook(out)
    cached = recalculated.cached

    def value_of(sheet, r, c):
        v = cached.get((sheet, r, c))
        if v is None:
            v = recalculated.value(sheet, r, c)
        return float(v) if _finite(v) else np.nan

    def block(sheet, r0, c0, r1, c1):
        return np.array([[value_of(sheet, r, c) for c in range(c0, c1 + 1)] for r in range(r0, r1 + 1)])

    return block, value_of


def _batch(report, book, entries, input_layer, layer_names, loaded, about, images_dir, say):
    from .formula import evaluate
    folder = Path(images_dir)
    if not folder.is_dir():
        raise XlcnnError(f"--images {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise XlcnnError(f"--images {folder} holds no png/jpg/bmp/gif/npy files")
    say(f"preparing {len(files)} images")
    xb = np.stack([_prepare_like(p, loaded, about) for p in files])
    t = time.perf_counter()
    result = evaluate(book, overrides=_input_overrides(entries, input_layer, xb))
    report.batch_seconds = time.perf_counter() - t
    outs = loaded.layer_outputs(xb)
    worst = 0.0
    for layer in layer_names:
        got = mf.assemble(entries, layer, result.block)
        want = outs[layer]
        scale = max(float(np.max(np.abs(want))), 1e-12)
        worst = max(worst, float(np.nanmax(np.abs(got - want))) / scale)
    final = mf.assemble(entries, layer_names[-1], result.block)
    report.images = len(files)
    report.batch_worst_error = worst
    if final.ndim == 2:
        report.top1_agreement = float(np.mean(np.argmax(final, 1) == np.argmax(outs[layer_names[-1]], 1)))
    if worst > report.rtol:
        report.stages.append(StageResult("(batch)", "", tuple(final.shape), worst, worst, worst, 1.0, False,
                                         message=f"worst error over {len(files)} images"))


# -- the terminal --------------------------------------------------------------------------------

def format_report(r):
    lines = [f"xlcnn verify {r.workbook}",
             f"model {r.model}; engine {r.engine}: {r.formulas:,} formulas evaluated in {r.evaluate_seconds:.2f} s",
             *(f"note: {n}" for n in r.notes),
             "",
             f"{'stage':<24} {'class':<18} {'shape':<16} {'max abs err':>11} {'max rel err':>11} "
             f"{'err/scale':>10}  result"]
    for s in r.stages:
        lines.append(f"{s.layer[:24]:<24} {s.klass[:18]:<18} {str(tuple(s.shape))[:16]:<16} {s.max_abs_error:11.2e} "
                     f"{s.max_rel_error:11.2e} {s.normalized_error:10.2e}  {'ok' if s.passed else 'FAIL'}")
    lines.append("")
    if r.predicted_keras is not None:
        agree = "agree" if r.predicted_keras == r.predicted_workbook else "DISAGREE"
        lines.append(f"top-1: workbook {r.predicted_workbook}, Keras {r.predicted_keras} ({agree})")
    if r.images:
        lines.append(f"batch: {r.images} images through the workbook's formulas in {r.batch_seconds:.2f} s; "
                     f"top-1 agreement {r.top1_agreement:.1%}, worst error/scale {r.batch_worst_error:.2e}")
    if r.engine == "numpy":
        if r.cached_mismatches:
            lines.append(f"cached values: {r.cached_mismatches:,} formula cells show a stale value, e.g.")
            lines.extend(f"  {e}" for e in r.cached_examples)
        elif r.stages and r.cached_examples == []:
            lines.append(f"cached values: all {r.formulas:,} agree with the formulas")
    if r.constant_cells:
        lines.append(f"{len(r.constant_cells):,} stage cells hold a constant where a formula belongs, first "
                     f"{r.constant_cells[0]}")
    for p in r.lint[:10]:
        lines.append(f"lint: {p}")
    if len(r.lint) > 10:
        lines.append(f"lint: … and {len(r.lint) - 10} more")
    if r.passed:
        lines.append(f"PASS: every stage equals Keras within {r.rtol:g} of its scale (+{r.atol:g})")
    else:
        first = next((s for s in r.stages if not s.passed), None)
        if first is not None:
            detail = first.message or (f"worst cell {first.worst_cell}: workbook {first.workbook_value:.9g}, "
                                       f"Keras {first.keras_value:.9g}")
            lines.append(f"FAIL: first failing stage {first.layer} ({first.klass}); {detail}")
        else:
            lines.append("FAIL: see above")
    return "\n".join(lines)


# -- CI: JUnit XML and GitHub Actions annotations ------------------------------------------------

CHECK_CLASS = "xlcnn.workbook"
CHECK_CACHED = "cached values agree with the formulas"
CHECK_CONSTANTS = "formulas where formulas belong"
CHECK_LINT = "Excel limits and portable functions"
CHECK_TOP1 = "top-1 prediction agrees with Keras"
CHECK_IMAGES = "top-1 agreement over --images"


@dataclass
class Check:
    """One whole-workbook check, as CI shows it: passed, failed (message, detail) or skipped."""
    name: str
    passed: bool = True
    message: str = ""
    detail: str = ""
    kind: str = ""
    skipped: str = ""


def stage_failure(s, atol, rtol):
    """Why a stage fails, in one line: its worst cell, both values and the error against the allowance."""
    if s.passed:
        return ""
    if not s.worst_cell:
        return s.message or f"max abs error {s.max_abs_error:.3g}"
    allowed = atol + rtol * s.scale
    return (f"{s.worst_cell}: workbook {s.workbook_value:.9g}, Keras {s.keras_value:.9g}; "
            f"error {s.max_abs_error:.3g} > allowed {allowed:.3g} (atol {atol:g} + rtol {rtol:g} x scale {s.scale:.3g})")


def workbook_checks(r):
    """The checks besides the stage comparisons that decide r.passed, in the order the report shows them."""
    checks = []
    cached = Check(CHECK_CACHED, kind="StaleCachedValue")
    if not r.cached_checked:
        cached.skipped = "not checked: --image gives the input cells other values than the ones cached"
    elif r.cached_mismatches:
        cached.passed = False
        cached.message = (f"{r.cached_mismatches:,} formula cells show a stale cached value, first "
                          f"{r.cached_examples[0] if r.cached_examples else '?'}")
        cached.detail = "\n".join(r.cached_examples)
    checks.append(cached)
    constants = Check(CHECK_CONSTANTS, kind="ConstantWhereFormulaBelongs")
    if r.constant_cells:
        constants.passed = False
        constants.message = (f"{len(r.constant_cells):,} stage cells hold a constant where a formula belongs, "
                             f"first {r.constant_cells[0]}")
        constants.detail = "\n".join(r.constant_cells[:200])
    checks.append(constants)
    limits = Check(CHECK_LINT, kind="ExcelLimit")
    if r.lint:
        limits.passed = False
        limits.message = f"{len(r.lint):,} problem(s), first: {r.lint[0]}"
        limits.detail = "\n".join(r.lint[:200])
    checks.append(limits)
    if r.predicted_keras is not None or r.predicted_workbook is not None:
        top1 = Check(CHECK_TOP1, kind="Top1Disagreement")
        if r.predicted_workbook != r.predicted_keras:
            top1.passed = False
            top1.message = f"the workbook predicts class {r.predicted_workbook}, Keras class {r.predicted_keras}"
        checks.append(top1)
    if r.images:
        batch = Check(CHECK_IMAGES, kind="Top1Disagreement")
        if r.top1_agreement is not None and r.top1_agreement < 1.0:
            batch.passed = False
            batch.message = (f"top-1 agreement {r.top1_agreement:.1%} over {r.images} images "
                             f"(worst error/scale {r.batch_worst_error:.2e})")
        checks.append(batch)
    return checks


_XML_INVALID = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(value):
    """Text XML 1.0 can hold: characters it forbids (control characters, lone surrogates) spelled out."""
    return _XML_INVALID.sub(lambda m: ascii(m.group())[1:-1], str(value))


def junit_xml(r):
    """The report as JUnit XML (bytes): one testcase per compared stage (name = the Keras layer,
    classname = its Keras class) and one per whole-workbook check; a failure names the worst cell."""
    import xml.etree.ElementTree as ET
    cases = []
    for s in r.stages:
        failure = None
        if not s.passed:
            detail = (f"layer {s.layer} ({s.klass or 'batch of images'}), shape {tuple(s.shape)}\n"
                      f"max abs error {s.max_abs_error:.6g}, max rel error {s.max_rel_error:.6g}, "
                      f"error/scale {s.normalized_error:.6g}, scale {s.scale:.6g}\n"
                      f"passes when max abs error <= atol {r.atol:g} + rtol {r.rtol:g} x scale")
            failure = (stage_failure(s, r.atol, r.rtol), "StageMismatch", detail)
        cases.append((s.layer, s.klass or "xlcnn.images", failure, ""))
    for c in workbook_checks(r):
        cases.append((c.name, CHECK_CLASS, None if c.passed else (c.message, c.kind, c.detail), c.skipped))
    failures = sum(1 for *_, f, _ in cases if f is not None)
    skipped = sum(1 for *_, sk in cases if sk)
    counts = dict(tests=str(len(cases)), failures=str(failures), errors="0", skipped=str(skipped),
                  time=f"{r.evaluate_seconds:.3f}")
    root = ET.Element("testsuites", name="xlcnn verify", **counts)
    suite = ET.SubElement(root, "testsuite", name="xlcnn verify", **counts)
    props = ET.SubElement(suite, "properties")
    for key, value in (("workbook", r.workbook), ("model", r.model), ("engine", r.engine),
                       ("formulas", r.formulas), ("rtol", f"{r.rtol:g}"), ("atol", f"{r.atol:g}")):
        ET.SubElement(props, "property", name=key, value=_xml_safe(value))
    for name, classname, failure, skip in cases:
        case = ET.SubElement(suite, "testcase", name=_xml_safe(name), classname=_xml_safe(classname), time="0")
        if failure is not None:
            message, kind, detail = failure
            node = ET.SubElement(case, "failure", message=_xml_safe(message), type=kind)
            node.text = _xml_safe(detail or message)
        elif skip:
            ET.SubElement(case, "skipped", message=_xml_safe(skip))
    ET.indent(root)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n").encode()


def _gh_data(text):
    """A workflow command's message, escaped as GitHub's toolkit does (escapeData)."""
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text):
    """A workflow command's property value (title=...), escaped as GitHub's toolkit does (escapeProperty)."""
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(r):
    """`::error` workflow commands for every failure (first failing stage first, then the workbook
    checks, then the later stages, since GitHub shows only the first 10 per step), and `::warning`
    for notes. Nothing for a passing workbook without notes."""
    def command(level, title, message):
        return f"::{level} title={_gh_property(title)}::{_gh_data(message)}"

    name = Path(r.workbook).name
    failing = [s for s in r.stages if not s.passed]
    stage_lines = [command("error", f"xlcnn verify: {'first failing ' if i == 0 else ''}stage {s.layer}"
                                    f" ({s.klass or 'batch of images'})",
                           f"{name}: stage {s.layer} differs from Keras; {stage_failure(s, r.atol, r.rtol)}")
                   for i, s in enumerate(failing)]
    check_lines = [command("error", f"xlcnn verify: {c.name}", f"{name}: {c.message}")
                   for c in workbook_checks(r) if not c.passed]
    notes = [command("warning", "xlcnn verify: note", f"{name}: {n}") for n in r.notes]
    return stage_lines[:1] + check_lines + stage_lines[1:] + notes


def _output_path(option, value, workbook):
    """Where --json / --junit go, checked before the (long) evaluation: one line and exit 2 if unusable."""
    if not str(value).strip():
        raise XlcnnError(f"{option} needs a file name, e.g. {option} verify.xml")
    path = Path(value)
    if path.is_dir():
        raise XlcnnError(f"{option} {value!s} is a folder; give a file name, e.g. {option} verify.xml")
    if not path.parent.is_dir():
        raise XlcnnError(f"{option} {path}: folder {path.parent} does not exist; create it first")
    try:
        same = path.exists() and path.resolve() == Path(workbook).resolve()
    except (OSError, ValueError):
        same = False
    if same:
        raise XlcnnError(f"{option} {path} is the workbook itself; give another file name")
    return path


def _write_atomically(option, path, data):
    """Write bytes to a temporary file beside `path`, then move it into place: never half a file."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        try:
            tmp.unlink()
        except (OSError, ValueError):
            pass
        raise XlcnnError(f"cannot write {option} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def run_cli(args, progress=None):
    outputs = {}
    for option, value in (("--json", args.json), ("--junit", getattr(args, "junit", None))):
        if value is not None:
            path = _output_path(option, value, args.workbook)
            for other, seen in outputs.items():
                if seen.resolve() == path.resolve():
                    raise XlcnnError(f"{other} and {option} name the same file {path}; give two names")
            outputs[option] = path
    report = verify(args.workbook, model=args.model, image=args.image, atol=args.atol, rtol=args.rtol,
                    engine=args.engine, images_dir=args.images, progress=progress,
                    weights=getattr(args, "weights", None))
    if not args.quiet:
        print(format_report(report))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(report):
            print(line)
    if "--json" in outputs:
        _write_atomically("--json", outputs["--json"],
                          json.dumps(report.to_dict(), indent=2, default=float).encode())
    if "--junit" in outputs:
        _write_atomically("--junit", outputs["--junit"], junit_xml(report))
    return 0 if report.passed else 1
