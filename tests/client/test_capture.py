"""Tests for the cell analysis: what a cell reads from the notebook and what it leaves there."""

from __future__ import annotations

import ast
import symtable
import sys
import textwrap

import pytest

from remote_magic.client.capture import CellNames, analyse_cell
from remote_magic.errors import CaptureError, RemoteMagicError

py310 = pytest.mark.skipif(sys.version_info < (3, 10), reason="match needs Python 3.10")
py311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="except* needs Python 3.11")


def cell(source: str) -> CellNames:
    return analyse_cell(textwrap.dedent(source))


def check(source: str, reads: set[str] | None = None, binds: tuple[str, ...] | None = None,
          deletes: set[str] | None = None) -> CellNames:
    names = cell(source)
    if reads is not None:
        assert names.reads == frozenset(reads), names
    if binds is not None:
        assert names.binds == binds, names
    if deletes is not None:
        assert names.deletes == frozenset(deletes), names
    return names


# --- table: one small cell per row --------------------------------------------------------

CASES = [
    # (source, reads, binds, deletes)
    ("x = 1", set(), ("x",), set()),
    ("x = 1\nprint(x)", {"print"}, ("x",), set()),
    ("y = x", {"x"}, ("y",), set()),
    ("x = x + 1", {"x"}, ("x",), set()),
    ("x += 1", {"x"}, ("x",), set()),
    ("x = 0\nx += 1", set(), ("x",), set()),
    ("print(x)\nx = 2", {"print", "x"}, ("x",), set()),
    ("a = b = c", {"c"}, ("a", "b"), set()),
    ("a, (b, *c) = d", {"d"}, ("a", "b", "c"), set()),
    ("[a, b] = a, 2", {"a"}, ("a", "b"), set()),
    ("first, *rest = items\nprint(rest)", {"items", "print"}, ("first", "rest"), set()),
    ("a.b = 1", {"a"}, (), set()),
    ("a[0] = 1", {"a"}, (), set()),
    ("a[i] += v", {"a", "i", "v"}, (), set()),
    ("obj.attr.sub = value", {"obj", "value"}, (), set()),
    ("x, x.y = 1, 2", set(), ("x",), set()),
    ("import numpy as np", set(), ("np",), set()),
    ("import os.path", set(), ("os",), set()),
    ("import os.path as osp", set(), ("osp",), set()),
    ("from collections import OrderedDict as OD, deque", set(), ("OD", "deque"), set()),
    ("from . import sibling", set(), ("sibling",), set()),
    ("import math\nr = math.pi", set(), ("math", "r"), set()),
    ("global x\nx = 1", set(), ("x",), set()),
    ("x: int = 3", {"int"}, ("x",), set()),
    ("x: int", {"int"}, (), set()),
    ("x: list[T] = []", {"list", "T"}, ("x",), set()),
    ("a.b: int = 1", {"a", "int"}, (), set()),
    ("(y := f(1))\nprint(y)", {"f", "print"}, ("y",), set()),
    ("z = (y := 2) + y", set(), ("y", "z"), set()),
    ("ok = flag and (y := 1)\nprint(y)", {"flag", "print", "y"}, ("y", "ok"), set()),
    ("v = (y := 1) if c else (y := 2)\nprint(y)", {"c", "print"}, ("y", "v"), set()),
    ("s = f'{a} {b!r:{width}.{prec}}'", {"a", "b", "width", "prec"}, ("s",), set()),
    ("s = f'{x}' if (x := 1) else ''", set(), ("x", "s"), set()),
    ("assert (n := check()), msg", {"check", "msg"}, ("n",), set()),
    ("assert (n := check())\nprint(n)", {"check", "print", "n"}, ("n",), set()),
    ("", set(), (), set()),
    ("# only a comment\n", set(), (), set()),
    ("_private = 1\n__dunder = 2", set(), ("_private", "__dunder"), set()),
    ("x = await fetch()", {"fetch"}, ("x",), set()),
]


@pytest.mark.parametrize(("source", "reads", "binds", "deletes"), CASES,
                         ids=[c[0].replace("\n", "; ")[:50] or "empty" for c in CASES])
