"""Shared test helpers: tiny real Keras models, LibreOffice recalculation, manifest-driven comparison."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
SHARED_MODELS = ROOT.parent / "shared" / "models"
SAMPLES = ROOT / "samples"

needs_libreoffice = pytest.mark.skipif(shutil.which("soffice") is None,
                                       reason="LibreOffice (soffice) is not installed")


def keras():
    from xlcnn.model import quiet_keras
    return quiet_keras()


def cli(*args):
    """Run the command line in this process: its exit code (print goes to capsys)."""
    from xlcnn.cli import main
    return main([str(a) for a in args])


def one_line_error(capsys, code, needle=""):
    """The command failed with exit code 2 and one line 'xlcnn: error: ...' holding needle."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("xlcnn: error: ") and "Traceback" not in err
    assert needle in err, err
    return err


def sequential(shape, layers):
    """A case builder: a Sequential model on Input(shape) with layers() made fresh each time."""
    def make():
        return keras().Sequential([keras().Input(shape), *layers()])
    return make


def save_model(model, path):
    path = Path(path)
    model.save(str(path))
    return path


def openpyxl_block_reader(path):
    """block(sheet, r0, c0, r1, c1) over the cached values of an .xlsx (as LibreOffice saved them)."""
    import openpyxl
    wb = openpyxl.load_workbook(path, data_only=True, read_only=False)

    def block(sheet, r0, c0, r1, c1):
        ws = wb[sheet]
        out = np.empty((r1 - r0 + 1, c1 - c0 + 1))
        for i, row in enumerate(ws.iter_rows(min_row=r0 + 1, max_row=r1 + 1, min_col=c0 + 1, max_col=c1 + 1,
                                             values_only=True)):
            out[i] = [np.nan if v is None or isinstance(v, str) else float(v) for v in row]
        return out

    def rows(sheet):
        return [list(r) for r in wb[sheet].iter_rows(values_only=True)]

    return block, rows, wb.sheetnames


def stage_values(path):
    """{layer: array in Keras layout} for every manifest entry of a workbook's cached values."""
    from xlcnn import manifest
    block, rows, sheets = openpyxl_block_reader(path)
    entries = manifest.parse(rows("manifest"), sheets)
    return {layer: manifest.assemble(entries, layer, block) for layer in manifest.layers(entries)}, entries


def assert_matches_keras(values, model_path, x, rel=1e-5, weights=None):
    """Every layer's workbook values equal Keras's outputs within rel x the layer's scale."""
    from xlcnn.model import load
    loaded = load(model_path, weights)
    outs = loaded.layer_outputs(np.asarray(x)[None])
    assert loaded.input_name in values, "the manifest has no row for the model input"
    np.testing.assert_allclose(values[loaded.input_name], np.asarray(x, dtype=np.float64), rtol=0, atol=1e-6)
    for layer in loaded.layers:
        assert layer.name in values, f"the manifest has no row for layer {layer.name}"
        got, want = values[layer.name], outs[layer.name][0]
        assert got.shape == want.shape, (layer.name, got.shape, want.shape)
        scale = max(float(np.max(np.abs(want))), 1e-3)
        err = float(np.max(np.abs(got - want)))
        assert err <= rel * scale, f"{layer.name}: max error {err:.3g} > {rel} x scale {scale:.3g}"
    return outs


def write_input_cells(src, dst, entries, input_layer, x):
    """Copy a workbook with new input values typed into its input cells (openpyxl keeps formulas)."""
    import openpyxl
    wb = openpyxl.load_workbook(src)
    rows = [e for e in entries if e.layer == input_layer]
    x = np.asarray(x, dtype=np.float64)
    for e in rows:
        r0, c0, r1, c1 = e.range
        if e.channel is None:
            vals = x.reshape(-1, 1)
        else:
            vals = np.moveaxis(x, e.channel_axis, 0)[e.channel]
            if vals.ndim == 1:      # a signal: each channel is a column of steps
                vals = vals[:, None]
        ws = wb[e.sheet]
        for i in range(r1 - r0 + 1):
            for j in range(c1 - c0 + 1):
                ws.cell(row=r0 + 1 + i, column=c0 + 1 + j, value=float(vals[i, j]))
    wb.save(dst)
    return Path(dst)


def assert_excel_opens_cleanly(path):
    """openxml-audit (the Open XML SDK's schema and semantic checks in pure Python; the same as
    `openxml-audit -f office2010 --policy strict FILE`) finds nothing that would make Excel offer
    to repair the workbook. About 0.2 s for a test workbook, 3 s for LeNet-size."""
    from openxml_audit import FileFormat, OpenXmlValidator
    result = OpenXmlValidator(file_format=FileFormat.OFFICE_2010, strict=True, max_errors=20).validate(path)
    assert result.is_valid and not result.errors, [str(e) for e in result.errors[:5]]


@pytest.fixture(scope="session")
def tf_keras_module():
    return keras()


