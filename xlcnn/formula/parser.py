"""Excel formula text -> tokens -> AST, plus the A1 helpers (cell names, column letters) the
reader and the evaluator share.

The tokenizer is built on one regular expression, ``SPLIT``, whose ``split`` cuts a formula into
its cell references and everything else.  The evaluator keys groups of cells on those pieces with
the references' letters and digits blanked out, and the parser reads the same pieces: reference
number k in a formula is "slot" k of its AST, and its row and column are supplied per cell at
evaluation time.  That is what lets one parse serve a whole grid of cells.
"""

import functools
import re
from typing import NamedTuple

MAX_ROWS = 1_048_576  # Excel's grid; a reference beyond it is an error, not an empty cell
MAX_COLS = 16_384


class FormulaError(Exception):
    """A formula the engine cannot evaluate; ``cell`` names it like ``'03 conv c1'!B4``."""

    def __init__(self, message, cell=None):
        self.cell = cell
        self.reason = message
        super().__init__(f"{cell}: {message}" if cell else message)


# --------------------------------------------------------------------------- A1 helpers

def col_index(letters):
    """'A' -> 0, 'AB' -> 27."""
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) & 31)  # works for str; & 31 maps 'A'/'a' to 1
    return n - 1


@functools.lru_cache(maxsize=None)
def _letters(index):
    return col_letters(index)


def col_letters(index):
    """0 -> 'A', 27 -> 'AB'."""
    s = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        s = chr(65 + rem) + s
    return s


_PLAIN_SHEET = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_LOOKS_LIKE_REF = re.compile(r"[A-Za-z]{1,3}[0-9]+|[Rr][0-9]*[Cc][0-9]*")


def quote_sheet(name):
    """Sheet name as it must appear before '!' in a formula."""
    if _PLAIN_SHEET.fullmatch(name) and not _LOOKS_LIKE_REF.fullmatch(name):
        return name
    return "'" + name.replace("'", "''") + "'"


def cell_name(sheet, row, col):
    """0-based (row, col) on ``sheet`` -> "'03 conv c1'!B4"."""
    return f"{quote_sheet(sheet)}!{col_letters(col)}{row + 1}"


# --------------------------------------------------------------------------- splitting

# One match is either an opaque token that may contain reference-like text (a string literal,
# a quoted sheet name, a function name) in group 1, or a cell reference in groups 2-5
# ($, column letters, $, row digits).  Look-arounds keep "LOG10(", "1E5" and "AB1!" intact.
SPLIT = re.compile(
    r"""("(?:[^"]|"")*"|'(?:[^']|'')*'|[A-Za-z_\\][\w.\\]*(?=\())"""
    r"|(?<![\w.$])(\$?)([A-Z]{1,3})(\$?)([0-9]{1,7})(?![\w(!.])"
)
STRIDE = 6  # text, opaque, $col, letters, $row, digits


def split_formula(text):
    """``SPLIT.split(text)``: [text, opaque, $, letters, $, digits, text, ...]."""
    return SPLIT.split(text)


def shifter(text):
    """A function (drow, dcol) -> ``text`` with its relative references moved, as Excel does
    when it copies a formula (used to expand shared formulas; the text is tokenized once).  A
    reference pushed off the grid becomes #REF!."""
    parts = SPLIT.split(text)
    pieces, refs = [], []
    for k in range(0, len(parts), STRIDE):
        pieces.append(parts[k].replace("%", "%%"))
        if k + 1 >= len(parts):
            break
        if parts[k + 1] is not None:
            pieces.append(parts[k + 1].replace("%", "%%"))
            continue
        cdol, letters, rdol, digits = parts[k + 2:k + 6]
        refs.append((cdol, col_index(letters), rdol, int(digits) - 1))
        pieces.append("%s")
    template = "".join(pieces)

    def shifted(drow, dcol):
        out = []
        for cdol, col, rdol, row in refs:
            col = col if cdol else col + dcol
            row = row if rdol else row + drow
            if 0 <= row < MAX_ROWS and 0 <= col < MAX_COLS:
                out.append(f"{cdol}{_letters(col)}{rdol}{row + 1}")
            else:
                out.append("#REF!")
        return template % tuple(out)

    return shifted


def shift_formula(text, drow, dcol):
    """``text`` with its relative references moved by (drow, dcol)."""
    return shifter(text)(drow, dcol)


# --------------------------------------------------------------------------- defined names

