"""xlcnn verify: re-evaluate every formula of a workbook and compare every stage with Keras.

Independent of the writers by design: it reads the formulas back from the file (xlcnn.formula),
finds the tensors through the manifest sheet, and runs the Keras model itself. It never trusts the
cached values; it checks them too, since a stale cached value shows a wrong number to anyone who
opens the file without recalculating. With ``keras=False`` (``xlcnn verify --no-keras``) it checks
the workbook alone (evaluation, cached values, constants, lint) and never imports TensorFlow.

Modules by job: reading (workbook, contract, model file), engines (NumPy or LibreOffice),
checks (lint, cached values, constants), compare (stages vs Keras, tolerance), report (terminal,
JSON, JUnit, GitHub annotations). This module holds the whole check, :func:`verify`, and the CLI.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .. import manifest as mf
from ..errors import XlcnnError
from ..formula import cell_name
from .checks import (CACHED_RTOL, EXCEL_MAX_ARGS, EXCEL_MAX_FORMULA, EXCEL_MAX_NESTING, PORTABLE_FUNCTIONS,
                     check_cached, constants_on_stage_sheets, formula_problems, formula_table, lint,
                     missing_formulas, stage_cells, trace_checks)
from .compare import DEFAULT_ATOL, DEFAULT_RTOL, IMAGE_SUFFIXES, StageResult, compare_batch, compare_stage, locate
from .engines import input_overrides, libreoffice_values, prepare_like
from .reference import Reference, helper_helps
from .reading import constant_block, open_workbook, read_contract, resolve_model, sheet_rows
from .report import (CHECK_CACHED, CHECK_CLASS, CHECK_CONSTANTS, CHECK_IMAGES, CHECK_LINT, CHECK_TOP1, CHECK_TRACE,
                     Check, Report,
                     CHECK_KERAS, NO_KERAS,
                     format_report, github_annotations, junit_xml, output_path,
                     stage_failure, workbook_checks, write_atomically)

__all__ = ["CACHED_RTOL", "CHECK_CACHED", "CHECK_CLASS", "CHECK_CONSTANTS", "CHECK_IMAGES", "CHECK_LINT",
           "CHECK_TOP1", "CHECK_TRACE", "CHECK_KERAS", "NO_KERAS", "Check", "DEFAULT_ATOL", "DEFAULT_RTOL",
           "EXCEL_MAX_ARGS", "EXCEL_MAX_FORMULA", "EXCEL_MAX_NESTING", "IMAGE_SUFFIXES", "PORTABLE_FUNCTIONS",
           "Report", "StageResult", "check_cached", "compare_batch", "compare_stage", "constant_block",
           "constants_on_stage_sheets", "format_report", "github_annotations", "formula_problems", "formula_table",
           "input_overrides", "junit_xml", "libreoffice_values", "lint", "locate", "missing_formulas",
           "open_workbook", "prepare_like", "read_contract", "resolve_model", "run_cli", "sheet_rows", "stage_cells",
           "stage_failure", "trace_checks", "verify", "workbook_checks", "write_atomically"]


def verify(workbook, model=None, image=None, atol=None, rtol=None, engine="numpy", images_dir=None,
           progress=None, weights=None, keras=True):
    """Evaluate every formula of ``workbook``, check the workbook itself (cached values, formulas
    where formulas belong, Excel's limits) and compare every stage with the Keras model it was
    built from.  ``keras=False`` makes no comparison and never imports TensorFlow: the report
    says so (Report.keras_compared False) and passes on the workbook checks alone."""
    say = progress or (lambda _m: None)
    atol = DEFAULT_ATOL if atol is None else atol
    rtol = DEFAULT_RTOL if rtol is None else rtol
    if not keras:
        for option, value in (("--image", image), ("--images", images_dir), ("--model", model),
                              ("--weights", weights)):
            if value:
                raise XlcnnError(f"{option} needs Keras; it cannot be combined with --no-keras")
    path = Path(workbook)
    # Keras's side starts first: in a helper process it imports TensorFlow while this one reads
    # and evaluates the workbook (reference.py says when and why)
    reference = Reference(helper=keras and not image and not images_dir and helper_helps())
    try:
        return _verify(path, reference, model, image, atol, rtol, engine, images_dir, say, weights, keras)
    finally:
        reference.close()


def _verify(path, reference, model, image, atol, rtol, engine, images_dir, say, weights, keras):
    from ..formula import FormulaError, evaluate, formula_groups
    say("reading the workbook")
    book = open_workbook(path)
    entries, about = read_contract(book, path)
    input_layer = mf.layers(entries)[0]
    if keras:
        model_path, weights_path, notes = resolve_model(path, about, model, weights)
    else:
        model_path, notes = about.get("model_path") or "(not loaded: --no-keras)", []
    report = Report(str(path), str(model_path), engine, atol=atol, rtol=rtol, notes=notes,
                    formulas=len(book.formulas), keras_compared=keras)
    if keras:
        say("loading the model" + (" (in a helper process, alongside)" if reference.in_helper else ""))
        reference.load(model_path, weights_path, mf.layers(entries), path)

    # input: the workbook's own input cells, or an image prepared the way the workbook records
    overrides = None
    if keras:
        x = mf.assemble(entries, input_layer, lambda *cells: constant_block(book, *cells))
    if image:
        x = prepare_like(image, reference.loaded, about)
        overrides = input_overrides(entries, input_layer, x[None])
        overrides = {k: float(v[0]) for k, v in overrides.items()}

    say(f"evaluating {len(book.formulas):,} formulas ({engine})")
    t = time.perf_counter()
    if engine == "libreoffice":
        if image:
            raise XlcnnError("--image cannot be combined with --engine libreoffice; use the numpy engine")
        block, cells = libreoffice_values(path)
    else:
        try:
            result = evaluate(book, overrides=overrides)
        except FormulaError as exc:
            raise XlcnnError(f"{path}: {exc}") from None
        block, cells = result.block, result.cells
    report.evaluate_seconds = time.perf_counter() - t

    # the stages must be formulas, and their cached values current
    report.constant_cells = missing_formulas(book, entries, input_layer)
    listed = set(report.constant_cells)
    report.constant_cells += [c for c in constants_on_stage_sheets(book, entries, input_layer) if c not in listed]
    if not image:
        report.cached_checked = True
        bad = check_cached(book, cells)
        report.cached_mismatches = len(bad)
        report.cached_examples = [f"{cell_name(*k)}: cached {c!r}, formulas give {g:.9g}" for k, g, c in bad[:5]]
    # the trace sheets recompute one output cell each: it must equal the stage's own cell
    report.trace_problems, report.traces_checked = trace_checks(book, entries, cells)
    try:
        groups = formula_groups(book)
    except FormulaError:  # the LibreOffice engine ran on a book the NumPy engine cannot compile
        groups = None
    report.lint = lint(book, groups)

    if keras:
        say("running Keras")
        outs = reference.outputs(x)
        layer_names = list(outs)
        for layer in [input_layer] + layer_names:
            got = mf.assemble(entries, layer, block)
            want = x.astype(np.float64) if layer == input_layer else outs[layer]
            report.stages.append(compare_stage(entries, layer, got, want, atol, rtol))
        final = report.stages[-1]
        if final.shape and len(final.shape) == 1:
            report.predicted_workbook = int(np.argmax(mf.assemble(entries, layer_names[-1], block)))
            report.predicted_keras = int(np.argmax(outs[layer_names[-1]]))
        if images_dir:
            compare_batch(report, book, entries, input_layer, layer_names, reference.loaded, about, images_dir, say)

    failing = [s for s in report.stages if not s.passed]
    report.first_failure = failing[0].layer if failing else None
    report.passed = not (failing or report.cached_mismatches or report.constant_cells or report.lint
                         or report.trace_problems
                         or (report.predicted_workbook != report.predicted_keras)
                         or (report.top1_agreement is not None and report.top1_agreement < 1.0))
    return report


def run_cli(args, progress=None):
    outputs = {}
    for option, value in (("--json", args.json), ("--junit", getattr(args, "junit", None))):
        if value is not None:
            path = output_path(option, value, args.workbook)
            for other, seen in outputs.items():
                if seen.resolve() == path.resolve():
                    raise XlcnnError(f"{other} and {option} name the same file {path}; give two names")
            outputs[option] = path
    report = verify(args.workbook, model=args.model, image=args.image, atol=args.atol, rtol=args.rtol,
                    engine=args.engine, images_dir=args.images, progress=progress,
                    weights=getattr(args, "weights", None), keras=not getattr(args, "no_keras", False))
    if not args.quiet:
        print(format_report(report))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(report):
            print(line)
    if "--json" in outputs:
        write_atomically("--json", outputs["--json"],
                          json.dumps(report.to_dict(), indent=2, default=float).encode())
    if "--junit" in outputs:
        write_atomically("--junit", outputs["--junit"], junit_xml(report))
    return 0 if report.passed else 1