def random_input(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-2.0, 2.0, size=shape).astype(np.float32)


def build_cases(cases, base, images=None):
    """Build a workbook for every case {name: (make_model, suffix)}, from a random input or, where
    images[name] names an image file, from that real image; then have LibreOffice recalculate all
    of them (one start for the lot), type a second input into each workbook's input cells and
    recalculate those too.

    Returns {name: dict(model, x, x2, book, lo, lo2)}; lo/lo2 are missing without LibreOffice.
    A case that fails to build keeps its exception as `error` and fails only its own tests
    (check_case re-raises it); the other cases go on."""
    from xlcnn.build import build, default_scale
    from xlcnn.image import prepare
    from xlcnn.libreoffice import recalculate
    from xlcnn.model import input_layout, load
    images = images or {}
    k = keras()
    out = {}
    for i, (name, (make, suffix)) in enumerate(cases.items()):
        try:
            k.utils.set_random_seed(i)
            model = make()
            model_path = base / f"{name}{suffix}"
            model.save(str(model_path))
            shape = model.input_shape[1:]
            book = base / f"{name}.xlsx"
            if name in images:
                build(model_path, images[name], book)
                loaded = load(model_path)
                x = prepare(images[name], loaded.input_shape, input_layout(loaded),
                            default_scale=default_scale(loaded)).tensor
                x2 = (random_input(shape, seed=200 + i) + 2.0) / 4.0 * float(np.max(x))
            else:
                x = random_input(shape, seed=100 + i)
                np.save(base / f"{name}.npy", x)
                build(model_path, base / f"{name}.npy", book)
                x2 = random_input(shape, seed=200 + i)
        except Exception as exc:  # noqa: BLE001  (kept for the case's own tests to report)
            out[name] = dict(error=exc)
            continue
        out[name] = dict(model=model_path, x=x, x2=x2.astype(np.float32), book=book)
    built = [c for c in out.values() if "error" not in c]
    if shutil.which("soffice") is None:
        return out
    for case, path in zip(built, recalculate([c["book"] for c in built], base / "lo")):
        case["lo"] = path
        _, entries = stage_values(path)
        case["edited"] = write_input_cells(case["book"], base / f"{case['book'].stem}_edited.xlsx", entries,
                                           load(case["model"]).input_name, case["x2"])
    for case, path in zip(built, recalculate([c["edited"] for c in built], base / "lo2")):
        case["lo2"] = path
    return out


def check_case(case, which):
    """A built case's stages equal Keras: which = 'book' (the cached values as written), 'lo'
    (LibreOffice's recalculation) or 'lo2' (recalculated after the second input was typed in,
    which must also have changed the model's output)."""
    if "error" in case:
        raise AssertionError(f"the case did not build: {type(case['error']).__name__}: {case['error']}")
    values, _ = stage_values(case[which])
    outs = assert_matches_keras(values, case["model"], case["x2"] if which == "lo2" else case["x"])
    if which == "book":  # and xlcnn verify, with its own engine and structural checks, agrees
        from xlcnn.verify import verify
        report = verify(case["book"])
        assert report.passed, (report.first_failure, report.constant_cells[:3], report.cached_examples,
                               report.lint[:3])
        assert_excel_opens_cleanly(case["book"])
    if which == "lo2":
        old, _ = stage_values(case["lo"])
        last = list(outs)[-1]
        assert not np.allclose(values[last], old[last]), "the new input did not change the output"


def case_tests(cases, folder, images=None):
    """The per-layer harness (as Keras's run_layer_test): for cases() = {name: (make_model, suffix)},
    the module fixture `built` and the three tests every layer-case file runs on each case. Use:

        built, test_cached_values_equal_keras, test_libreoffice_recalculation_equals_keras, \\
            test_new_input_typed_into_cells_still_equals_keras = case_tests(_cases, "layers")
    """
    names = list(cases())

    @pytest.fixture(scope="module")
    def built(tmp_path_factory):
        return build_cases(cases(), tmp_path_factory.mktemp(folder), images=images)

    @pytest.mark.parametrize("name", names)
    def test_cached_values_equal_keras(built, name):
        """The values xlcnn stores with every formula already equal Keras (and xlcnn verify agrees)."""
        check_case(built[name], "book")

    @needs_libreoffice
    @pytest.mark.parametrize("name", names)
    def test_libreoffice_recalculation_equals_keras(built, name):
        """LibreOffice recalculates every formula from scratch: every stage equals Keras."""
        check_case(built[name], "lo")

    @needs_libreoffice
    @pytest.mark.parametrize("name", names)
    def test_new_input_typed_into_cells_still_equals_keras(built, name):
        """A second input typed into the input cells, recalculated: Keras again, and the output moved."""
        check_case(built[name], "lo2")

    return (built, test_cached_values_equal_keras, test_libreoffice_recalculation_equals_keras,
            test_new_input_typed_into_cells_still_equals_keras)
