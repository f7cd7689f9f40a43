"""xlcnn verify: honest workbooks pass; every kind of tampering fails with exit 1 and names the place."""

from __future__ import annotations

import html
import json
import re
import shutil
import xml.etree.ElementTree as ET
import zipfile

import pytest

from conftest import cli, SAMPLES, needs_libreoffice

DIGIT = SAMPLES / "digits" / "digit_7.png"



@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """One honest workbook per sample model (the models are copied beside them)."""
    from xlcnn.build import build
    base = tmp_path_factory.mktemp("verify")
    out = {}
    for model in ("lenet.keras", "padding_cf.h5"):
        shutil.copy(SAMPLES / model, base / model)
        out[model] = base / f"{model}.xlsx"
        build(base / model, DIGIT, out[model])
    return out


def _sheet_part(zf, sheet):
    wb = zf.read("xl/workbook.xml").decode()
    rels = zf.read("xl/_rels/workbook.xml.rels").decode()
    rid = next(m.group(2) for m in re.finditer(r'<sheet name="([^"]*)" sheetId="\d+" r:id="([^"]+)"', wb)
               if html.unescape(m.group(1)) == sheet)
    target = re.search(rf'Id="{rid}"[^>]*Target="([^"]+)"', rels) or re.search(rf'Target="([^"]+)"[^>]*Id="{rid}"', rels)
    return "xl/" + target.group(1).lstrip("/").removeprefix("xl/")


def edit_cell(src, dst, sheet, cell, transform):
    """Copy an .xlsx with one cell's XML element rewritten, leaving every cached value as it was."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        part = _sheet_part(zin, sheet)
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == part:
                text = data.decode()
                m = re.search(rf'<c r="{cell}"[^>]*?(?:/>|>.*?</c>)', text)
                assert m, f"{sheet}!{cell} not found"
                text = text[:m.start()] + transform(m.group(0)) + text[m.end():]
                data = text.encode()
            zout.writestr(item, data)
    return dst


def drop_formula(cell):
    """A cell's XML without its formula element: its own <f>, or its place in a shared formula."""
    return re.sub(r"<f\b[^>]*?(?:/>|>[^<]*</f>)", "", cell)


def set_formula(text):
    """A transform for edit_cell: the cell's formula element becomes <f>text</f> (a copy of a
    shared formula leaves it)."""
    return lambda cell: re.sub(r"<f\b[^>]*?(?:/>|>[^<]*</f>)", lambda _: f"<f>{text}</f>", cell)


def beside(books, tmp_path):
    """A name for a tampered copy next to the honest one, so its recorded model path still resolves."""
    return books["lenet.keras"].with_name(f"tampered_{tmp_path.name}.xlsx")


def report(path, capsys, *extra):
    """Verify with --json and --junit; the JUnit file must say what the JSON says (checked for every run)."""
    code = cli("verify", path, "--json", path.with_suffix(".json"), "--junit", path.with_suffix(".junit.xml"), *extra)
    out = capsys.readouterr().out
    rep = json.loads(path.with_suffix(".json").read_text())
    assert_junit_matches(rep, junit(path.with_suffix(".junit.xml")))
    assert code == (0 if rep["passed"] else 1)
    return code, out, rep


