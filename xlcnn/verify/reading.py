"""Reading what verify checks: the workbook (xlcnn.formula's reader), its contract (the manifest and
about sheets, through xlcnn.manifest), and the model file it records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import manifest as mf
from ..errors import XlcnnError


def open_workbook(path):
    from ..formula import FormulaError, read_workbook
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



def resolve_model(path, about, model_arg, weights_arg=None):
    """(model file, weights file or None, notes) for the model the workbook was built from."""
    from ..model import sha256
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



def constant_block(book, sheet, r0, c0, r1, c1):
    """Numeric constants of a rectangle (NaN where there is none), from the sheet's own array."""
    out = np.full((r1 - r0 + 1, c1 - c0 + 1), np.nan)
    arr = book.sheet_array(sheet)[r0:r1 + 1, c0:c1 + 1]
    out[:arr.shape[0], :arr.shape[1]] = arr
    return out
