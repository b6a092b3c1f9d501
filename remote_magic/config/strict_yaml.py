"""Strict YAML for the hosts file: what PyYAML's safe loader accepts, minus its traps.

Two YAML 1.1 habits would otherwise turn a typo into a silent change of meaning: `1:00:00`
read as the number 3600, and a key written twice keeping only its last value. Both are refused
or avoided here, and every key's line is kept so that a later complaint can point at it.
Aliases are bounded too: a few hundred bytes of nested `*alias` lists stand for billions of
values, which any later walk over the data (a check, a message quoting it) would take forever
to go through.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

KeyPath = tuple[str, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps `1:00:00` a string.

    YAML 1.1 reads colon-separated digits as base-60 numbers, so an unquoted `walltime: 1:00:00`
    would silently become 3600. Such scalars are resolved as strings instead.
    """


_Loader.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
for _first in "+-0123456789":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:str", _SEXAGESIMAL)
    )

_MERGE_TAG = "tag:yaml.org,2002:merge"
# Values in the document with every alias counted as what it stands for. A hosts file with a
# hundred hosts holds a few thousand; an alias bomb holds billions.
MAX_VALUES = 100_000


def load_yaml(text: str, source: Path | None) -> tuple[Any, dict[KeyPath, int]]:
    """Parse one YAML document; also map each key path to its line for later messages."""
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _bound_aliases(node, source)
        _reject_duplicate_keys(node, source)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_describe_yaml_error(exc), source) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise ConfigError(
            f"invalid YAML at line {line}, column {column}: the character {exc.character!r} "
            "is not allowed in YAML; remove it",
            source,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", source) from None
    finally:
        if loader is not None:
            loader.dispose()
    lines: dict[KeyPath, int] = {}
    _collect_key_lines(node, (), lines, set())
    return data, lines


def _describe_yaml_error(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or "syntax error"
    context = ""
    if exc.context:
        context = f" ({exc.context}"
        if exc.context_mark and exc.context_mark is not mark:
            context += f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
        context += ")"
    advice = "check the indentation, colons and quotes around there"
    if "'\\t'" in problem:
        advice = "indent with spaces: YAML does not allow tabs there"
    return f"invalid YAML{where}: {problem}{context}; {advice}"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _bound_aliases(root: yaml.Node, source: Path | None) -> None:
    """Refuse a document whose aliases expand it past MAX_VALUES, or refer to themselves.

    An alias is the very node it names, so the composed graph stays small; its size with every
    alias expanded is summed bottom-up over that graph, each node once, without recursion (a
    deeply nested document must not exhaust the stack).
    """
    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, iter(_children(root)))]
    open_nodes.add(id(root))
    while stack:
        node, pending = stack[-1]
        child = next(pending, None)
        if child is None:
            stack.pop()
            open_nodes.discard(id(node))
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > MAX_VALUES:
                line = node.start_mark.line + 1
                raise ConfigError(
                    f"the value at line {line}, with its aliases (*name) written out, holds "
                    f"more than {MAX_VALUES:,} values, far more than any hosts file needs; "
                    "write the values out instead of nesting aliases in aliases",
                    source,
                )
            size[id(node)] = total
        elif id(child) in open_nodes:
            line = child.start_mark.line + 1
            raise ConfigError(
                f"the anchor at line {line} is used by an alias (*name) inside its own value, "
                "which makes it endless; use the alias outside the value it names",
                source,
            )
        elif id(child) not in size:
            open_nodes.add(id(child))
            stack.append((child, iter(_children(child))))


def _reject_duplicate_keys(root: yaml.Node, source: Path | None) -> None:
    """Refuse a key written twice in one mapping, which YAML would resolve by dropping the first.

    Checked on the node graph, before construction merges `<<:` keys, so that overriding a
    merged key stays legal.
    """
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                stack.append(value_node)
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                ident = (key_node.tag, key_node.value)
                mark = key_node.start_mark
                if ident in first_line:
                    raise ConfigError(
                        f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: the key "
                        f"'{key_node.value}' appears twice in the same mapping (first on line "
                        f"{first_line[ident]}); remove or merge one of them",
                        source,
                    )
                first_line[ident] = mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _collect_key_lines(
    node: yaml.Node, prefix: KeyPath, out: dict[KeyPath, int], seen: set[int]
) -> None:
    if not isinstance(node, yaml.MappingNode) or id(node) in seen:
        return
    seen.add(id(node))
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
            path = (*prefix, key_node.value)
            out[path] = key_node.start_mark.line + 1  # the last one wins, as in the data
            _collect_key_lines(value_node, path, out, seen)
