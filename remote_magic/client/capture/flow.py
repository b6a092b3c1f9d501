"""The walk over a cell in execution order that resolves every name it meets."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable

from ...errors import CaptureError
from .scopes import (
    CLASS,
    COMPREHENSION,
    FUNCTION,
    MODULE,
    Frame,
    ScopeScan,
    State,
    deleted_names,
    parameters,
    scan_scope,
)
from .strings import names_in_evaluated_string, string_assignments

# ---------------------------------------------------------------------------------------------
# The walker


class CellWalker:
    """Walk the cell once, in execution order, resolving every name it meets."""

    def __init__(self) -> None:
        self.module = Frame(MODULE, deferred=False)
        self.frames: list[Frame] = [self.module]
        self.reads: set[str] = set()
        self.deferred_reads: set[str] = set()
        self.binds: dict[str, None] = {}
        self.strings: dict[str, str] = {}  # name -> string literal the cell assigns it
        self.evaluated: set[str] = set()  # variables whose string value a call evaluates
        # One (breaks, continues) pair per enclosing loop, holding the states at those jumps.
        self.loops: list[tuple[list[State], list[State]]] = []

    def run(self, body: list[ast.stmt]) -> tuple[frozenset[str], tuple[str, ...], frozenset[str]]:
        self.strings = string_assignments(body)
        self._block(body)
        final = self.module.state
        reads = self.reads | (self.deferred_reads - final.bound)
        return frozenset(reads), tuple(self.binds), frozenset(final.gone)

    # -- frames and flow --------------------------------------------------------------------

    @property
    def frame(self) -> Frame:
        return self.frames[-1]

    def _flow(self) -> Frame:
        """The frame whose state branches act on: comprehensions assign into their parent."""
        for frame in reversed(self.frames):
            if frame.kind != COMPREHENSION:
                return frame
        return self.module  # pragma: no cover - the module frame is never a comprehension

    def _push(self, kind: str, deferred: bool, scan: ScopeScan | None = None,
              extra: Iterable[str] = ()) -> Frame:
        bound = set(extra)
        declared_global: set[str] = set()
        declared_nonlocal: set[str] = set()
        if scan is not None:
            bound |= scan.bound
            declared_global, declared_nonlocal = scan.globals, scan.nonlocals
        frame = Frame(kind, deferred or self.frame.deferred,
                       frozenset(bound - declared_global - declared_nonlocal),
                       frozenset(declared_global), frozenset(declared_nonlocal))
        self.frames.append(frame)
        return frame

    def _pop(self) -> None:
        self.frames.pop()

    def _join(self, frame: Frame, before: State, paths: list[tuple[bool, State]]) -> bool:
        """Continue after a branch point with what holds on every path that carries on."""
        live = [state for falls, state in paths if falls]
        frame.state = State.join(live) if live else before
        return bool(live)

    def _discard(self, walk: Callable[[], object]) -> None:
        """Walk code whose effect on the flow must not count (it may not run, or cannot)."""
        frame = self._flow()
        before = frame.state
        frame.state = before.copy()
        try:
            walk()
        finally:
            frame.state = before

    # -- names ------------------------------------------------------------------------------

    def _record_bind(self, name: str) -> None:
        self.binds.setdefault(name, None)

    def _global_load(self, name: str, frame: Frame) -> None:
        if frame.deferred:
            self.deferred_reads.add(name)
        elif name not in self.module.state.bound:
            self.reads.add(name)

    def _load(self, name: str) -> None:
        frame = self.frame
        if frame.kind == MODULE:
            if name not in frame.state.bound:
                self.reads.add(name)
            return
        if name in frame.globals:
            self._global_load(name, frame)
            return
        if name in frame.nonlocals:
            return
        if name in frame.locals:
            # A class body looks a name up in its own dict, then in the globals; it does not
            # see an enclosing function's variable of the same name.
            if frame.kind == CLASS and name not in frame.state.bound:
                self._global_load(name, frame)
            return
        for outer in reversed(self.frames[:-1]):
            if outer.kind == CLASS:  # class bodies do not enclose the scopes nested in them
                continue
            if outer.kind == MODULE or name in outer.globals:
                break
            if name in outer.locals or name in outer.nonlocals:
                return
        self._global_load(name, frame)

    def _bind(self, frame: Frame, name: str) -> None:
        if frame.kind == MODULE:
            frame.state.bound.add(name)
            frame.state.gone.discard(name)
            self._record_bind(name)
        elif name in frame.globals:
            # The scope may run or not, and may read the old value first (`total += x`):
            # the notebook's value is an input, and whatever the scope left is an output.
            self._record_bind(name)
            self._global_load(name, frame)
        elif frame.kind == CLASS:
            frame.state.bound.add(name)

    def _store(self, name: str) -> None:
        if self.frame.kind != COMPREHENSION:  # a comprehension's loop variable stays inside
            self._bind(self.frame, name)

    def _bind_transient(self, name: str) -> None:
        """`except ... as e`: usable in the handler, deleted at its end, so never an output."""
        frame = self.frame
        if frame.kind in (MODULE, CLASS) and name not in frame.globals:
            frame.state.bound.add(name)
        else:
            self._bind(frame, name)

    def _delete(self, name: str) -> None:
        frame = self.frame
        if frame.kind == MODULE:
            if name not in frame.state.bound:
                self.reads.add(name)  # `del x` fails unless x exists
            frame.state.gone.add(name)
        elif name in frame.globals:
            self._record_bind(name)
            self._global_load(name, frame)

    def _target(self, node: ast.expr) -> None:
        """An assignment target: names are bound, containers and subscripts are loaded."""
        if isinstance(node, ast.Name):
            self._store(node.id)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                self._target(element)
        elif isinstance(node, ast.Starred):
            self._target(node.value)
        elif isinstance(node, ast.Attribute):
            self._expr(node.value)
        elif isinstance(node, ast.Subscript):
            self._expr(node.value)
            self._expr(node.slice)
        else:  # pragma: no cover - the parser allows no other targets
            self._expr(node)

    # -- statements -------------------------------------------------------------------------

    def _block(self, statements: list[ast.stmt]) -> bool:
        """Walk statements in order; False when control cannot leave the block at its end."""
        falls = True
        for statement in statements:
            if falls:
                falls = self._stmt(statement)
            else:  # unreachable: still analysed, but it cannot make anything certain
                self._discard(lambda s=statement: self._stmt(s))
        return falls

    def _stmt(self, node: ast.stmt) -> bool:
        handler = getattr(self, "_stmt_" + type(node).__name__, None)
        if handler is not None:
            return handler(node)
        # A statement kind newer than this module: analyse its parts, trust none of its binds.
        for value in ast.iter_child_nodes(node):
            if isinstance(value, ast.stmt):
                self._discard(lambda s=value: self._stmt(s))
            else:
                self._expr(value)
        return True

    def _stmt_Expr(self, node: ast.Expr) -> bool:
        self._expr(node.value)
        return True

    def _stmt_Assign(self, node: ast.Assign) -> bool:
        self._expr(node.value)
        for target in node.targets:
            self._target(target)
        return True

    def _stmt_AugAssign(self, node: ast.AugAssign) -> bool:
        # The target is read before the value is computed, and bound after.
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
            self._expr(node.value)
            self._store(node.target.id)
        else:
            self._target(node.target)
            self._expr(node.value)
        return True

    def _stmt_AnnAssign(self, node: ast.AnnAssign) -> bool:
        if node.value is not None:
            self._expr(node.value)
            self._target(node.target)
        elif not isinstance(node.target, ast.Name):
            self._target(node.target)  # `a.b: int` still evaluates `a`
        if self.frame.kind in (MODULE, CLASS):
            self._expr(node.annotation)  # a function never evaluates its local annotations
        return True

    def _stmt_Delete(self, node: ast.Delete) -> bool:
        for target in node.targets:
            self._delete_target(target)
        return True

    def _delete_target(self, node: ast.expr) -> None:
        if isinstance(node, ast.Name):
            self._delete(node.id)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                self._delete_target(element)
        else:
            self._target(node)

    def _stmt_Import(self, node: ast.Import) -> bool:
        for alias in node.names:
            self._store(alias.asname or alias.name.partition(".")[0])
        return True

    def _stmt_ImportFrom(self, node: ast.ImportFrom) -> bool:
        for alias in node.names:
            if alias.name == "*":
                module = "." * (node.level or 0) + (node.module or "")
                raise CaptureError(
                    f"Line {node.lineno}: 'from {module} import *' cannot be analysed, so the "
                    "cell's inputs and outputs would be unknown. Import the names you use "
                    f"explicitly, e.g. 'from {module} import name1, name2'.")
            self._store(alias.asname or alias.name)
        return True

    def _stmt_Pass(self, node: ast.stmt) -> bool:
        return True

    # `global` at module level changes nothing; in a function it was collected by ScopeScan.
    _stmt_Global = _stmt_Nonlocal = _stmt_Pass

    def _stmt_Raise(self, node: ast.Raise) -> bool:
        self._expr(node.exc)
        self._expr(node.cause)
        return False

    def _stmt_Return(self, node: ast.Return) -> bool:
        self._expr(node.value)
        return False

    def _stmt_Break(self, node: ast.Break) -> bool:
        self.loops[-1][0].append(self._flow().state.copy())
        return False

    def _stmt_Continue(self, node: ast.Continue) -> bool:
        self.loops[-1][1].append(self._flow().state.copy())
        return False

    def _stmt_Assert(self, node: ast.Assert) -> bool:
        # Skipped under `python -O`, so nothing it binds is certain.
        self._discard(lambda: (self._expr(node.test), self._expr(node.msg)))
        return True

    def _stmt_If(self, node: ast.If) -> bool:
        self._expr(node.test)
        frame = self._flow()
        before = frame.state
        paths = []
        for body in (node.body, node.orelse):
            frame.state = before.copy()
            paths.append((self._block(body), frame.state))
        return self._join(frame, before, paths)

    def _loop(self, node: ast.For | ast.AsyncFor | ast.While, endless: bool) -> bool:
        """Run the body once from the state before the loop, then join every way out.

        One pass is enough: a body that runs again starts from at least as much as the first
        time (for `bound`), and repeats the same deletions (for `gone`).
        """
        frame = self._flow()
        before = frame.state
        frame.state = before.copy()
        self.loops.append(([], []))
        if isinstance(node, (ast.For, ast.AsyncFor)):
            self._target(node.target)
        falls = self._block(node.body)
        breaks, continues = self.loops.pop()
        back = [before, *continues] + ([frame.state] if falls else [])
        frame.state = State.join(back)
        if endless:  # `while True:` leaves only through `break`
            self._discard(lambda: self._block(node.orelse))
            paths = []
        else:
            paths = [(self._block(node.orelse), frame.state)]
        paths += [(True, state) for state in breaks]
        return self._join(frame, before, paths)

    def _stmt_For(self, node: ast.For | ast.AsyncFor) -> bool:
        self._expr(node.iter)  # before the target is bound: `for x in x` reads x
        return self._loop(node, endless=False)

    _stmt_AsyncFor = _stmt_For

    def _stmt_While(self, node: ast.While) -> bool:
        self._expr(node.test)  # runs at least once, so a walrus in it is certain
        endless = isinstance(node.test, ast.Constant) and bool(node.test.value)
        return self._loop(node, endless)

    def _stmt_With(self, node: ast.With | ast.AsyncWith) -> bool:
        # The body is taken to run whenever the statement does. Strictly, a context manager
        # that swallows an exception (contextlib.suppress) can cut it short; treating such
        # assignments as uncertain would instead ship stale values for the very common
        # `with open(...) as f: data = f.read()`.
        for item in node.items:
            self._expr(item.context_expr)
            if item.optional_vars is not None:
                self._target(item.optional_vars)
        return self._block(node.body)

    _stmt_AsyncWith = _stmt_With

    def _stmt_Try(self, node: ast.Try) -> bool:
        frame = self._flow()
        before = frame.state
        frame.state = before.copy()
        falls = self._block(node.body)
        if falls:
            falls = self._block(node.orelse)
        else:
            self._discard(lambda: self._block(node.orelse))
        paths = [(falls, frame.state)]
        # A handler may start anywhere in the body: from the state before it, plus whatever
        # the body may have deleted on the way.
        interrupted = before.copy()
        interrupted.gone |= deleted_names(node.body)
        for handler in node.handlers:
            frame.state = interrupted.copy()
            self._expr(handler.type)
            if handler.name:
                self._bind_transient(handler.name)
            paths.append((self._block(handler.body), frame.state))
        falls = self._join(frame, before, paths)
        if not node.finalbody:
            return falls
        # `finally` runs on the way out of every path. Its reads are judged from the weakest
        # entry; the state after the statement comes from the path that carries on.
        after = frame.state
        weakest = before.copy()
        weakest.gone |= deleted_names([*node.body, *node.orelse, *node.handlers])
        frame.state = weakest
        final_falls = self._block(node.finalbody)
        if not falls:
            return False
        frame.state = after
        return self._block(node.finalbody) and final_falls

    _stmt_TryStar = _stmt_Try

    def _stmt_Match(self, node: ast.AST) -> bool:
        self._expr(node.subject)  # type: ignore[attr-defined]
        frame = self._flow()
        before = frame.state
        paths = []
        cases = node.cases  # type: ignore[attr-defined]
        for case in cases:
            frame.state = before.copy()
            self._pattern(case.pattern)
            self._expr(case.guard)
            paths.append((self._block(case.body), frame.state))
        last = cases[-1] if cases else None
        catch_all = (last is not None and last.guard is None
                     and type(last.pattern).__name__ == "MatchAs" and last.pattern.pattern is None)
        if not catch_all:  # no case may match
            paths.append((True, before.copy()))
        return self._join(frame, before, paths)

    def _pattern(self, node: ast.AST | None) -> None:
        """Capture patterns bind; value and class patterns load names."""
        if node is None:
            return
        kind = type(node).__name__
        if kind == "MatchValue":
            self._expr(node.value)  # type: ignore[attr-defined]
            return
        if kind == "MatchClass":
            self._expr(node.cls)  # type: ignore[attr-defined]
        if kind == "MatchMapping":
            for key in node.keys:  # type: ignore[attr-defined]
                self._expr(key)
        for name in ("pattern", "patterns", "kwd_patterns"):
            value = getattr(node, name, None)
            for sub in value if isinstance(value, list) else [value]:
                self._pattern(sub)
        captured = getattr(node, "rest" if kind == "MatchMapping" else "name", None)
        if kind in ("MatchAs", "MatchStar", "MatchMapping") and captured:
            self._store(captured)

    def _stmt_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        for decorator in node.decorator_list:
            self._expr(decorator)
        self._defaults(node.args)
        outer = self.frame
        type_params = self._enter_type_params(node)
        for arg in parameters(node.args):
            self._expr(arg.annotation)
        self._expr(node.returns)
        # Nothing in the body runs now, so the name may be bound first: outputs then list the
        # function before the globals it assigns.
        self._bind(outer, node.name)
        params = [arg.arg for arg in parameters(node.args)]
        self._push(FUNCTION, deferred=True, scan=scan_scope(node.body), extra=params)
        self._block(node.body)
        self._pop()
        if type_params:
            self._pop()
        return True

    _stmt_AsyncFunctionDef = _stmt_FunctionDef

    def _stmt_ClassDef(self, node: ast.ClassDef) -> bool:
        for decorator in node.decorator_list:
            self._expr(decorator)
        type_params = self._enter_type_params(node)
        for base in node.bases:
            self._expr(base)
        for keyword in node.keywords:
            self._expr(keyword.value)
        # The body runs now, in order, like the cell itself, but in a namespace of its own.
        self._push(CLASS, deferred=False, scan=scan_scope(node.body))
        self._block(node.body)
        self._pop()
        if type_params:
            self._pop()
        self._store(node.name)
        return True

    def _stmt_TypeAlias(self, node: ast.AST) -> bool:
        # `type X[T] = value`: the value is evaluated lazily, in a scope holding the parameters.
        type_params = self._enter_type_params(node, deferred=True)
        if not type_params:
            self._push(FUNCTION, deferred=True)
        self._expr(node.value)  # type: ignore[attr-defined]
        self._pop()
        self._target(node.name)  # type: ignore[attr-defined]
        return True

    def _enter_type_params(self, node: ast.AST, deferred: bool = False) -> bool:
        """PEP 695 parameters get a scope of their own; their bounds are evaluated lazily."""
        params = getattr(node, "type_params", None) or []
        if not params:
            return False
        self._push(FUNCTION, deferred=deferred, extra=[p.name for p in params])
        for param in params:
            for name in ("bound", "default_value"):
                value = getattr(param, name, None)
                if value is not None:
                    self._push(FUNCTION, deferred=True)
                    self._expr(value)
                    self._pop()
        return True

    def _defaults(self, args: ast.arguments) -> None:
        for default in [*args.defaults, *args.kw_defaults]:
            self._expr(default)

    # -- expressions ------------------------------------------------------------------------

    def _expr(self, node: ast.AST | None) -> None:
        if node is None:
            return
        handler = getattr(self, "_expr_" + type(node).__name__, None)
        if handler is not None:
            handler(node)
            return
        for child in ast.iter_child_nodes(node):
            self._expr(child)

    def _expr_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._load(node.id)
        elif isinstance(node.ctx, ast.Store):
            self._store(node.id)
        else:
            self._delete(node.id)

    def _expr_Call(self, node: ast.Call) -> None:
        for child in ast.iter_child_nodes(node):
            self._expr(child)
        names, variables = names_in_evaluated_string(node, self.strings)
        for name in names:
            self._load(name)
        self.evaluated.update(variables)

    def _expr_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._expr(node.value)
        # Inside a comprehension the walrus binds in the nearest enclosing real scope.
        self._bind(self._flow(), node.target.id)

    def _expr_BoolOp(self, node: ast.BoolOp) -> None:
        # Only the first operand always runs; a walrus in the others is uncertain.
        self._expr(node.values[0])
        self._discard(lambda: [self._expr(value) for value in node.values[1:]])

    def _expr_IfExp(self, node: ast.IfExp) -> None:
        self._expr(node.test)
        frame = self._flow()
        before = frame.state
        paths = []
        for branch in (node.body, node.orelse):
            frame.state = before.copy()
            self._expr(branch)
            paths.append((True, frame.state))
        self._join(frame, before, paths)

    def _expr_Lambda(self, node: ast.Lambda) -> None:
        self._defaults(node.args)
        params = [arg.arg for arg in parameters(node.args)]
        self._push(FUNCTION, deferred=True, scan=scan_scope([node.body]), extra=params)
        self._expr(node.body)
        self._pop()

    def _expr_comprehension(self, node: ast.AST) -> None:
        generators: list[ast.comprehension] = node.generators  # type: ignore[attr-defined]
        self._expr(generators[0].iter)  # evaluated in the enclosing scope
        targets = scan_scope([g.target for g in generators]).bound

        def body() -> None:
            self._push(COMPREHENSION, deferred=False, extra=targets)
            for index, generator in enumerate(generators):
                if index:
                    self._expr(generator.iter)
                self._target(generator.target)
                for condition in generator.ifs:
                    self._expr(condition)
            for name in ("elt", "key", "value"):
                self._expr(getattr(node, name, None))
            self._pop()

        # It may loop zero times: a walrus inside binds, but not for certain.
        self._discard(body)

    _expr_ListComp = _expr_SetComp = _expr_DictComp = _expr_GeneratorExp = _expr_comprehension