_NAME_TOKEN = re.compile(r"(?<![\w.$\\])([A-Za-z_\\][\w.\\]*)(?![\w.(!\\])")
_PLAIN_REFERENCE = re.compile(r"(?:'(?:[^']|'')*'|[A-Za-z_][\w.]*)!\$?[A-Z]{1,3}\$?[0-9]{1,7}"
                              r"(?::\$?[A-Z]{1,3}\$?[0-9]{1,7})?")


def resolve_names(text, names):
    """``text`` with every defined name it uses replaced by what the name stands for.

    names: {lower-case name: definition text without '='}, the names in scope for the formula's
    sheet (its sheet-scoped names over the workbook's).  A definition that is a plain reference
    ('trace'!$C$3, Sheet1!$A$1:$B$2) is put in as it is, anything else in parentheses.  Names
    inside strings, quoted sheet names, function names and cell references are left alone; a
    name not in ``names`` stays, and the parser reports it."""
    parts = SPLIT.split(text)

    def put(m):
        target = names.get(m.group(1).lower())
        if target is None:
            return m.group(0)
        return target if _PLAIN_REFERENCE.fullmatch(target) else f"({target})"

    for k in range(0, len(parts), STRIDE):
        if parts[k]:
            parts[k] = _NAME_TOKEN.sub(put, parts[k])
    out = []
    for k, piece in enumerate(parts):
        if piece is None:
            continue
        out.append(piece)
    return "".join(out)


# --------------------------------------------------------------------------- AST

class Num(NamedTuple):
    value: float


class Str(NamedTuple):
    value: str


class Bool(NamedTuple):
    value: bool


class Err(NamedTuple):
    code: str  # '#DIV/0!' etc.


class Missing(NamedTuple):
    """An omitted argument, as in IF(A1,,2)."""


class Ref(NamedTuple):
    sheet: str | None  # None: the formula's own sheet
    slot: int          # index of the reference in the formula (its numbers come per cell)
    row_abs: bool
    col_abs: bool


class Range(NamedTuple):
    sheet: str | None
    first: Ref
    last: Ref


class Unary(NamedTuple):
    op: str
    arg: object


class Binary(NamedTuple):
    op: str
    left: object
    right: object


class Call(NamedTuple):
    name: str
    args: tuple


# --------------------------------------------------------------------------- tokenizer

_TEXT_TOKEN = re.compile(
    r"""\s+
    |(?P<num>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
    |(?P<err>\#(?:DIV/0!|N/A|NAME\?|NULL!|NUM!|REF!|VALUE!|GETTING_DATA))
    |(?P<sheet>[A-Za-z_\\][\w.\\]*)!
    |(?P<bool>(?:TRUE|FALSE)(?![\w.]))
    |(?P<name>[A-Za-z_\\][\w.\\]*)
    |(?P<op><>|<=|>=|[-+*/^&=<>(),:!%{};])""",
    re.X | re.I,
)


def _tokens(parts):
    """Token list [(kind, value)] from split pieces; refs become ('ref', (slot, $row, $col))."""
    out = []
    slot = 0
    n = len(parts)
    for k in range(0, n, STRIDE):
        text = parts[k]
        pos = 0
        while pos < len(text):
            m = _TEXT_TOKEN.match(text, pos)
            if m is None:
                raise FormulaError(f"cannot parse formula near {text[pos:pos + 12]!r}")
            pos = m.end()
            kind = m.lastgroup
            if kind is not None:
                out.append((kind, m.group(kind)))
        if k + 1 >= n:
            break
        opaque = parts[k + 1]
        if opaque is None:
            out.append(("ref", (slot, bool(parts[k + 4]), bool(parts[k + 2]))))
            slot += 1
        elif opaque[0] == '"':
            out.append(("str", opaque[1:-1].replace('""', '"')))
        elif opaque[0] == "'":
            out.append(("qsheet", opaque[1:-1].replace("''", "'")))
        else:
            out.append(("func", opaque))
    out.append(("end", None))
    return out


