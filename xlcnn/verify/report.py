"""The report: what verify found (Report), as terminal text, JSON, JUnit XML for CI and GitHub Actions
annotations, and the files --json / --junit go to.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import XlcnnError
from .compare import DEFAULT_ATOL, DEFAULT_RTOL


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
    keras_compared: bool = True   # False: --no-keras, the workbook checked alone
    traces_checked: int = 0       # trace sheets whose `value` was compared with the stage's cell
    trace_problems: list = field(default_factory=list)

    def to_dict(self):
        d = asdict(self)
        d["stages"] = [dict(asdict(s), shape=list(s.shape)) for s in self.stages]
        d["keras_comparison"] = "made" if self.keras_compared else NO_KERAS
        return d

    def to_dataframe(self):
        import pandas as pd
        return pd.DataFrame([asdict(s) for s in self.stages])



def format_report(r):
    lines = [f"xlcnn verify {r.workbook}",
             f"model {r.model}; engine {r.engine}: {r.formulas:,} formulas evaluated in {r.evaluate_seconds:.2f} s",
             *(f"note: {n}" for n in r.notes),
             *([NO_KERAS] if not r.keras_compared else []),
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
        elif r.cached_checked and (r.stages or not r.keras_compared) and r.cached_examples == []:
            lines.append(f"cached values: all {r.formulas:,} agree with the formulas")
    if r.constant_cells:
        lines.append(f"{len(r.constant_cells):,} stage cells hold a constant where a formula belongs, first "
                     f"{r.constant_cells[0]}")
    if r.trace_problems:
        lines.append(f"trace sheets: {len(r.trace_problems)} problem(s), first {r.trace_problems[0]}")
    elif r.traces_checked:
        lines.append(f"trace sheets: all {r.traces_checked} give their stage's value")
    for p in r.lint[:10]:
        lines.append(f"lint: {p}")
    if len(r.lint) > 10:
        lines.append(f"lint: … and {len(r.lint) - 10} more")
    if r.passed and not r.keras_compared:
        lines.append("PASS (workbook checks only): every formula evaluates, cached values are current, stages are "
                     "formulas, Excel's limits hold; NOT compared with Keras (--no-keras)")
    elif r.passed:
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


CHECK_CLASS = "xlcnn.workbook"


CHECK_CACHED = "cached values agree with the formulas"


CHECK_CONSTANTS = "formulas where formulas belong"


CHECK_LINT = "Excel limits and portable functions"


CHECK_TOP1 = "top-1 prediction agrees with Keras"


CHECK_TRACE = "trace sheets give their stage's value"


CHECK_IMAGES = "top-1 agreement over --images"
CHECK_KERAS = "stages equal Keras"
NO_KERAS = ("no comparison with Keras was made (--no-keras): the formulas were evaluated and the workbook "
            "checked, but no stage was compared with the model")


@dataclass
class Check:
    """One whole-workbook check, as CI shows it: passed, failed (message, detail) or skipped."""
    name: str
    passed: bool = True
    message: str = ""
    detail: str = ""
    kind: str = ""
    skipped: str = ""

    def fail(self, message, lines=()):
        """Mark the check failed with a one-line message and up to 200 lines of detail."""
        self.passed, self.message, self.detail = False, message, "\n".join(list(lines)[:200])



def stage_failure(s, atol, rtol):
    """Why a stage fails, in one line: its worst cell, both values and the error against the allowance."""
    if s.passed:
        return ""
    if not s.worst_cell:
        return s.message or f"max abs error {s.max_abs_error:.3g}"
    allowed = atol + rtol * s.scale
    return (f"{s.worst_cell}: workbook {s.workbook_value:.9g}, Keras {s.keras_value:.9g}; "
            f"error {s.max_abs_error:.3g} > allowed {allowed:.3g} "
            f"(atol {atol:g} + rtol {rtol:g} x scale {s.scale:.3g})")



def workbook_checks(r):
    """The checks besides the stage comparisons that decide r.passed, in the order the report shows them."""
    checks = []
    cached = Check(CHECK_CACHED, kind="StaleCachedValue")
    if not r.cached_checked:
        cached.skipped = "not checked: --image gives the input cells other values than the ones cached"
    elif r.cached_mismatches:
        cached.fail(f"{r.cached_mismatches:,} formula cells show a stale cached value, first "
                    f"{r.cached_examples[0] if r.cached_examples else '?'}", r.cached_examples)
    checks.append(cached)
    constants = Check(CHECK_CONSTANTS, kind="ConstantWhereFormulaBelongs")
    if r.constant_cells:
        constants.fail(f"{len(r.constant_cells):,} stage cells hold a constant where a formula belongs, "
                       f"first {r.constant_cells[0]}", r.constant_cells)
    checks.append(constants)
    limits = Check(CHECK_LINT, kind="ExcelLimit")
    if r.lint:
        limits.fail(f"{len(r.lint):,} problem(s), first: {r.lint[0]}", r.lint)
    checks.append(limits)
    if r.traces_checked or r.trace_problems:
        traces = Check(CHECK_TRACE, kind="TraceMismatch")
        if r.trace_problems:
            traces.fail(f"{len(r.trace_problems)} problem(s), first: {r.trace_problems[0]}", r.trace_problems)
        checks.append(traces)
    if r.predicted_keras is not None or r.predicted_workbook is not None:
        top1 = Check(CHECK_TOP1, kind="Top1Disagreement")
        if r.predicted_workbook != r.predicted_keras:
            top1.fail(f"the workbook predicts class {r.predicted_workbook}, Keras class {r.predicted_keras}")
        checks.append(top1)
    if r.images:
        batch = Check(CHECK_IMAGES, kind="Top1Disagreement")
        if r.top1_agreement is not None and r.top1_agreement < 1.0:
            batch.fail(f"top-1 agreement {r.top1_agreement:.1%} over {r.images} images "
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
    if not r.keras_compared:
        cases.append((CHECK_KERAS, CHECK_CLASS, None, NO_KERAS))
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
                       ("formulas", r.formulas), ("rtol", f"{r.rtol:g}"), ("atol", f"{r.atol:g}"),
                       ("keras", "compared" if r.keras_compared else "not compared (--no-keras)")):
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
    if not r.keras_compared:
        notes.append(command("notice", "xlcnn verify: no comparison with Keras", f"{name}: {NO_KERAS}"))
    return stage_lines[:1] + check_lines + stage_lines[1:] + notes



def output_path(option, value, workbook):
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



def write_atomically(option, path, data):
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
