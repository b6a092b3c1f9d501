"""Find which notebook variables a cell reads and which ones it leaves behind.

A remote cell starts in an empty namespace, so everything it takes from the notebook has to be
shipped with it, and everything it assigns has to be shipped back. Both directions cost
something: a missing input is a NameError on the far side, while a needless one may be large
or unpicklable (an open file, a lock), and a needless output overwrites a notebook variable
with a copy. The analysis is therefore exact where it can be and errs towards "read" where it
cannot.

The model, in short:

* Code that runs as soon as the cell runs -- the cell's own statements, class bodies,
  comprehensions, default values, decorators -- is followed in order. A name loaded there is an
  input unless the cell has assigned it on every path that leads to the load. Branches and loop
  bodies are forked and joined: a name counts as assigned after an ``if`` only if every branch
  that carries on assigns it, and after a loop only if it was assigned before the loop.
* Code that runs later -- function and lambda bodies, and anything nested in them -- may be
  called from anywhere, so a global it loads is an input unless the cell's main path assigns
  that name for certain somewhere (a function may call a helper defined further down).
* Once the cell has assigned a name on every path, the notebook's old value can no longer be
  seen, not even after a ``del``; "assigned" below always means this, which is why ``del``
  never makes a name an input again.

The standard library's ``symtable`` resolves scopes well, but its tables carry no position in
the straight-line flow we need, and their shape for comprehensions and annotation scopes
changes between Python 3.9 and 3.13. So scopes are resolved here from the AST, with the same
rules the compiler applies; the tests check the two agree on function bodies.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass

from ...errors import CaptureError, syntax_error
from .flow import CellWalker
from .strings import identifiers

__all__ = ["CellNames", "analyse_cell", "identifiers"]


@dataclass(frozen=True)
class CellNames:
    """What a cell exchanges with the notebook namespace.

    reads: names whose value the cell may take from the notebook. Builtins are included; the
        caller keeps only the names the namespace actually holds.
    binds: names the cell may bind at module scope, in order of first binding. Unfiltered:
        private names (``_x``) are the caller's to drop.
    deletes: names a module-scope ``del`` may leave unbound when the cell ends, i.e. that are
        not certainly re-bound after the ``del``. A name can be in both ``binds`` and
        ``deletes`` when the outcome depends on control flow; the far side then reports
        which one happened.
    last_expression: the cell ends with an expression IPython would display (no trailing ';').
    evaluated: variables whose value, a string from the notebook, a call evaluates as an
        expression (`df.query(expr)`): the names in that string are read too.
    """

    reads: frozenset[str]
    binds: tuple[str, ...]
    deletes: frozenset[str]
    last_expression: bool
    evaluated: frozenset[str] = frozenset()


def analyse_cell(source: str) -> CellNames:
    """Analyse a cell of plain Python (IPython syntax must already be translated).

    Raises CaptureError when the cell does not compile, or when it cannot be analysed
    (``from m import *``), because guessing the inputs would fail later, on the far side,
    with a far less helpful message.
    """
    tree = _parse(source)
    walker = CellWalker()
    try:
        names = walker.run(tree.body)
    except RecursionError:
        raise CaptureError(
            "The cell is nested too deeply to be analysed. Split the longest expression into "
            "several statements.") from None
    last = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    if last and _ends_with_semicolon(source):
        last = False
    return CellNames(names[0], names[1], names[2], last, frozenset(walker.evaluated))


# ---------------------------------------------------------------------------------------------
# Parsing


def _parse(source: str) -> ast.Module:
    """Parse and compile once, so that scope errors surface here, with the cell's line numbers.

    Compiling (not just parsing) catches errors such as a misplaced ``nonlocal`` that the far
    side would otherwise report only after the inputs were shipped. Top-level ``await`` is
    allowed because IPython runs such cells.
    """
    try:
        tree = ast.parse(source, "<cell>", "exec")
        compile(tree, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError as exc:
        raise _syntax_error(exc, source) from None
    except ValueError as exc:  # null bytes, before 3.12
        raise CaptureError(f"The cell cannot be parsed: {exc}.") from exc
    except RecursionError:
        raise CaptureError(
            "The cell is nested too deeply to be compiled. Split the longest expression into "
            "several statements.") from None
    return tree


def _syntax_error(exc: SyntaxError, source: str) -> CaptureError:
    """The SyntaxError a local run would raise, on the cell's own line, plus a hint when the
    line is IPython syntax, which a local cell accepts and a remote one cannot run."""
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lineno = exc.lineno or 0
    if exc.text is None and 1 <= lineno <= len(lines):
        exc.text = lines[lineno - 1]
    message = exc.msg or "invalid syntax"
    text = (exc.text or "").strip()
    if text.startswith(("%", "!")) or text.endswith("?"):
        message += (": IPython syntax (%magics, !shell commands, ?help) cannot run in a "
                    "remote cell; write it as plain Python")
    return syntax_error(exc, message)


def _ends_with_semicolon(source: str) -> bool:
    """IPython's own test: is the last token of the cell, comments aside, a ';'?

    Tokens rather than text, so that a ';' or '#' inside a string literal is not mistaken for
    the real thing.
    """
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):  # pragma: no cover - the source has parsed
        return source.rstrip().endswith(";")
    for token in reversed(tokens):
        if token.type not in skip:
            return token.type == tokenize.OP and token.string == ";"
    return False