def junit(path):
    """(suite attributes, [(name, classname, failure attributes or None, failure text, skipped)])."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1 and suites[0].get("name") == "xlcnn verify"
    cases = []
    for case in suites[0].findall("testcase"):
        failure = case.find("failure")
        cases.append((case.get("name"), case.get("classname"), None if failure is None else failure.attrib,
                      None if failure is None else failure.text, case.find("skipped") is not None))
    return suites[0].attrib, cases


def assert_junit_matches(rep, parsed):
    from xlcnn import verify as v
    suite, cases = parsed
    stages = rep["stages"]
    checks = [] if rep.get("keras_compared", True) else [v.CHECK_KERAS]
    checks += [v.CHECK_CACHED, v.CHECK_CONSTANTS, v.CHECK_LINT]
    checks += [v.CHECK_TRACE] if rep.get("traces_checked") or rep.get("trace_problems") else []
    checks += [v.CHECK_TOP1] if rep["predicted_keras"] is not None else []
    checks += [v.CHECK_IMAGES] if rep["images"] else []
    assert len(cases) == len(stages) + len(checks) == int(suite["tests"])
    assert [(c[0], c[1]) for c in cases[:len(stages)]] == [(s["layer"], s["klass"] or "xlcnn.images") for s in stages]
    assert [c[0] for c in cases[len(stages):]] == checks
    assert all(c[1] == "xlcnn.workbook" for c in cases[len(stages):])
    failed = {c[0] for c in cases if c[2] is not None}
    assert int(suite["failures"]) == len(failed) and suite["errors"] == "0"
    assert (len(failed) == 0) == rep["passed"]
    assert abs(float(suite["time"]) - rep["evaluate_seconds"]) < 1e-3
    for s, (_, _, failure, _, _) in zip(stages, cases):
        assert (failure is None) == s["passed"], s["layer"]
        if failure is not None and s["worst_cell"]:
            assert failure["type"] == "StageMismatch"
            for needle in (s["worst_cell"], f"workbook {s['workbook_value']:.9g}", f"Keras {s['keras_value']:.9g}",
                           f"error {s['max_abs_error']:.3g} > allowed"):
                assert needle in failure["message"], (needle, failure["message"])
    by_name = {c[0]: c for c in cases[len(stages):]}
    assert (v.CHECK_CACHED in failed) == (rep["cached_mismatches"] > 0)
    assert by_name[v.CHECK_CACHED][4] == (not rep["cached_checked"])
    assert (v.CHECK_CONSTANTS in failed) == bool(rep["constant_cells"])
    if rep["constant_cells"]:
        assert rep["constant_cells"][0] in by_name[v.CHECK_CONSTANTS][2]["message"]
        assert by_name[v.CHECK_CONSTANTS][3].splitlines() == rep["constant_cells"][:200]
    assert (v.CHECK_LINT in failed) == bool(rep["lint"])
    if v.CHECK_TOP1 in by_name:
        assert (v.CHECK_TOP1 in failed) == (rep["predicted_workbook"] != rep["predicted_keras"])
    if v.CHECK_IMAGES in by_name:
        assert (v.CHECK_IMAGES in failed) == (rep["top1_agreement"] is not None and rep["top1_agreement"] < 1)


def annotations(out):
    """GitHub workflow commands printed on stdout: [(level, title, message)], unescaped."""
    found = []
    for line in out.splitlines():
        m = re.fullmatch(r"::(error|warning) title=([^:]*)::(.*)", line)
        if m:
            title = m.group(2).replace("%3A", ":").replace("%2C", ",")
            def unescape(t):
                return (t.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%"))
            found.append((m.group(1), unescape(title), unescape(m.group(3))))
        else:
            assert not line.startswith("::"), line
    return found


@pytest.mark.parametrize("model", ["lenet.keras", "padding_cf.h5"])
def test_honest_sample_workbooks_pass(books, capsys, model):
    code, out, rep = report(books[model], capsys)
    assert code == 0, out
    assert rep["passed"] is True and "PASS" in out
    assert rep["top1_agreement"] is None or rep["top1_agreement"] == 1.0
    assert rep["predicted_workbook"] == rep["predicted_keras"] == 7
    assert rep["stages"][0]["klass"] == "InputLayer"
    assert all(s["passed"] and s["normalized_error"] < 1e-5 for s in rep["stages"])
    assert rep["cached_mismatches"] == 0 and rep["constant_cells"] == [] and rep["lint"] == []
    assert rep["evaluate_seconds"] > 0


def test_changed_stage_formula_fails_and_names_the_sheet(books, tmp_path, capsys):
    bad = edit_cell(books["lenet.keras"], beside(books, tmp_path), "03 pool1 c2", "F8",
                    lambda c: c.replace("<f>MAX(", "<f>MIN("))
    code, out, rep = report(bad, capsys)
    assert code == 1
    assert rep["first_failure"] == "pool1"
    assert "'03 pool1 c2'!F8" in out
    assert rep["cached_mismatches"] >= 1


def test_changed_weight_fails_at_its_layer(books, tmp_path, capsys):
    def bump(c):
        return re.sub(r"<v>([^<]+)</v>", lambda m: f"<v>{float(m.group(1)) + 0.5!r}</v>", c)
    bad = edit_cell(books["lenet.keras"], beside(books, tmp_path), "04 conv2 w", "E6", bump)
    code, out, rep = report(bad, capsys)
    assert code == 1
    assert rep["first_failure"] == "conv2"
    assert "FAIL: first failing stage conv2" in out and "'04 conv2 c" in out


def test_stage_formula_replaced_by_its_own_value_fails(books, tmp_path, capsys):
    """Even the right number is wrong where a formula belongs: the workbook stops being live."""
    bad = edit_cell(books["lenet.keras"], beside(books, tmp_path), "02 conv1 c1", "AE10",
                    drop_formula)
    code, out, rep = report(bad, capsys)
    assert code == 1
    assert rep["constant_cells"] == ["'02 conv1 c1'!AE10"]
    assert "'02 conv1 c1'!AE10" in out


def test_constant_in_the_block_before_a_fused_activation_fails(books, tmp_path, capsys):
    """H10 is in conv1's z block (pre-activation), which the manifest does not list: still caught."""
    bad = edit_cell(books["lenet.keras"], beside(books, tmp_path), "02 conv1 c1", "H10",
                    drop_formula)
    code, out, rep = report(bad, capsys)
    assert code == 1
    assert rep["constant_cells"] == ["'02 conv1 c1'!H10"]


def test_stale_cached_value_fails_with_formula_intact(books, tmp_path, capsys):
    bad = edit_cell(books["lenet.keras"], beside(books, tmp_path), "09 predictions", "D8",
                    lambda c: re.sub(r"<v>[^<]+</v>", "<v>0.5</v>", c))
    code, out, rep = report(bad, capsys)
    assert code == 1
    assert rep["cached_mismatches"] == 1
    assert all(s["passed"] for s in rep["stages"])     # the formulas themselves are right
    assert "'09 predictions'!D8" in out


def test_batch_of_images_through_the_workbook(books, capsys):
    code, out, rep = report(books["lenet.keras"], capsys, "--images", SAMPLES / "digits")
    assert code == 0, out
    assert rep["images"] == 9 and rep["top1_agreement"] == 1.0
    assert rep["batch_worst_error"] < 1e-5


