"""xlcnn verify: honest workbooks pass; every kind of tampering fails with exit 1 and names the place."""

from __future__ import annotations

import html
import json
import re
import shutil
import zipfile

import pytest

from conftest import SAMPLES, needs_libreoffice

DIGIT = SAMPLES / "digits" / "digit_7.png"


def cli(*args):
    from xlcnn.cli import main
    return main([str(a) for a in args])


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


def beside(books, tmp_path):
    """A name for a tampered copy next to the honest one, so its recorded model path still resolves."""
    return books["lenet.keras"].with_name(f"tampered_{tmp_path.name}.xlsx")


def report(path, capsys, *extra):
    code = cli("verify", path, "--json", path.with_suffix(".json"), *extra)
    out = capsys.readouterr().out
    return code, out, json.loads(path.with_suffix(".json").read_text())


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
                    lambda c: re.sub(r"<f>.*?</f>", "", c))
    code, out, rep = report(bad, capsys)
    assert code == 1
    assert rep["constant_cells"] == ["'02 conv1 c1'!AE10"]
    assert "'02 conv1 c1'!AE10" in out


def test_constant_in_the_block_before_a_fused_activation_fails(books, tmp_path, capsys):
    """H10 is in conv1's z block (pre-activation), which the manifest does not list: still caught."""
    bad = edit_cell(books["lenet.keras"], beside(books, tmp_path), "02 conv1 c1", "H10",
                    lambda c: re.sub(r"<f>.*?</f>", "", c))
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