def test_table(source: str, reads: set[str], binds: tuple[str, ...], deletes: set[str]) -> None:
    check(source, reads, binds, deletes)


# --- shadowing and order of evaluation -----------------------------------------------------

def test_a_name_assigned_before_use_is_not_read() -> None:
    # `handle` in the notebook may be an open file: it must not be shipped.
    names = check("""
        handle = open(path)
        text = handle.read()
        handle.close()
    """, reads={"open", "path"}, binds=("handle", "text"))
    assert "handle" not in names.reads


def test_read_then_assign_is_a_read() -> None:
    check("""
        total = total * 2
        total = 0
    """, reads={"total"}, binds=("total",))


def test_for_target_and_its_iterable() -> None:
    check("for x in x:\n    pass", reads={"x"}, binds=("x",))
    check("""
        for i, (k, v) in enumerate(d.items()):
            print(i, k, v)
    """, reads={"enumerate", "d", "print"}, binds=("i", "k", "v"))


def test_binds_keep_order_of_first_binding_without_duplicates() -> None:
    check("""
        b = 1
        a = 2
        b = 3
        import c
        def d(): pass
        class e: pass
        for f in []: pass
        with g() as h: pass
    """, binds=("b", "a", "c", "d", "e", "f", "h"))


# --- control flow: maybe and certainly bound --------------------------------------------------

def test_name_bound_in_one_branch_only_is_still_read_later() -> None:
    check("""
        if cond:
            x = 1
        print(x)
    """, reads={"cond", "print", "x"}, binds=("x",))


def test_use_inside_the_branch_that_binds_is_not_read() -> None:
    check("""
        if cond:
            x = 1
            print(x)
    """, reads={"cond", "print"}, binds=("x",))


def test_name_bound_in_every_branch_is_bound_after_the_if() -> None:
    check("""
        if a:
            x = 1
        elif b:
            x = 2
        else:
            x = 3
        print(x)
    """, reads={"a", "b", "print"}, binds=("x",))


def test_branch_that_raises_does_not_spoil_the_join() -> None:
    check("""
        if ok:
            value = compute()
        else:
            raise ValueError("no")
        print(value)
    """, reads={"ok", "compute", "ValueError", "print"}, binds=("value",))


def test_for_loop_target_and_body_are_maybe() -> None:
    check("""
        for item in items:
            last = item
        print(last, item)
    """, reads={"items", "print", "last", "item"}, binds=("item", "last"))


def test_for_else_without_break_runs_whenever_the_loop_ends() -> None:
    check("""
        for item in items:
            pass
        else:
            done = True
        print(done)
    """, reads={"items", "print"}, binds=("item", "done"))


def test_for_else_with_break_is_uncertain() -> None:
    check("""
        for item in items:
            if item:
                break
        else:
            done = True
        print(done)
    """, reads={"items", "print", "done"}, binds=("item", "done"))


def test_while_loop() -> None:
    check("""
        while n > 0:
            n -= 1
            seen = n
        print(seen)
    """, reads={"n", "print", "seen"}, binds=("n", "seen"))


def test_walrus_in_while_test_is_certain() -> None:
    check("""
        while (chunk := stream.read(10)):
            pass
        print(chunk)
    """, reads={"stream", "print"}, binds=("chunk",))


def test_while_true_leaves_through_break_only() -> None:
    check("""
        while True:
            line = source()
            if line:
                break
        print(line)
    """, reads={"source", "print"}, binds=("line",))


def test_unreachable_code_makes_nothing_certain() -> None:
    check("""
        for i in r:
            continue
            x = 1
        raise SystemExit
        y = 2
    """, reads={"r", "SystemExit"}, binds=("i", "x", "y"))


def test_try_except_as() -> None:
    names = check("""
        try:
            result = risky()
        except (KeyError, ValueError) as err:
            print(err)
            result = None
        print(result)
    """, reads={"risky", "KeyError", "ValueError", "print"}, binds=("result",))
    assert "err" not in names.binds  # unbound at the end of the handler