def test_other_image_through_the_workbook(books, capsys):
    code, out, rep = report(books["padding_cf.h5"], capsys, "--image", SAMPLES / "digits" / "digit_3.png")
    assert code == 0, out
    assert rep["predicted_workbook"] == rep["predicted_keras"] == 3


def test_report_as_dataframe(books):
    from xlcnn.verify import verify
    rep = verify(books["padding_cf.h5"])
    df = rep.to_dataframe()
    assert list(df["layer"])[1:] == ["conv1", "pool1", "tanh1", "conv2", "pool2", "tanh2", "conv3", "tanh3",
                                     "flatten", "dense", "softmax"]
    assert bool(df["passed"].all())
    assert float(df["max_abs_error"].max()) < 1e-5


@needs_libreoffice
def test_libreoffice_engine(books, capsys):
    code, out, rep = report(books["padding_cf.h5"], capsys, "--engine", "libreoffice")
    assert code == 0, out
    assert rep["engine"] == "libreoffice" and rep["passed"]


# -- CI: JUnit XML and GitHub Actions annotations -------------------------------------------------

LENET_STAGES = [("input_layer", "InputLayer"), ("conv1", "Conv2D"), ("pool1", "MaxPooling2D"), ("conv2", "Conv2D"),
                ("pool2", "MaxPooling2D"), ("flatten", "Flatten"), ("fc1", "Dense"), ("dropout", "Dropout"),
                ("predictions", "Dense")]


