"""Scopes of a cell: what is known at one point of straight-line code, and the names a nested
function, lambda or class body binds and reads."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Scopes


class State:
    """What is known at one point of code that runs in order.

    bound: names assigned on every path to here (a must-set: joins intersect).
    gone: names a ``del`` may have removed and no later assignment certainly restored (a
        may-set: joins unite). Only meaningful for the cell's own scope.
    """

    __slots__ = ("bound", "gone")

    def __init__(self, bound: Iterable[str] = (), gone: Iterable[str] = ()) -> None:
        self.bound = set(bound)
        self.gone = set(gone)

    def copy(self) -> State:
        return State(self.bound, self.gone)

    @staticmethod
    def join(states: list[State]) -> State:
        joined = states[0].copy()
        for state in states[1:]:
            joined.bound &= state.bound
            joined.gone |= state.gone
        return joined


MODULE, CLASS, FUNCTION, COMPREHENSION = "module", "class", "function", "comprehension"


@dataclass
class Frame:
    """One scope on the walker's stack.

    `deferred` marks code that does not run when the cell reaches it (function bodies and all
    they contain); a global loaded there is judged against the whole cell instead of against
    the flow at that point.
    """

    kind: str
    deferred: bool
    locals: frozenset[str] = frozenset()
    globals: frozenset[str] = frozenset()
    nonlocals: frozenset[str] = frozenset()
    state: State = field(default_factory=State)


class ScopeScan(ast.NodeVisitor):
    """Collect the names a function or class body binds, without entering nested scopes.

    A function's locals are fixed by the whole body before any of it runs (a later assignment
    makes an earlier load local), so they have to be known up front.
    """

    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            self.bound.add(node.id)

    def visit_Global(self, node: ast.Global) -> None:
        self.globals.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.nonlocals.update(node.names)

    def visit_alias(self, node: ast.alias) -> None:
        if node.name != "*":
            self.bound.add(node.asname or node.name.partition(".")[0])

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)

    def _visit_all(self, nodes: Iterable[ast.AST | None]) -> None:
        for node in nodes:
            if node is not None:
                self.visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.bound.add(node.name)
        self._visit_all(node.decorator_list)
        self._visit_all(node.args.defaults)
        self._visit_all(node.args.kw_defaults)
        self._visit_all(arg.annotation for arg in parameters(node.args))
        self._visit_all([node.returns])

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._visit_all(node.args.defaults)
        self._visit_all(node.args.kw_defaults)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.bound.add(node.name)
        self._visit_all(node.decorator_list)
        self._visit_all(node.bases)
        self._visit_all(node.keywords)

    def _visit_comprehension(self, node: ast.AST) -> None:
        # Loop targets belong to the comprehension; a walrus inside binds in this scope.
        for generator in node.generators:  # type: ignore[attr-defined]
            self.visit(generator.iter)
            self._visit_all(generator.ifs)
        for name in ("elt", "key", "value"):
            self._visit_all([getattr(node, name, None)])

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _visit_comprehension

    def visit_MatchAs(self, node: ast.AST) -> None:
        if getattr(node, "name", None):
            self.bound.add(node.name)  # type: ignore[attr-defined]
        self.generic_visit(node)

    visit_MatchStar = visit_MatchAs

    def visit_MatchMapping(self, node: ast.AST) -> None:
        if getattr(node, "rest", None):
            self.bound.add(node.rest)  # type: ignore[attr-defined]
        self.generic_visit(node)

    def visit_TypeAlias(self, node: ast.AST) -> None:
        # Only the alias name: the value and the parameters live in a scope of their own.
        self.visit(node.name)  # type: ignore[attr-defined]


def scan_scope(nodes: Iterable[ast.AST]) -> ScopeScan:
    scan = ScopeScan()
    for node in nodes:
        scan.visit(node)
    return scan


def deleted_names(statements: Iterable[ast.AST]) -> set[str]:
    """Names a block may `del` in its own scope, wherever an exception might interrupt it."""
    found: set[str] = set()
    stack: list[ast.AST] = list(statements)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Del):
            found.add(node.id)
        stack.extend(ast.iter_child_nodes(node))
    return found


def parameters(args: ast.arguments) -> list[ast.arg]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    every += [a for a in (args.vararg, args.kwarg) if a is not None]
    return every