def test_except_name_bound_elsewhere_is_an_output() -> None:
    check("""
        err = None
        try:
            go()
        except Exception as err:
            pass
    """, binds=("err",))


def test_try_body_binding_is_not_certain_in_handler_or_after() -> None:
    check("""
        try:
            conn = connect()
            rows = conn.fetch()
        except OSError:
            print(conn)
        print(rows)
    """, reads={"connect", "OSError", "print", "conn", "rows"}, binds=("conn", "rows"))


def test_try_else_and_finally() -> None:
    check("""
        try:
            a = 1
        except Exception:
            a = 2
        else:
            b = a
        finally:
            c = 3
            print(b)
        print(a, c)
    """, reads={"Exception", "print", "b"}, binds=("a", "b", "c"))


def test_finally_judged_from_the_weakest_entry_but_binds_for_certain() -> None:
    check("""
        for item in items:
            try:
                x = parse(item)
            finally:
                log(x)
                seen = item
                break
        print(seen)
    """, reads={"items", "parse", "log", "x", "print", "seen"}, binds=("item", "x", "seen"))
    check("""
        try:
            pass
        finally:
            closed = True
        print(closed)
    """, reads={"print"}, binds=("closed",))


def test_names_deleted_in_a_function_through_global() -> None:
    check("""
        def drop():
            global cache
            del cache
    """, reads={"cache"}, binds=("drop", "cache"), deletes=set())


@py311
def test_except_star() -> None:
    check("""
        try:
            go()
        except* ValueError as group:
            handled = group
        print(handled)
    """, reads={"go", "ValueError", "print", "handled"}, binds=("handled",))


def test_with_as_and_body() -> None:
    check("""
        with open(path) as fh, lock:
            data = fh.read()
        print(data, fh)
    """, reads={"open", "path", "lock", "print"}, binds=("fh", "data"))


def test_with_as_tuple_target() -> None:
    check("with ctx() as (a, b):\n    c = a + b", reads={"ctx"}, binds=("a", "b", "c"))


@py310
def test_match_statement() -> None:
    check("""
        match command:
            case Point(x=px, y=0):
                kind = px
            case [first, *others]:
                kind = first
            case {"key": value, **extra}:
                kind = value
            case Color.RED | Color.GREEN:
                kind = "colour"
            case str() as text if text:
                kind = text
            case _:
                kind = None
        print(kind, px)
    """, reads={"command", "Point", "Color", "str", "print", "px"},
       binds=("px", "kind", "first", "others", "value", "extra", "text"))


@py310
def test_match_without_catch_all_may_bind_nothing() -> None:
    check("""
        match x:
            case 1:
                y = "one"
            case _ if strict:
                y = "other"
        print(y)
    """, reads={"x", "strict", "print", "y"}, binds=("y",))


@py310
def test_match_capture_in_every_case_including_catch_all() -> None:
    check("""
        match x:
            case [a]:
                y = a
            case other:
                y = other
        print(y)
    """, reads={"x", "print"}, binds=("a", "y", "other"))


# --- del -------------------------------------------------------------------------------------

def test_del_of_a_notebook_name() -> None:
    check("del x", reads={"x"}, binds=(), deletes={"x"})


def test_del_of_a_name_bound_in_the_cell() -> None:
    names = check("""
        tmp = load()
        out = tmp * 2
        del tmp
    """, reads={"load"}, deletes={"tmp"})
    assert "out" in names.binds


def test_del_then_rebind_is_a_bind_not_a_delete() -> None:
    check("del x\nx = 2", reads={"x"}, binds=("x",), deletes=set())


def test_del_then_maybe_rebind_stays_a_delete() -> None:
    check("""
        del x
        if c:
            x = 2
    """, reads={"x", "c"}, binds=("x",), deletes={"x"})


def test_del_inside_a_branch() -> None:
    check("""
        if c:
            del a, b
    """, reads={"c", "a", "b"}, deletes={"a", "b"})


