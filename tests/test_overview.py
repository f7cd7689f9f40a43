"""The overview's live picture and scores, the gallery, the links between sheets (issue #10)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import SAMPLES, needs_libreoffice, write_input_cells

REF = re.compile(r"^='((?:[^']|'')+)'!\$?([A-Z]+)\$?(\d+)$")
DIGIT = SAMPLES / "digits" / "digit_7.png"


def col_index(letters):
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - 64
    return n - 1


def plain_refs(ws):
    """{(row, col) on this sheet: (sheet, row, col) referenced} for every formula that is one reference."""
    out = {}
    for row in ws.iter_rows():
        for cell in row:
            if isinstance(cell.value, str):
                m = REF.match(cell.value)
                if m:
                    out[(cell.row - 1, cell.column - 1)] = (m.group(1).replace("''", "'"), int(m.group(3)) - 1,
                                                            col_index(m.group(2)))
    return out


def entry_cells(e):
    r0, c0, r1, c1 = e.range
    return {(e.sheet, r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)}


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    from xlcnn.build import build
    base = tmp_path_factory.mktemp("overview")
    out = {}
    for name, model in (("lenet", SAMPLES / "lenet.keras"), ("cf", SAMPLES / "padding_cf.h5")):
        path = base / f"{name}.xlsx"
        build(model, DIGIT, path)
        out[name] = (path, model)
    return out


def load(path):
    import openpyxl
    from xlcnn import manifest
    wb = openpyxl.load_workbook(path)
    rows = [list(r) for r in wb["manifest"].iter_rows(values_only=True)]
    return wb, manifest.parse([r[:7] for r in rows], wb.sheetnames)


def named_cell(wb, name):
    dest = next(iter(wb.defined_names[name].destinations))
    return wb[dest[0]][dest[1].replace("$", "")]


@pytest.mark.parametrize("name", ["lenet", "cf"])
def test_picture_cells_are_the_input_cells_one_to_one(books, name):
    wb, entries = load(books[name][0])
    inputs = [e for e in entries if e.layer == entries[0].layer]
    refs = plain_refs(wb["overview"])
    for e in inputs:
        picture = {at: src for at, src in refs.items() if src[0] == e.sheet}
        assert sorted(picture.values()) == sorted(entry_cells(e)), "every input cell, each once"
        # laid out like the input: the same offset from the picture's corner as from the map's
        top = min(r for r, _ in picture)
        left = min(c for _, c in picture)
        for (r, c), (_, sr, sc) in picture.items():
            assert (r - top, c - left) == (sr - e.range[0], sc - e.range[1])


def test_scores_before_softmax_are_keras_logits(books):
    from xlcnn.model import load as load_model
    path, model = books["lenet"]
    wb, _ = load(path)
    loaded = load_model(model)
    from xlcnn.image import prepare
    from xlcnn.model import input_layout
    x = prepare(DIGIT, loaded.input_shape, input_layout(loaded)).tensor
    outs = loaded.layer_outputs(x[None])
    layer = loaded.model.get_layer("predictions")
    kernel, bias = layer.get_weights()
    z = outs["fc1"][0].astype(np.float64) @ kernel + bias
    ws = wb["overview"]
    header = next(c for row in ws.iter_rows() for c in row if c.value == "score z (before softmax)")
    got = [ws.cell(header.row + 1 + i, header.column).value for i in range(10)]
    assert all(isinstance(g, str) and g.startswith("='09 predictions'!") for g in got)
    import openpyxl
    cached = openpyxl.load_workbook(path, data_only=True)["overview"]
    values = [cached.cell(header.row + 1 + i, header.column).value for i in range(10)]
    np.testing.assert_allclose(values, z, rtol=1e-5, atol=1e-5)


@needs_libreoffice
def test_typing_a_new_input_changes_picture_and_prediction_not_the_as_built(books, tmp_path):
    import openpyxl
    from xlcnn.libreoffice import recalculate
    from xlcnn.model import load as load_model
    path, model = books["lenet"]
    wb, entries = load(path)
    assert named_cell(wb, "predicted_when_built").value == 7
    one = np.zeros((28, 28, 1), np.float32)
    one[4:24, 13:15, 0] = 1.0                      # a "1"
    loaded = load_model(model)
    want = int(np.argmax(loaded.layer_outputs(one[None])[loaded.layers[-1].name][0]))
    assert want != 7
    edited = write_input_cells(path, tmp_path / "edited.xlsx", entries, loaded.input_name, one)
    (lo,) = recalculate([edited], tmp_path / "lo")
    new = openpyxl.load_workbook(lo, data_only=True)
    refs = plain_refs(wb["overview"])
    e = next(x for x in entries if x.layer == loaded.input_name)
    for (r, c), (_, sr, sc) in refs.items():
        if _ == e.sheet:
            assert new["overview"].cell(r + 1, c + 1).value == pytest.approx(one[sr - e.range[0], sc - e.range[1], 0])
    assert named_cell(new, "predicted_class").value == want
    assert named_cell(new, "predicted_when_built").value == 7


@pytest.mark.parametrize("name", ["lenet", "cf"])
def test_gallery_references_every_channel_of_every_stage(books, name):
    wb, entries = load(books[name][0])
    assert wb.sheetnames[:2] == ["overview", "gallery"]
    want = set().union(*(entry_cells(e) for e in entries))
    got = set(plain_refs(wb["gallery"]).values())
    assert got == want


@pytest.mark.parametrize("name", ["lenet", "cf"])
def test_every_stage_sheet_links_to_its_neighbours_and_the_overview(books, name):
    wb, entries = load(books[name][0])

    def targets(sheet):
        out = set()
        for row in wb[sheet].iter_rows():
            for cell in row:
                if cell.hyperlink is not None and cell.hyperlink.location:
                    out.add(cell.hyperlink.location.rsplit("!", 1)[0].strip("'").replace("''", "'"))
        return out

    chain = []          # the sheets of each stage that has its own, in order (pass-throughs share)
    for layer in dict.fromkeys(e.layer for e in entries):
        sheets = {e.sheet for e in entries if e.layer == layer}
        if not chain or not sheets <= chain[-1]:
            chain.append(sheets)
    assert len(chain) > 3
    for k, sheets in enumerate(chain):
        for sheet in sheets:
            found = targets(sheet)
            assert "overview" in found, sheet
            if k:
                assert found & chain[k - 1], f"{sheet}: no link to the previous stage"
            if k + 1 < len(chain):
                assert found & chain[k + 1], f"{sheet}: no link to the next stage"
            if len(sheets) > 1:
                assert len(found & sheets) >= 1, f"{sheet}: no link to a sibling channel"
    assert "overview" in targets("manifest")


def test_weights_and_flatten_say_shapes_and_order(books):
    wb, _ = load(books["cf"][0])
    assert "(4, 4, 1, 5)" in wb["02 conv1 w"]["B1"].value
    assert "the filter's depth" in wb["02 conv1 w"]["B1"].value
    assert "the column index varies fastest" in wb["10 flatten"]["B2"].value
    wb, _ = load(books["lenet"][0])
    assert "(5, 5, 6, 16)" in wb["04 conv2 w"]["B1"].value
    assert "the channel index varies fastest" in wb["06 flatten"]["B2"].value


@pytest.mark.parametrize("name", ["lenet", "cf"])
def test_verify_passes(books, name):
    from xlcnn.verify import verify
    report = verify(books[name][0])
    assert report.passed, (report.first_failure, report.constant_cells[:3], report.cached_examples, report.lint[:3])