def function_name(raw):
    """Canonical function name: upper case, without the _xlfn./_xlws. future-function prefixes."""
    name = raw.upper()
    for prefix in ("_XLFN.", "_XLWS.", "_XLL."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


# --------------------------------------------------------------------------- parser

# Binary operators, loosest first.  Unary minus binds tighter than ^, as in Excel (-2^2 = 4).
_BINARY = {"=": 0, "<>": 0, "<": 0, ">": 0, "<=": 0, ">=": 0,
           "&": 1, "+": 2, "-": 2, "*": 3, "/": 3, "^": 4}


class _Parser:
    def __init__(self, tokens):
        self.toks = tokens
        self.i = 0

    def peek(self):
        return self.toks[self.i]

    def take(self):
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect_op(self, op):
        kind, value = self.take()
        if kind != "op" or value != op:
            raise FormulaError(f"expected {op!r}, found {value!r}")

    def expression(self, min_prec=0):
        left = self.unary()
        while True:
            kind, op = self.peek()
            prec = _BINARY.get(op) if kind == "op" else None
            if prec is None or prec < min_prec:
                return left
            self.i += 1
            left = Binary(op, left, self.expression(prec + 1))  # left-associative, ^ too

    def unary(self):
        kind, value = self.peek()
        if kind == "op" and value in "-+":
            self.i += 1
            arg = self.unary()
            return Unary("-", arg) if value == "-" else arg
        node = self.primary()
        while self.peek() == ("op", "%"):
            self.i += 1
            node = Binary("/", node, Num(100.0))
        return node

    def primary(self):
        kind, value = self.take()
        if kind == "num":
            return Num(float(value))
        if kind == "str":
            return Str(value)
        if kind == "bool":
            return Bool(value.upper() == "TRUE")
        if kind == "err":
            return Err(value)
        if kind == "op" and value == "(":
            node = self.expression()
            self.expect_op(")")
            return node
        if kind == "func":
            return self.call(value)
        if kind == "sheet":  # unquoted name, '!' already consumed
            return self.reference(value)
        if kind == "qsheet":
            self.expect_op("!")
            return self.reference(value)
        if kind == "ref":
            self.i -= 1
            return self.reference(None)
        if kind == "name":
            raise FormulaError(f"unknown name {value!r} (not a defined name in scope; R1C1 refs are not supported)")
        if kind == "end":
            raise FormulaError("formula ends unexpectedly")
        raise FormulaError(f"unexpected {value!r}")

    def reference(self, sheet):
        kind, value = self.take()
        if kind == "err" and value == "#REF!":  # Sheet!#REF!: a reference moved off the grid
            return Err(value)
        if kind != "ref":
            raise FormulaError(f"expected a cell reference after sheet {sheet!r}")
        first = Ref(sheet, value[0], value[1], value[2])
        if self.peek() != ("op", ":"):
            return first
        self.i += 1
        kind, value = self.take()
        if kind in ("sheet", "qsheet"):  # Sheet1!A1:Sheet1!B2
            if kind == "qsheet":
                self.expect_op("!")
            if (value or "").lower() != (sheet or "").lower():
                raise FormulaError("3-D ranges across sheets are not supported")
            kind, value = self.take()
        if kind != "ref":
            raise FormulaError("a range must be two cell references, like A1:B2")
        return Range(sheet, first, Ref(sheet, value[0], value[1], value[2]))

    def call(self, raw):
        name = function_name(raw)
        self.expect_op("(")
        args = []
        if self.peek() == ("op", ")"):
            self.i += 1
            return Call(name, ())
        while True:
            if self.peek() in (("op", ","), ("op", ")")):
                args.append(Missing())
            else:
                args.append(self.expression())
            kind, value = self.take()
            if kind == "op" and value == ")":
                return Call(name, tuple(args))
            if not (kind == "op" and value == ","):
                raise FormulaError(f"expected ',' or ')' in {name}(...), found {value!r}")


def parse(formula):
    """Parse formula text (with or without its leading '=') or its ``split_formula`` pieces.

    Returns the AST.  Reference slots are numbered in order of appearance; the caller pairs them
    with concrete row/column numbers (``split_formula`` pieces 3 and 5 of each match)."""
    if isinstance(formula, str):
        if formula.startswith("="):
            formula = formula[1:]
        formula = SPLIT.split(formula)
    p = _Parser(_tokens(formula))
    node = p.expression()
    kind, value = p.peek()
    if kind != "end":
        raise FormulaError(f"unexpected {value!r} after the end of the expression")
    return node


def walk(node):
    """Every node of an AST, depth first."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, Call):
            stack.extend(n.args)
        elif isinstance(n, Binary):
            stack += (n.left, n.right)
        elif isinstance(n, Unary):
            stack.append(n.arg)
        elif isinstance(n, Range):
            stack += (n.first, n.last)