def test_del_interrupted_by_an_exception_is_still_a_delete() -> None:
    check("""
        try:
            del cache
            cache = rebuild()
        except Exception:
            pass
    """, reads={"cache", "rebuild", "Exception"}, deletes={"cache"})


def test_del_attribute_and_item_read_the_container() -> None:
    check("del a.b, c[d]", reads={"a", "c", "d"}, binds=(), deletes=set())


def test_read_after_del_is_not_shipped() -> None:
    # The cell itself removed the value: the notebook's old one can never be seen.
    check("x = 1\ndel x\nprint(x)", reads={"print"}, deletes={"x"})


# --- nested scopes ---------------------------------------------------------------------------

def test_global_used_only_inside_a_function() -> None:
    check("""
        def scale(v):
            return v * factor
    """, reads={"factor"}, binds=("scale",))


def test_function_calls_a_helper_defined_later() -> None:
    check("""
        def main():
            return helper(2) + offset
        def helper(v):
            return v + 1
        result = main()
    """, reads={"offset"}, binds=("main", "helper", "result"))


def test_function_global_bound_only_in_a_branch_is_read() -> None:
    check("""
        def f():
            return limit
        if c:
            limit = 3
    """, reads={"c", "limit"}, binds=("f", "limit"))


def test_parameters_locals_and_enclosing_function_names() -> None:
    check("""
        def outer(a, *args, b=1, **kw):
            c = a + b
            def inner(d):
                return a + c + d + len(args) + len(kw) + e
            return inner
    """, reads={"len", "e"}, binds=("outer",))


def test_local_assigned_after_use_is_still_local() -> None:
    check("""
        def f():
            print(x)
            x = 1
    """, reads={"print"}, binds=("f",))


def test_nonlocal() -> None:
    check("""
        def counter():
            n = 0
            def step():
                nonlocal n
                n += 1
                return n
            return step
    """, reads=set(), binds=("counter",))


def test_global_statement_in_a_function() -> None:
    names = check("""
        def bump():
            global counter
            counter += 1
    """, reads={"counter"}, binds=("bump", "counter"))
    assert names.deletes == frozenset()


def test_global_assigned_without_reading_is_still_an_input() -> None:
    # If bump() is never called the notebook's value must survive the round trip.
    check("""
        def reset():
            global state
            state = {}
    """, reads={"state"}, binds=("reset", "state"))


def test_global_in_function_not_an_input_when_the_cell_binds_it() -> None:
    check("""
        counter = 0
        def bump():
            global counter
            counter += 1
        bump()
    """, reads=set(), binds=("counter", "bump"))


def test_global_in_nested_function_declared_in_the_outer() -> None:
    check("""
        def outer():
            global g
            def inner():
                return g
            return inner
    """, reads={"g"}, binds=("outer",))


def test_decorators_defaults_and_annotations_run_at_definition() -> None:
    check("""
        @register(registry)
        def f(a: Arg = default, *, b: int = other) -> Ret:
            return a
    """, reads={"register", "registry", "Arg", "default", "int", "other", "Ret"},
       binds=("f",))


def test_default_is_read_even_when_bound_later() -> None:
    check("""
        def f(a=late):
            return a
        late = 1
    """, reads={"late"}, binds=("f", "late"))


def test_function_local_annotation_is_never_evaluated() -> None:
    check("""
        def f():
            x: SomeType = 1
            y: Other
            return x
    """, reads=set(), binds=("f",))


def test_recursive_function() -> None:
    check("""
        def fact(n):
            return 1 if n < 2 else n * fact(n - 1)
    """, reads=set(), binds=("fact",))


def test_async_def() -> None:
    check("""
        async def fetch(url):
            async with session.get(url) as resp:
                body = await resp.text()
            async for chunk in stream(body):
                yield chunk
    """, reads={"session", "stream"}, binds=("fetch",))


def test_top_level_async_for_and_with() -> None:
    check("""
        async with client() as c:
            async for row in c.rows():
                total = row
    """, reads={"client"}, binds=("c", "row", "total"))


