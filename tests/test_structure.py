"""Import rules of the house, read from the source with ast (nothing is imported, no TensorFlow):

- xlcnn/formula/ (the independent evaluator) imports only the standard library, NumPy and pandas
  (its C reader parses numbers in bulk), so it can never import the code that writes formulas;
- xlcnn/layers/ (the writers) never imports keras or TensorFlow, at module level or in a function,
  except for the exceptions listed here by module, function and package;
- xlcnn/verify/ uses xlcnn.formula only through its public API (``xlcnn.formula.__all__``), never
  its submodules or the private fields of a Book or a Result.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

XLCNN = Path(__file__).resolve().parent.parent / "xlcnn"

# (module, function, package) a layers/ module may still import; the test fails on any other.
LAYERS_ALLOWED = {
    ("base.py", "_keras_adds_bias_along_width", "keras"),  # being removed: a fact model.py probes
}
FRAMEWORKS = {"keras", "tensorflow", "tf_keras"}


def imports(path):
    """[(top-level package or '.' for a relative import, level, names, enclosing function)]."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name.split(".")[0], 0, alias.name, inner))
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                found.append((module.split(".")[0] if child.level == 0 else ".", child.level,
                              (module, tuple(a.name for a in child.names)), inner))
            elif isinstance(child, ast.Call) and _dynamic_import(child):
                found.append((_dynamic_import(child), 0, _dynamic_import(child), inner))
            visit(child, inner)

    visit(tree, None)
    return found


def _dynamic_import(call):
    """The package named by importlib.import_module("x") or __import__("x"), else None."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name in ("import_module", "__import__") and call.args and isinstance(call.args[0], ast.Constant) \
            and isinstance(call.args[0].value, str):
        return call.args[0].value.split(".")[0]
    return None


def modules(folder):
    files = sorted((XLCNN / folder).glob("*.py"))
    assert files, folder
    return files


def test_the_rule_checker_sees_imports_in_functions_and_dynamic_ones(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom . import x\n\ndef f():\n    import keras.ops\n"
                   "    importlib.import_module('tensorflow')\n")
    assert [(p, f) for p, _, _, f in imports(src)] == [("os", None), (".", None), ("keras", "f"),
                                                       ("tensorflow", "f")]


@pytest.mark.parametrize("path", modules("formula"), ids=lambda p: p.name)
def test_formula_imports_only_the_standard_library_numpy_and_pandas(path):
    for package, level, what, function in imports(path):
        if level:
            assert level == 1, f"{path.name}: relative import {what} leaves xlcnn.formula"
            continue
        assert package in ("numpy", "pandas") or package in sys.stdlib_module_names, \
            f"{path.name}: imports {what} (only the standard library, numpy and pandas are allowed)"


@pytest.mark.parametrize("path", modules("layers"), ids=lambda p: p.name)
def test_layers_never_import_keras_or_tensorflow(path):
    for package, _, what, function in imports(path):
        if package in FRAMEWORKS:
            assert (path.name, function, package) in LAYERS_ALLOWED, \
                f"{path.name}: {'function ' + function if function else 'module level'} imports {what}; " \
                "writers work on plain specs (model.py is the only place that talks to Keras)"


@pytest.mark.parametrize("path", modules("verify"), ids=lambda p: p.name)
def test_verify_uses_only_the_public_api_of_formula(path):
    init = ast.parse((XLCNN / "formula" / "__init__.py").read_text(encoding="utf-8"))
    public = next(ast.literal_eval(n.value) for n in init.body
                  if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__all__")
    for package, level, what, _ in imports(path):
        if level == 0 and package == "xlcnn" and isinstance(what, tuple):
            module, names = what
        elif level == 2 and what[0].startswith("formula"):
            module, names = "xlcnn." + what[0], what[1]
        else:
            continue
        if module.startswith("xlcnn.formula"):
            assert module == "xlcnn.formula", f"{path.name}: imports {module}; use xlcnn.formula's public API"
            assert set(names) <= set(public), f"{path.name}: imports {set(names) - set(public)} from xlcnn.formula"
    private = {"_num", "_other", "_errors", "_fcells", "_dense", "_program", "_prog", "_book", "_V", "_M",
               "_texts", "_outside"}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute):
            assert node.attr not in private, f"{path.name}:{node.lineno}: reads .{node.attr} of xlcnn.formula"