def test_junit_of_an_honest_workbook(books, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, rep = report(books["lenet.keras"], capsys)
    assert code == 0
    suite, cases = junit(books["lenet.keras"].with_suffix(".junit.xml"))
    assert [(c[0], c[1]) for c in cases] == LENET_STAGES + [
        ("cached values agree with the formulas", "xlcnn.workbook"),
        ("formulas where formulas belong", "xlcnn.workbook"),
        ("Excel limits and portable functions", "xlcnn.workbook"),
        ("trace sheets give their stage's value", "xlcnn.workbook"),
        ("top-1 prediction agrees with Keras", "xlcnn.workbook")]
    assert suite["tests"] == "14" and suite["failures"] == "0" and suite["skipped"] == "0"
    assert all(c[2] is None and not c[4] for c in cases)
    assert annotations(out) == [] and "::" not in out          # nothing to annotate on a pass


def prediction_halved(books, tmp_path):
    """softmax of class 7 (the predicted one, ~1.0) halved: only the last stage is wrong, and its cached value."""
    return edit_cell(books["lenet.keras"], beside(books, tmp_path), "09 predictions", "D12",
                     set_formula("0.5*C12/SUM($C$5:$C$14)"))


def test_junit_fails_exactly_the_broken_stage_naming_its_worst_cell(books, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    bad = prediction_halved(books, tmp_path)
    code, out, rep = report(bad, capsys)
    assert code == 1 and "::" not in out                     # no annotations outside GitHub Actions
    suite, cases = junit(bad.with_suffix(".junit.xml"))
    failed = {c[0]: c for c in cases if c[2] is not None}
    # the trace of the predictions computes the true value beside the tampered stage cell
    assert sorted(failed) == ["cached values agree with the formulas", "predictions",
                              "trace sheets give their stage's value"]
    assert suite["failures"] == "3" and suite["tests"] == "14"
    _, classname, failure, text, _ = failed["predictions"]
    assert classname == "Dense" and failure["type"] == "StageMismatch"
    assert failure["message"].startswith("'09 predictions'!D12: workbook 0.4999")
    assert re.search(r"Keras 0\.9999\d*; error 0\.5 > allowed 0\.000101 \(atol 1e-06 \+ rtol 0\.0001 x scale 1\)$",
                     failure["message"]), failure["message"]
    assert "layer predictions (Dense), shape (10,)" in text
    stale = failed["cached values agree with the formulas"]
    assert stale[2]["type"] == "StaleCachedValue" and stale[2]["message"].startswith("7 formula cells")  # + overview, gallery, trace
    assert "'09 predictions'!D12: cached 0.99999" in stale[3]


def test_github_annotations_for_a_broken_workbook(books, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    bad = prediction_halved(books, tmp_path)
    code, out, rep = report(bad, capsys, "--quiet")   # annotations are errors: --quiet keeps them
    assert code == 1
    lines = [line for line in out.splitlines() if line]
    assert all(line.startswith("::error title=xlcnn verify%3A ") for line in lines), out
    found = annotations(out)
    assert [(level, title) for level, title, _ in found] == [
        ("error", "xlcnn verify: first failing stage predictions (Dense)"),
        ("error", "xlcnn verify: cached values agree with the formulas"),
        ("error", "xlcnn verify: trace sheets give their stage's value")]
    assert found[0][2].startswith(f"{bad.name}: stage predictions differs from Keras; '09 predictions'!D12: workbook ")
    assert found[1][2].startswith(f"{bad.name}: 7 formula cells show a stale cached value")


@pytest.mark.parametrize("tamper, kind, needle", [
    (("02 conv1 c1", "AE10", drop_formula), "ConstantWhereFormulaBelongs",
     "'02 conv1 c1'!AE10"),
    (("09 predictions", "D8", lambda c: re.sub(r"<v>[^<]+</v>", "<v>0.5</v>", c)), "StaleCachedValue",
     "'09 predictions'!D8"),
])
def test_whole_workbook_checks_fail_as_testcases_and_annotations(books, tmp_path, capsys, monkeypatch,
                                                                  tamper, kind, needle):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    bad = edit_cell(books["lenet.keras"], beside(books, tmp_path), *tamper)
    code, out, rep = report(bad, capsys)
    assert code == 1 and all(s["passed"] for s in rep["stages"])
    _, cases = junit(bad.with_suffix(".junit.xml"))
    failed = [c for c in cases if c[2] is not None]
    assert len(failed) == 1 and failed[0][1] == "xlcnn.workbook" and failed[0][2]["type"] == kind
    assert needle in failed[0][2]["message"]
    found = annotations(out)
    assert len(found) == 1 and found[0][1] == f"xlcnn verify: {failed[0][0]}" and needle in found[0][2]


def test_junit_with_images_and_with_another_image(books, capsys):
    from xlcnn.verify import CHECK_CACHED, CHECK_IMAGES
    book = books["lenet.keras"]
    code, _, rep = report(book, capsys, "--images", SAMPLES / "digits")
    assert code == 0 and rep["images"] == 9
    _, cases = junit(book.with_suffix(".junit.xml"))
    assert cases[-1][:3] == (CHECK_IMAGES, "xlcnn.workbook", None)
    code, _, rep = report(book, capsys, "--image", SAMPLES / "digits" / "digit_3.png")
    assert code == 0
    _, cases = junit(book.with_suffix(".junit.xml"))
    cached = next(c for c in cases if c[0] == CHECK_CACHED)
    assert cached[4] is True and cached[2] is None            # skipped, not passed: the cache holds the 7


HOSTILE = ['conv "q" \'<&>\' 日本語', "フラット", "出力 & <out>, 50%:x\u3000"]


@pytest.fixture(scope="module")
def hostile_book(tmp_path_factory):
    import numpy as np
    from conftest import keras
    from xlcnn.build import build
    base = tmp_path_factory.mktemp("hostile")
    k = keras()
    k.utils.set_random_seed(3)
    L = k.layers
    model = k.Sequential([k.Input((6, 6, 1), name="input_layer"), L.Conv2D(2, 3, name=HOSTILE[0]), L.Flatten(name=HOSTILE[1]),
                          L.Dense(3, activation="softmax", name=HOSTILE[2])])
    model.save(str(base / "hostile.keras"))
    np.save(base / "x.npy", np.random.default_rng(3).random((6, 6, 1)).astype("float32"))
    build(base / "hostile.keras", base / "x.npy", base / "hostile.xlsx")
    return base / "hostile.xlsx"


def test_hostile_layer_names_survive_junit_and_annotations(hostile_book, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, rep = report(hostile_book, capsys)
    assert code == 0 and annotations(out) == []
    _, cases = junit(hostile_book.with_suffix(".junit.xml"))
    assert [(c[0], c[1]) for c in cases[:4]] == [("input_layer", "InputLayer"), (HOSTILE[0], "Conv2D"),
                                                 (HOSTILE[1], "Flatten"), (HOSTILE[2], "Dense")]
    # zero tolerance: every computed stage fails on float32 rounding, so each hostile name is in a failure
    code, out, rep = report(hostile_book, capsys, "--rtol", "0", "--atol", "0")
    assert code == 1
    _, cases = junit(hostile_book.with_suffix(".junit.xml"))
    assert [c[0] for c in cases if c[2] is not None] == [n for n in HOSTILE
                                                          if not next(s for s in rep["stages"] if s["layer"] == n)["passed"]]
    assert HOSTILE[2] in [c[0] for c in cases if c[2] is not None]
    raw = [line for line in out.splitlines() if line.startswith("::error")]
    dense = next(line for line in raw if "(Dense)" in line)
    assert "out>%2C 50%25%3Ax" in dense.split("::")[1]           # title: , : % escaped
    assert f"stage {HOSTILE[2]} differs" in next(a for a in annotations(out) if "(Dense)" in a[1])[2]


def test_junit_and_annotations_escape_what_xml_and_github_cannot_hold():
    """Control characters, newlines and lone surrogates in a name: still one XML document, one line each."""
    from xlcnn.verify import Report, StageResult, github_annotations, junit_xml
    from xlcnn.verify.report import _gh_data, _gh_property
    assert _gh_data("50% a\r\nb: c, d") == "50%25 a%0D%0Ab: c, d"
    assert _gh_property("50% a\r\nb: c, d") == "50%25 a%0D%0Ab%3A c%2C d"
    name = "bad\x00name\nnext <&> \ud800 ok"
    r = Report("w.xlsx", "m.keras", "numpy", passed=False, cached_checked=True,
               stages=[StageResult("input", "InputLayer", (2,), 0.0, 0.0, 0.0, 1.0, True),
                       StageResult(name, "Dense", (2,), 0.5, 0.5, 0.5, 1.0, False, "'s\x01'!B5", 0.5, 1.0)],
               lint=["x!A1: function FOO is not in xlcnn's portable set"], notes=["model differs (sha256)"])
    root = ET.fromstring(junit_xml(r))
    cases = root.find("testsuite").findall("testcase")
    assert [c.get("name") for c in cases] == ["input", "bad\\x00name\nnext <&> \\ud800 ok",
                                              "cached values agree with the formulas",
                                              "formulas where formulas belong", "Excel limits and portable functions"]
    assert root.get("failures") == "2" and root.find("testsuite").get("failures") == "2"
    assert cases[1].find("failure").get("message").startswith("'s\\x01'!B5: workbook 0.5, Keras 1;")
    assert cases[4].find("failure").get("type") == "ExcelLimit"
    lines = github_annotations(r)
    assert len(lines) == 3 and all("\n" not in line and "\r" not in line for line in lines)
    assert lines[0].startswith("::error title=xlcnn verify%3A first failing stage bad\x00name%0Anext <&>")
    assert lines[1] == ("::error title=xlcnn verify%3A Excel limits and portable functions::w.xlsx: 1 problem(s), "
                        "first: x!A1: function FOO is not in xlcnn's portable set")
    assert lines[2] == "::warning title=xlcnn verify%3A note::w.xlsx: model differs (sha256)"
    assert github_annotations(Report("w.xlsx", "m", "numpy", cached_checked=True)) == []


# -- bad input to verify --------------------------------------------------------------------------

def one_line(capsys, code, needle):
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    return err


def test_verify_missing_path(tmp_path, capsys):
    one_line(capsys, cli("verify", tmp_path / "none.xlsx"), "not found")


def test_verify_not_a_zip(tmp_path, capsys):
    (tmp_path / "x.xlsx").write_text("plain text")
    one_line(capsys, cli("verify", tmp_path / "x.xlsx"), "zip")


def test_verify_workbook_without_manifest(tmp_path, capsys):
    import xlsxwriter
    wb = xlsxwriter.Workbook(str(tmp_path / "plain.xlsx"))
    wb.add_worksheet("data").write(0, 0, 1)
    wb.close()
    one_line(capsys, cli("verify", tmp_path / "plain.xlsx"), "no 'manifest' sheet")


def test_verify_manifest_pointing_outside_a_sheet(books, tmp_path, capsys):
    src = books["padding_cf.h5"]
    with zipfile.ZipFile(src) as z:
        strings = z.read("xl/sharedStrings.xml").decode()
    cell = re.search(r"<si><t>(B5:[A-Z]+\d+)</t></si>", strings).group(1)

    def outside(text):
        return text.replace(f"<t>{cell}</t>", "<t>B5:XFE9</t>")
    dst = tmp_path / "outside.xlsx"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "xl/sharedStrings.xml":
                data = outside(data.decode()).encode()
            zout.writestr(item, data)
    one_line(capsys, cli("verify", dst), "manifest!")


def test_verify_when_the_model_is_gone(books, tmp_path, capsys):
    shutil.copy(books["lenet.keras"], tmp_path / "moved.xlsx")
    err = one_line(capsys, cli("verify", tmp_path / "moved.xlsx"), "--model")
    assert "lenet.keras" in err
    assert cli("verify", tmp_path / "moved.xlsx", "--model", SAMPLES / "lenet.keras") == 0


def test_verify_zip_bomb_refused_by_declared_sizes(tmp_path, capsys):
    bomb = tmp_path / "bomb.xlsx"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/worksheets/sheet1.xml", b"\0" * (300 * 1024 * 1024))
    err = one_line(capsys, cli("verify", bomb), "bomb.xlsx")
    assert "size" in err or "ratio" in err or "bomb" in err.lower()


def test_verify_junit_bad_paths_refused_before_any_work(books, tmp_path, capsys):
    book = books["padding_cf.h5"]
    one_line(capsys, cli("verify", book, "--junit", tmp_path), "is a folder")
    one_line(capsys, cli("verify", book, "--junit", tmp_path / "no" / "r.xml"), "does not exist")
    one_line(capsys, cli("verify", book, "--junit", ""), "needs a file name")
    one_line(capsys, cli("verify", book, "--junit", book), "is the workbook itself")
    one_line(capsys, cli("verify", book, "--junit", tmp_path / "r.x", "--json", tmp_path / "r.x"), "same file")
    one_line(capsys, cli("verify", book, "--json", tmp_path), "is a folder")
    assert list(tmp_path.iterdir()) == []
    assert zipfile.is_zipfile(book)                           # the workbook was not touched


def test_verify_junit_replaces_an_old_file_atomically(books, tmp_path, capsys):
    out = tmp_path / "junit.xml"
    out.write_text("old, not XML")
    assert cli("verify", books["padding_cf.h5"], "--junit", out, "--quiet") == 0
    assert capsys.readouterr().out == ""
    assert ET.parse(out).getroot().find("testsuite").get("failures") == "0"
    assert out.read_bytes().startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert [p.name for p in tmp_path.iterdir()] == ["junit.xml"]  # no temporary file left behind


# --------------------------------------------------------------------------- --no-keras

NO_KERAS_RUN = """
import json, sys
from xlcnn.cli import main
code = main(sys.argv[1:])
print("RESULT " + json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}))
"""


def no_keras(path):
    """`xlcnn verify PATH --no-keras` in a fresh interpreter: (exit code, TF or Keras imported, stdout, JSON, JUnit)."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", NO_KERAS_RUN, "verify", str(path), "--no-keras",
                           "--json", str(path.with_suffix(".json")), "--junit", str(path.with_suffix(".junit.xml"))],
                          capture_output=True, text=True, timeout=600)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[7:])
    rep = json.loads(path.with_suffix(".json").read_text())
    parsed = junit(path.with_suffix(".junit.xml"))
    assert_junit_matches(rep, parsed)
    return result["code"], result["tensorflow"] or result["keras"], proc.stdout, rep, parsed


def test_no_keras_checks_the_workbook_alone_without_tensorflow(books, tmp_path):
    honest = shutil.copy(books["lenet.keras"], tmp_path / "honest.xlsx")  # no model beside it: not needed
    code, imported, out, rep, (suite, cases) = no_keras(honest)
    assert (code, imported) == (0, False), out
    assert rep["passed"] is True and rep["keras_compared"] is False and rep["stages"] == []
    assert rep["keras_comparison"].startswith("no comparison with Keras was made")
    assert rep["cached_checked"] and rep["cached_mismatches"] == 0 and rep["constant_cells"] == [] and rep["lint"] == []
    assert "no comparison with Keras was made" in out and "NOT compared with Keras" in out
    assert ("stages equal Keras", "xlcnn.workbook", None, None, True) in cases  # a skipped testcase
    assert int(suite["skipped"]) == 1 and suite["failures"] == "0"


@pytest.mark.parametrize("sheet, cell, transform, field", [
    ("09 predictions", "D8", lambda c: re.sub(r"<v>[^<]+</v>", "<v>0.5</v>", c), "cached_mismatches"),
    ("02 conv1 c1", "AE10", drop_formula, "constant_cells"),
], ids=["stale-cached-value", "constant-over-a-formula"])
def test_no_keras_still_fails_a_broken_workbook(books, tmp_path, sheet, cell, transform, field):
    bad = edit_cell(books["lenet.keras"], tmp_path / "bad.xlsx", sheet, cell, transform)
    code, imported, out, rep, _ = no_keras(bad)
    assert (code, imported) == (1, False), out
    assert rep["passed"] is False and rep[field] and f"'{sheet}'!{cell}" in out
    assert "no comparison with Keras was made" in out


@pytest.mark.parametrize("option", [["--image", DIGIT], ["--images", SAMPLES / "digits"], ["--model", "m.keras"]])
def test_no_keras_refuses_options_that_need_keras(books, capsys, option):
    assert cli("verify", books["lenet.keras"], "--no-keras", *option) == 2
    assert "cannot be combined with --no-keras" in capsys.readouterr().err


# --------------------------------------------------------------------------- vectorised checks = one by one

def lint_one_by_one(book):
    """The lint of every formula text on its own (verify's lint before formula groups)."""
    from xlcnn.formula import cell_name
    from xlcnn.verify.checks import (_BAD_SHEET, EXCEL_MAX_ARGS, EXCEL_MAX_FORMULA, EXCEL_MAX_NESTING,
                                     PORTABLE_FUNCTIONS)
    problems = []
    for name in book.sheets:
        if not 1 <= len(name) <= 31 or _BAD_SHEET.search(name) or name.startswith("'") or name.endswith("'"):
            problems.append(f"sheet name {name!r} is not valid in Excel (1-31 characters, none of \\ / ? * [ ] :)")
    seen_functions = set()
    for (sheet, row, col), text in book.formulas.items():
        where = cell_name(sheet, row, col)
        if len(text) + 1 > EXCEL_MAX_FORMULA:
            problems.append(f"{where}: formula of {len(text) + 1} characters (Excel's limit is 8,192)")
        bare = re.sub(r"'(?:[^']|'')*'|\"[^\"]*\"", "", text)
        depth, args, worst_depth, worst_args, worst_options = 0, [0], 0, 0, 0
        names = [None]
        for at, ch in enumerate(bare):
            if ch == "(":
                depth += 1
                args.append(0)
                names.append(re.search(r"[A-Za-z_][A-Za-z0-9_.]*$", bare[:at]))
                worst_depth = max(worst_depth, depth)
            elif ch == ")":
                n = args.pop()
                worst_args = max(worst_args, n + 1)
                name = names.pop()
                if name is not None and name.group().upper() == "CHOOSE":
                    worst_options = max(worst_options, n)
                depth -= 1
            elif ch == ",":
                args[-1] += 1
        if worst_depth > EXCEL_MAX_NESTING:
            problems.append(f"{where}: nesting {worst_depth} levels deep (Excel's limit is 64)")
        if worst_args > EXCEL_MAX_ARGS:
            problems.append(f"{where}: a function with {worst_args} arguments (Excel's limit is 255)")
        if worst_options > 30:
            problems.append(f"{where}: a CHOOSE with {worst_options} options (LibreOffice computes #VALUE! past 30; "
                            "nest CHOOSEs of 30)")
        for fn in re.findall(r"([A-Za-z_][A-Za-z0-9_.]*)\(", re.sub(r"'(?:[^']|'')*'|\"[^\"]*\"", "", text)):
            if fn.upper() not in PORTABLE_FUNCTIONS and fn.upper() not in seen_functions:
                seen_functions.add(fn.upper())
                problems.append(f"{where}: function {fn} is not in xlcnn's portable set (Excel 2010+ and LibreOffice)")
    return problems


def check_cached_one_by_one(book, value_of):
    """The cached-value check one cell at a time (verify's check before the vectorised one)."""
    import numpy as np
    bad = []
    for key in book.formulas:
        cached = book.cached.get(key)
        got = value_of(*key)
        finite = isinstance(cached, (int, float)) and not isinstance(cached, bool) and np.isfinite(cached)
        if not finite:
            if cached is None or (isinstance(cached, str) and not np.isfinite(got)):
                if cached is None:
                    bad.append((key, got, None))
                continue
            if isinstance(cached, str) and cached.startswith("#"):
                bad.append((key, got, cached))
            continue
        if not np.isfinite(got) or abs(got - float(cached)) > 1e-9 * max(1.0, abs(got)):
            bad.append((key, got, cached))
    return bad


def same(a, b):
    """Lists of (cell, value, cached) equal, NaN equal to NaN."""
    import math
    assert len(a) == len(b)
    for (k1, g1, c1), (k2, g2, c2) in zip(a, b):
        assert k1 == k2 and (g1 == g2 or (math.isnan(g1) and math.isnan(g2)))
        assert c1 == c2 or (isinstance(c1, float) and math.isnan(c1) and math.isnan(c2))
    return True


def groups_of(book):
    """Formula groups from the grouping alone (no compile: a formula may break Excel's limits)."""
    import numpy as np
    from xlcnn.formula.grouping import group_formulas
    from xlcnn.verify.checks import formula_table
    return [np.concatenate([c[0] for c in chunks]) for chunks in group_formulas([t for texts in formula_table(book)[3] for t in texts]).values()]


def test_lint_by_group_equals_one_by_one_on_hand_written_formulas(tmp_path):
    import xlsxwriter

    from xlcnn.formula import read_workbook
    from xlcnn.verify import lint
    path = tmp_path / "lint.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    a = wb.add_worksheet("a")
    b = wb.add_worksheet("b(1),x")
    for r in range(6):
        a.write_number(r, 0, r + 1.0)
    for r in range(4):  # one group: only the references' digits (and so the lengths) differ
        a.write_formula(r, 1, "=" + "+".join([f"A{r + 1}"] * (2000 + 300 * r)))
        a.write_formula(r, 2, "=" + "ABS(" * (60 + 3 * r) + f"A{r + 1}" + ")" * (60 + 3 * r))
        a.write_formula(r, 3, f"=MOD(A{r + 1},2)+LOG(A{r + 1})")
        a.write_formula(r, 4, "=SUM(" + ",".join(f"A{1 + (i + r) % 6}" for i in range(256 + r)) + ")")
        b.write_formula(r, 0, f"=ROUNDUP('b(1),x'!C{r + 1}*a!A{r + 1},1)&\"((,\"")
    b.write_formula(5, 0, "=mod(a!A1,3)+ERF.PRECISE(a!A2)")
    b.write_formula(6, 0, "=" + "EXP(" * 70 + "a!A1" + ")" * 70)
    options = ",".join(f"a!A{1 + i % 6}" for i in range(31))
    b.write_formula(7, 0, f"=INDEX(CHOOSE(a!A1,{options}),1)")   # 31 options: #VALUE! in LibreOffice
    b.write_formula(8, 0, f"=choose(a!A1,{options[:-5]})+SUM({options})")  # 30: fine; SUM takes 31
    wb.close()
    book = read_workbook(path)
    want = lint_one_by_one(book)
    assert len(want) >= 10 and any("8,192" in p for p in want) and any("nesting" in p for p in want)
    assert any("arguments" in p for p in want) and any("function LOG " in p for p in want)
    assert [p for p in want if "CHOOSE" in p] == [
        "'b(1),x'!A8: a CHOOSE with 31 options (LibreOffice computes #VALUE! past 30; nest CHOOSEs of 30)"]
    assert lint(book, groups_of(book)) == want
    assert lint(book) == want  # no groups: every formula on its own


def test_lint_and_cached_check_vectorised_equal_one_by_one_on_real_workbooks(books, tmp_path):
    import numpy as np

    from xlcnn.formula import evaluate, formula_groups, read_workbook
    from xlcnn.verify import check_cached, lint, missing_formulas, read_contract, stage_cells
    from xlcnn import manifest as mf
    stale = edit_cell(books["lenet.keras"], tmp_path / "stale.xlsx", "09 predictions", "D8",
                      lambda c: re.sub(r"<v>[^<]+</v>", "<v>0.5</v>", c))
    gone = edit_cell(books["lenet.keras"], tmp_path / "gone.xlsx", "02 conv1 c1", "AE10",
                     drop_formula)
    for path in (books["lenet.keras"], books["padding_cf.h5"], stale, gone):
        book = read_workbook(path)
        result = evaluate(book)
        keys = list(book.formulas)
        for i, key in enumerate(keys[::97]):  # now break cached values of every kind
            book.cached[key] = [None, "#N/A", "text", True, float("nan"), 1e9, book.cached[key] * (1 + 1e-6)][i % 7]
        fast = check_cached(book, result.cells)
        assert same(fast, check_cached_one_by_one(book, result.value))
        assert len(fast) >= len(keys[::97]) * 3 // 7
        assert lint(book, formula_groups(book)) == lint_one_by_one(book)
        entries, _ = read_contract(book, path)
        first = mf.layers(entries)[0]
        from xlcnn.formula import cell_name
        want = [cell_name(*k) for k in stage_cells(entries, first) if k not in book.formulas]
        assert missing_formulas(book, entries, first) == want
        assert (want == ["'02 conv1 c1'!AE10"]) == (path == gone)
        rows, cols, _ = book.formula_cells(book.sheets[-1])
        np.testing.assert_array_equal(result.cells(book.sheets[-1], rows, cols),
                                      [result.value(book.sheets[-1], r, c) for r, c in zip(rows, cols)])


# --------------------------------------------------------------------------- Keras in a helper process

FRESH_RUN = """
import json, sys
from xlcnn.cli import main
code = main(sys.argv[1:])
print("RESULT " + json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules}))
"""


def fresh_verify(helper, *args):
    """`xlcnn verify ARGS` in a fresh interpreter, the Keras helper on or off: (exit code,
    TensorFlow imported by the verify process itself, stdout, stderr)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, XLCNN_KERAS_HELPER="1" if helper else "0")
    proc = subprocess.run([sys.executable, "-c", FRESH_RUN, "verify", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stdout + proc.stderr
    result = json.loads(line[7:])
    return result["code"], result["tensorflow"], proc.stdout, proc.stderr


needs_two_cores = pytest.mark.skipif(
    __import__("xlcnn.verify.reference", fromlist=["usable_cores"]).usable_cores() < 2,
    reason="the Keras helper process runs only where there is a second core")


@needs_two_cores
def test_keras_in_a_helper_process_gives_the_same_report(books, tmp_path):
    reports = {}
    for helper in (True, False):
        out = tmp_path / f"helper-{helper}.json"
        code, imported, stdout, _ = fresh_verify(helper, books["lenet.keras"], "--json", out)
        assert code == 0, stdout
        assert imported is (not helper)  # with the helper, this process never imports TensorFlow
        reports[helper] = json.loads(out.read_text())
    stages = {h: r["stages"] for h, r in reports.items()}
    assert len(stages[True]) == 9 and all(s["passed"] for s in stages[True])
    assert stages[True] == stages[False]  # the same errors, worst cells and values, bit for bit
    assert reports[True]["predicted_keras"] == reports[False]["predicted_keras"] == 7


@needs_two_cores
@pytest.mark.parametrize("case", ["other-model", "damaged-model"])
def test_errors_in_the_keras_helper_read_as_without_it(books, tmp_path, case):
    if case == "other-model":
        model, needle = books["padding_cf.h5"].with_suffix(""), "has no rows for layer(s)"
    else:
        model, needle = tmp_path / "cut.keras", "was it truncated?"
        model.write_bytes((books["lenet.keras"].parent / "lenet.keras").read_bytes()[:300])
    seen = set()
    for helper in (True, False):
        code, _, stdout, stderr = fresh_verify(helper, books["lenet.keras"], "--model", model)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], stdout + stderr
        seen.add(lines[0])
    assert len(seen) == 1  # word for word the same line


HELPER_GONE = """
import json, os, signal, sys, time
import numpy as np
from xlcnn.verify.reference import Reference
model, layers, when = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
x = np.random.default_rng(0).random((28, 28, 1))
ref = Reference(helper=True)
assert ref.in_helper
pid = ref._process.pid
if when == "before-load":
    os.kill(pid, signal.SIGKILL); time.sleep(0.5)
ref.load(model, None, layers, "book.xlsx")
if when == "before-outputs":
    os.kill(pid, signal.SIGKILL); time.sleep(0.5)
got = ref.outputs(x)
fell_back = not ref.in_helper
ref.close()
here = Reference(helper=False)
here.load(model, None, layers, "book.xlsx")
want = here.outputs(x)
t = time.perf_counter()
busy = Reference(helper=True)  # still importing TensorFlow when it is closed
busy.close()
print("RESULT " + json.dumps({"names": list(got) == list(want), "same": all(np.array_equal(got[k], want[k]) for k in want),
                              "fell_back": fell_back, "close_s": time.perf_counter() - t, "layers": len(want)}))
"""


@needs_two_cores
@pytest.mark.parametrize("when", ["never", "before-load", "before-outputs"])
def test_a_helper_that_dies_leaves_the_work_to_this_process(books, when):
    import subprocess
    import sys
    layers = ["input_layer", "conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "dropout", "predictions"]
    proc = subprocess.run([sys.executable, "-c", HELPER_GONE, str(books["lenet.keras"].parent / "lenet.keras"),
                           json.dumps(layers), when], capture_output=True, text=True, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stdout + proc.stderr
    result = json.loads(line[7:])
    assert result["names"] and result["same"] and result["layers"] == 8
    assert result["fell_back"] is (when != "never")  # the helper answered, or this process did
    assert result["close_s"] < 5  # closing does not wait for TensorFlow's import to finish