def test_lambda_with_defaults() -> None:
    check("key = lambda item, w=weight: item[w] + bias",
          reads={"weight", "bias"}, binds=("key",))


def test_lambda_body_sees_names_bound_later() -> None:
    check("f = lambda: g()\ng = print", reads={"print"}, binds=("f", "g"))


def test_lambda_in_a_comprehension_sees_the_loop_variable() -> None:
    check("fs = [lambda: i + j for i in r]", reads={"r", "j"}, binds=("fs",))


# --- comprehensions --------------------------------------------------------------------------

def test_comprehension_variables_are_neither_read_nor_bound() -> None:
    check("squares = [x * x for x in xs if x > threshold]",
          reads={"xs", "threshold"}, binds=("squares",))


def test_comprehension_variable_does_not_leak() -> None:
    check("""
        ys = [x for x in range(3)]
        print(x)
    """, reads={"range", "print", "x"}, binds=("ys",))


def test_comprehension_runs_immediately() -> None:
    # Unlike a function body, a comprehension cannot see a name bound after it.
    check("a = [k for _ in r]\nk = 1", reads={"r", "k"}, binds=("a", "k"))


def test_nested_comprehensions() -> None:
    check("""
        flat = [cell for row in grid for cell in row if cell]
        table = {k: [v * k for v in vals] for k in keys}
        pairs = {(a, b) for a in left for b in right}
        total = sum(x for row in grid for x in row)
        inner = [[a * b for a in row] for row in m]
    """, reads={"grid", "vals", "keys", "left", "right", "sum", "m", "b"},
       binds=("flat", "table", "pairs", "total", "inner"))


def test_comprehension_first_iterable_is_evaluated_outside() -> None:
    check("""
        x = [1]
        y = [x for x in x]
    """, reads=set(), binds=("x", "y"))


def test_walrus_in_comprehension_binds_at_top_level_maybe() -> None:
    check("""
        found = any((hit := v) > 3 for v in values)
        print(hit)
    """, reads={"any", "values", "print", "hit"}, binds=("hit", "found"))


def test_walrus_in_comprehension_then_used_inside() -> None:
    check("r = [(last := v) + last for v in vs]", reads={"vs"}, binds=("last", "r"))


def test_walrus_in_comprehension_inside_a_function_is_local() -> None:
    check("""
        def f(vs):
            return [(last := v) for v in vs], last
    """, reads=set(), binds=("f",))


# --- classes ---------------------------------------------------------------------------------

def test_class_body_and_methods() -> None:
    check("""
        class Model(Base, metaclass=Meta):
            scale = default_scale
            size = scale * 2
            def area(self):
                return size * unit
            @property
            def name(self):
                return Model.__name__
    """, reads={"Base", "Meta", "default_scale", "size", "unit", "property"},
       binds=("Model",))


def test_class_body_runs_immediately() -> None:
    check("""
        class A:
            k = later
        later = 1
    """, reads={"later"}, binds=("A", "later"))


def test_class_body_reads_a_name_bound_before_it() -> None:
    check("""
        limit = 3
        class A:
            k = limit
    """, reads=set(), binds=("limit", "A"))


def test_class_local_read_before_assignment_falls_back_to_global() -> None:
    check("""
        class A:
            x = x + 1
    """, reads={"x"}, binds=("A",))


def test_comprehension_in_class_body_skips_class_names() -> None:
    check("""
        class A:
            items = [1, 2]
            doubled = [i * 2 for i in items]
            kept = [i for i in range(3) if i in items]
    """, reads={"range", "items"}, binds=("A",))


def test_class_inside_function_sees_function_locals() -> None:
    check("""
        def make(v):
            class K:
                w = v
                def get(self):
                    return v, w
            return K
    """, reads={"w"}, binds=("make",))


def test_class_name_is_bound_after_its_body() -> None:
    check("class Node:\n    parent = Node", reads={"Node"}, binds=("Node",))


def test_method_referring_to_its_class() -> None:
    check("""
        class Node:
            def clone(self):
                return Node()
    """, reads=set(), binds=("Node",))


# --- pattern of a real notebook cell ---------------------------------------------------------

