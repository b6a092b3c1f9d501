"""Which names, files and global generators a cell may read, judged from its code alone: what
tells a new chain of differences from the consequences of an earlier one."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

RANDOMISH = re.compile(r"random|rand|rng|seed|shuffle|sample|choice|permutation|normal|"
                       r"uniform|fit|split|cross_val|bootstrap|noise", re.I)


class Reads:
    """Which names a cell may read: the names its code loads, and (transitively) those the
    notebook's own functions and classes that it loads read; a file when its name appears
    in the code; the global generators when the code looks like it draws from them."""

    def __init__(self) -> None:
        self.definitions: dict[str, set[str]] = {}

    def of(self, source: str) -> Any:
        from IPython.core.inputtransformer2 import TransformerManager

        try:
            tree = ast.parse(TransformerManager().transform_cell(source))
        except (SyntaxError, ValueError):
            return None
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.definitions[node.name] = loads(node)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.definitions[target.id] = loads(node.value)
        names, todo = set(), list(loads(tree))
        while todo:
            name = todo.pop()
            if name not in names:
                names.add(name)
                todo += self.definitions.get(name, ())

        def reads(name: str) -> bool:
            if name.startswith("file:"):
                return Path(name[5:]).name in source
            if name.startswith("<"):
                return name != "<aliases>" and bool(RANDOMISH.search(source))
            return name in names

        return reads


def loads(tree: ast.AST) -> set[str]:
    found = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
             and isinstance(n.ctx, (ast.Load, ast.Del))}
    found |= {n.target.id for n in ast.walk(tree)
              if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name)}
    return found
