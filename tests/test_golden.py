"""Golden formulas of a tiny workbook: every formula xlcnn writes for a small fixed architecture, in
one reviewable text file. A change to the layout or the formulas shows up in review as a diff of
tests/golden/tiny_formulas.txt. Regenerate it deliberately with XLCNN_UPDATE_GOLDEN=1."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from conftest import keras

GOLDEN = Path(__file__).parent / "golden" / "tiny_formulas.txt"


def _cell(row, col):
    letters, c = "", col + 1
    while c:
        c, rem = divmod(c - 1, 26)
        letters = chr(65 + rem) + letters
    return f"{letters}{row + 1}"


def test_formulas_of_a_tiny_workbook_match_the_golden_file(tmp_path):
    from xlcnn.build import build
    from xlcnn.formula import read_workbook
    k = keras()
    L = k.layers
    model = k.Sequential([
        k.Input((5, 6, 1), name="pixels"),
        L.Conv2D(2, 3, strides=2, padding="same", activation="relu", name="conv"),
        L.MaxPooling2D(2, padding="same", name="pool"),
        L.Flatten(name="flatten"),
        L.Dense(3, activation="softmax", name="probs"),
    ])
    model.save(str(tmp_path / "tiny.keras"))
    np.save(tmp_path / "x.npy", np.zeros((5, 6, 1), np.float32))
    build(tmp_path / "tiny.keras", tmp_path / "x.npy", tmp_path / "tiny.xlsx")
    book = read_workbook(tmp_path / "tiny.xlsx")
    order = {name: i for i, name in enumerate(book.sheets)}
    lines = [f"{sheet}!{_cell(r, c)} = {f}"
             for (sheet, r, c), f in sorted(book.formulas.items(), key=lambda kv: (order[kv[0][0]], kv[0][1:]))]
    text = "\n".join(["sheets: " + " | ".join(book.sheets), *lines]) + "\n"
    if os.environ.get("XLCNN_UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8"), "formulas changed: review, then XLCNN_UPDATE_GOLDEN=1"