def test_typical_cell() -> None:
    check("""
        import numpy as np

        def simulate(n, seed=seed):
            rng = np.random.default_rng(seed)
            return rng.normal(size=n) * sigma

        samples = [simulate(n) for n in sizes]
        summary = {n: s.mean() for n, s in zip(sizes, samples)}
        summary
    """, reads={"seed", "sigma", "sizes", "zip"}, binds=("np", "simulate", "samples", "summary"))


# --- errors ----------------------------------------------------------------------------------

def test_star_import_is_refused() -> None:
    with pytest.raises(CaptureError) as info:
        cell("x = 1\nfrom os.path import *\n")
    message = str(info.value)
    assert "import *" in message and "explicitly" in message and "Line 2" in message
    assert isinstance(info.value, RemoteMagicError)


def test_star_import_in_a_branch_is_refused() -> None:
    with pytest.raises(CaptureError, match="cannot be analysed"):
        cell("if c:\n    from m import *\n")


def test_syntax_error_is_the_syntax_error_a_local_run_raises() -> None:
    with pytest.raises(SyntaxError) as info:
        cell("a = 1\nb = 2\nc = = 3\n")
    local = _compile_error("a = 1\nb = 2\nc = = 3\n")
    assert isinstance(info.value, CaptureError) and type(info.value).__name__ == "SyntaxError"
    assert (info.value.msg, info.value.lineno, info.value.text) == \
        (local.msg, 3, "c = = 3\n")
    assert str(info.value) == str(local)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def _compile_error(source: str) -> SyntaxError:
    try:
        compile(source, "<cell>", "exec")
    except SyntaxError as exc:
        return exc
    raise AssertionError("compiled")


def test_indentation_error_keeps_its_type() -> None:
    with pytest.raises(IndentationError) as info:
        cell("if x:\npass\n")
    assert type(info.value).__name__ == "IndentationError" and info.value.lineno == 2


def test_syntax_error_with_windows_line_endings() -> None:
    with pytest.raises(SyntaxError) as info:
        analyse_cell("a = 1\r\nb = = 2\r\n")
    assert info.value.lineno == 2 and info.value.text.strip() == "b = = 2"


def test_unclosed_bracket() -> None:
    with pytest.raises(SyntaxError, match="never closed") as info:
        cell("x = (1,\ny = 2\n")
    assert info.value.lineno == 1


def test_scope_errors_are_reported_before_shipping() -> None:
    with pytest.raises(SyntaxError, match="nonlocal") as info:
        cell("def f():\n    nonlocal q\n")
    assert info.value.lineno == 2 and info.value.text.strip() == "nonlocal q"
    with pytest.raises(SyntaxError, match="outside function") as info:
        cell("return 1")
    assert info.value.lineno == 1


def test_ipython_syntax_gets_a_hint() -> None:
    with pytest.raises(CaptureError, match="IPython syntax"):
        cell("%timeit f()\n")
    with pytest.raises(CaptureError, match="IPython syntax"):
        cell("x = 1\n!ls -l\n")


def test_null_byte_is_a_capture_error() -> None:
    with pytest.raises(CaptureError):
        analyse_cell("x = 1\0")


# --- last expression -------------------------------------------------------------------------

@pytest.mark.parametrize(("source", "expected"), [
    ("x", True),
    ("x = 1\nx", True),
    ("x;", False),
    ("x ;  # quiet", False),
    ("x  # a ; in a comment", True),
    ("f('a;')", True),
    ("f('#;')", True),
    ("x = 1; x", True),
    ("x; y = 1", False),
    ("x = 1", False),
    ("f(\n  1,\n)", True),
    ("f(\n  1,\n);", False),
    ("if a:\n    b", False),
    ("await g()", True),
    ("x\n\n# trailing comment\n", True),
    ("", False),
    ("# nothing\n", False),
])
def test_last_expression(source: str, expected: bool) -> None:
    assert analyse_cell(source).last_expression is expected


