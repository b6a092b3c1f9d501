"""Names that a call reads from inside a string it evaluates at run time.

`df.query("a > @limit")`, `pd.eval("df1 + df2")`, `numexpr.evaluate("a * b")` and
`eval("x + 1")` look variables up by name in the caller's namespace while they run; the cell's
code never names them, so the analysis would not send them. When the string is a literal, the
names in it are read at the call.
"""

from __future__ import annotations

import ast
import keyword
import re

# Calls that evaluate an expression string against the caller's variables, by the name of
# the function or method (pandas' DataFrame.query/eval and pd.eval, numexpr's evaluate).
_EXPRESSION_CALLS = frozenset({"query", "eval", "evaluate", "validate"})
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`")
_IDENTIFIER = re.compile(r"@?\b([A-Za-z_]\w*)")


def string_assignments(body: list[ast.stmt]) -> dict[str, str]:
    """`expr = "a > @x"` at the cell's top level: the string a later `df.query(expr)` gets."""
    found = {}
    for node in body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and \
                isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def names_in_evaluated_string(call: ast.Call, strings: dict[str, str]
                              ) -> tuple[list[str], list[str]]:
    """Names the called function may look up from the string it is given: from a literal,
    or a variable the cell assigned a literal to; and the variables whose value (a string
    from the notebook, known only when the cell is sent) is the expression."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else \
        func.id if isinstance(func, ast.Name) else None
    if called not in _EXPRESSION_CALLS and called != "exec":
        return [], []
    text, variable = _argument(call)
    if variable is not None and variable in strings:
        text, variable = strings[variable], None
    if text is None:
        return [], [variable] if variable else []
    if isinstance(func, ast.Name) and called in ("eval", "exec"):  # the builtins: Python code
        return _python_names(text, "eval" if called == "eval" else "exec"), []
    return identifiers(text), []


def identifiers(text: str) -> list[str]:
    """The names an expression string for pandas or numexpr may refer to."""
    stripped = _QUOTED.sub(" ", text)
    return [n for n in _IDENTIFIER.findall(stripped) if not keyword.iskeyword(n)]


def _argument(call: ast.Call) -> tuple[str | None, str | None]:
    """The expression argument: (literal text, None) or (None, variable name)."""
    candidates = call.args[:1] + [k.value for k in call.keywords if k.arg in ("expr", "source")]
    for node in candidates:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value, None
        if isinstance(node, ast.Name):
            return None, node.id
    return None, None


def _python_names(text: str, mode: str) -> list[str]:
    try:
        tree = ast.parse(text, mode=mode)
    except (SyntaxError, ValueError):
        return []
    return [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
