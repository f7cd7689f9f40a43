"""xlcnn's own formula engine: read an .xlsx with zipfile + XML and recalculate every formula
with NumPy, independently of the code that wrote them (``xlcnn verify`` relies on that).

    book = read_workbook(path)              # WorkbookError (a ValueError) for non-zips, zip bombs
    book.sheets, book.formulas, book.cached, book.constants, book.value(s, r, c), book.sheet_array(s)
    book.formula_cells(s), book.shared_formulas(s), book.formula_lengths(s)   # per sheet, in bulk
    result = evaluate(book, overrides={(sheet, row, col): np.array([...B values...])})
    result.value(sheet, row, col); result.block(sheet, r0, c0, r1, c1); result.seconds
    result.cells(sheet, rows, cols)         # many cells at once, NaN where no number
    compile_book(book).classes            # the compiled plan, cached as book.program
    formula_groups(book)                  # formulas of one shape, as index arrays

Modules by job: reader (zip + XML), parser (tokens, AST), grouping (formulas of one shape),
program (compile), schedule (order), values, functions, execute + products (evaluation),
evaluate (entry point).

Rows and columns are 0-based.  FormulaError.cell names the offending cell like 'sheet'!B4.
Only the standard library, NumPy and pandas (its C reader parses numbers in bulk, correctly
rounded) are imported.
"""

from .evaluate import Result, evaluate
from .program import compile_book, formula_groups
from .parser import FormulaError, cell_name, parse
from .reader import Book, WorkbookError, read_workbook

__all__ = ["Book", "FormulaError", "Result", "WorkbookError", "cell_name", "compile_book", "evaluate",
           "formula_groups", "parse", "read_workbook"]