def test_result_is_hashable_and_frozen() -> None:
    names = analyse_cell("x = y")
    assert isinstance(names.reads, frozenset) and isinstance(names.deletes, frozenset)
    assert isinstance(names.binds, tuple)
    with pytest.raises(AttributeError):
        names.reads = frozenset()  # type: ignore[misc]
    hash(names)


# --- newer syntax ----------------------------------------------------------------------------

# --- cross-check against the compiler's own scope analysis -----------------------------------

SCOPED = [
    """
    def outer(a):
        b = a + g1
        def inner(c):
            nonlocal b
            b += c + g2
            return [x + b + g3 for x in c if x not in g4]
        return inner
    """,
    """
    def counter():
        global total, hits
        total += 1
        return lambda k=1: total + k + g5
    """,
    """
    async def fetch(url):
        async with session.get(url) as resp:
            data = await resp.json()
        try:
            return parse(data)
        except ParseError as err:
            log(err)
    """,
    """
    def shadow(x):
        x = x + 1
        for i in range(x):
            y = i
        del y
        return sorted(set(z for z in items), key=lambda v: -v * w)
    """,
    """
    def make():
        v = 1
        class K:
            w = v
            def m(self):
                return w, v, K
        return K
    """,
    """
    def gen(n):
        import itertools as it
        from functools import reduce
        yield from it.islice(reduce(op, n), limit)
        with ctx() as (p, q):
            z = {k: (p, q, k, r) for k in n}
        return z
    """,
]


def _symtable_globals(source: str) -> set[str]:
    """Globals read or assigned by any nested scope, according to the compiler."""
    found: set[str] = set()
    stack = list(symtable.symtable(source, "<cell>", "exec").get_children())
    while stack:
        table = stack.pop()
        stack.extend(table.get_children())
        if table.get_type() == "class":
            continue  # class-local names are judged by flow, which symtable does not model
        for symbol in table.get_symbols():
            if symbol.is_global() and (symbol.is_referenced() or symbol.is_assigned()):
                found.add(symbol.get_name())
    return found


@pytest.mark.parametrize("source", SCOPED)
def test_nested_scopes_agree_with_symtable(source: str) -> None:
    source = textwrap.dedent(source)
    defined = {node.name for node in ast.parse(source).body}  # each sample only has defs
    assert analyse_cell(source).reads == frozenset(_symtable_globals(source) - defined)


@pytest.mark.parametrize("code, names", [
    ('df.query("a > @limit")', {"limit"}),
    ('df.eval("c = a * @scale")', {"scale"}),
    ('pd.eval("df1 + df2")', {"df1", "df2"}),
    ('numexpr.evaluate("a * b", local_dict=None)', {"a", "b"}),
    ('evaluate(expr="x ** 2")', {"x"}),
    ('eval("y + 1")', {"y"}),
    ('exec("w = v * 2")', {"v"}),
])
def test_names_inside_strings_evaluated_at_run_time_are_read(code: str,
                                                              names: set[str]) -> None:
    assert names <= cell(code).reads


def test_names_in_evaluated_strings_follow_the_scope_rules() -> None:
    # bound before the call, or a parameter of the function: not read from the notebook
    assert "x" not in cell('x = 1\ndf.query("a > @x")').reads
    assert "q" not in cell('def f(q):\n    return df.query("a > @q")\n').reads
    # quoted strings and backticked column names inside the expression are not names
    assert cell("""df.query("name == 'bob' and `a b` > lim")""").reads >= {"lim", "df"}
    assert not {"bob"} & cell("""df.query("name == 'bob'")""").reads
    # a string that is not a literal cannot be read
    assert cell("df.query(expression)").reads == {"df", "expression"}


def test_an_expression_string_held_by_a_variable() -> None:
    # assigned a literal in the cell: the names in it are read
    names = cell('expr = "(df1 > 0) & (df2 > 0)"\nresult = pd.eval(expr)')
    assert {"df1", "df2"} <= names.reads
    # a variable of the notebook: reported, so that its value can be read when sending
    names = cell("low = df.query(condition)")
    assert names.evaluated == {"condition"} and "condition" in names.reads
