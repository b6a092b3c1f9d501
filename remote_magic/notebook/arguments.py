"""A magic's line as arguments: split into words as a POSIX shell splits them, parsed by the
magic's own declarations, and checked, so that every mistake in it is one short OptionError.

IPython's own splitting keeps quotes inside the words (`--collect "out/*.csv"` would look for
names starting with a quote) and lets an unclosed quote escape as a bare ValueError. Here, as in
a shell, quotes group a word and disappear and a backslash escapes the next character; a name
held in a variable goes in whole, tabs and newlines included, as `{shlex.quote(name)}`, since
IPython expands `{...}` in a magic's line before the magic sees it.
"""

from __future__ import annotations

import argparse
import re
import shlex
import unicodedata
from typing import Any, Callable

from ..client.prepare import TaskOptions
from ..config.checks import check_resources, collect_patterns
from ..errors import OptionError, TaskNotFoundError, clipped, echo

RESOURCES = ("walltime", "cores", "mem", "nodes", "gpus", "partition", "account")
MAX_LABEL = 200  # characters of a --name: it is a label in one row of a status table
MAX_TASK_ID = 64  # a whole id is 16 hex digits; a longer "prefix" cannot match anything
_HEX = frozenset("0123456789abcdef")


def split(line: str, magic: str) -> list[str]:
    """The words of `line`, as bash would split them (without expansions).

    An unclosed quote or a backslash at the very end is refused with where it is: guessing
    where the word was meant to end could send another file or another host than meant.
    """
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # '#' is an ordinary character in a file name or a label
    try:
        return list(lexer)
    except ValueError:
        raise OptionError(f"{magic}: {_unsplittable(line)}") from None


def _unsplittable(line: str) -> str:
    """Why `line` cannot be split: the quote left open (and where), or a trailing backslash."""
    quote, opened, escaped = "", 0, False
    for at, char in enumerate(line):
        if escaped:
            escaped = False
        elif quote == "'":
            quote = "" if char == "'" else quote
        elif char == "\\":
            escaped = True
        elif quote == '"':
            quote = "" if char == '"' else quote
        elif char in "'\"":
            quote, opened = char, at
    if quote:
        kind = "single" if quote == "'" else "double"
        return (f"the {kind} quote at column {opened + 1} ({echo(line[opened:], 30)}) is never "
                f"closed. Close it, or put a backslash before a quote that is part of a name "
                f"(\\{quote}); a name held in a variable goes in whole as {{shlex.quote(name)}}.")
    return ("the line ends with a backslash, which escapes nothing. Remove it, or write \\\\ "
            "for a backslash that is part of a name.")


def parse(magic: Callable[..., Any], line: str, *, cell: bool = False) -> argparse.Namespace:
    """`line` parsed by the argument declarations of `magic` (as IPython's parse_argstring
    does, with shell quoting and an OptionError that says where to find the options)."""
    from IPython.core.error import UsageError  # here: the command line needs no IPython

    parser = magic.parser  # type: ignore[attr-defined]
    label = ("%%" if cell else "%") + parser.prog
    words = split(line, label)
    try:
        return parser.parse_args(words)
    except UsageError as exc:
        message = f"{label}: {clipped(str(exc), 300)}. {label}? lists the options."
        if "expected" in str(exc):  # argparse took a value starting with '-' for an option
            message += (" A value that starts with '-' goes in as --option=value "
                        "(./-name for a file).")
        raise OptionError(message) from None


def task_options(args: argparse.Namespace) -> TaskOptions:
    """What a parsed `%%remote` line asks for, checked before anything is prepared: a value
    refused here costs nothing, the same value refused by the host costs a staged task."""
    return TaskOptions(inputs=_names("-i", args.inputs or ""),
                       outputs=_names("-o", args.outputs) if args.outputs is not None else None,
                       resources=resources(args), name=_label(args.name), rerun=args.rerun,
                       nowait=args.nowait, files=_file_names(args.files),
                       collect=collect_patterns(args.collect))


def resources(args: argparse.Namespace) -> dict[str, Any]:
    """The resource options given (--walltime, --cores, ...), checked."""
    return check_resources({k: getattr(args, k) for k in RESOURCES
                            if getattr(args, k, None) is not None})


def _names(option: str, value: str) -> list[str]:
    """The comma-separated variable names of -i or -o; anything else could never match."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    wrong = [n for n in names if not n.isidentifier()]
    if wrong:
        raise OptionError(f"{option} {echo(wrong[0])} is not a Python variable name: give "
                          f"names separated by commas, as in {option} a,b.")
    if option == "-o" and not names:
        raise OptionError("-o names no variable: give the names to bring back, as in -o a,b, "
                          "or leave -o out to bring back every name the cell assigns.")
    return names


def _label(name: str | None) -> str | None:
    """A --name is shown in one row of a table and one line of text: it must fit there."""
    if name is None:
        return None
    if not name.strip() or len(name) > MAX_LABEL or any(
            unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        raise OptionError(f"--name {echo(name)}: a name is one line of up to {MAX_LABEL} "
                          "printable characters (it labels the task in status tables).")
    return name


def _file_names(names: list[str]) -> list[str]:
    """--files entries that could name a file at all (whether they exist is checked later)."""
    for name in names:
        if not name:  # Path("") is ".": the whole notebook folder, which nobody meant
            raise OptionError("--files got an empty name (quotes with nothing between them). "
                              "Name a file or folder; '.' is the whole notebook folder.")
        if "\0" in name:
            raise OptionError(f"--files {echo(name)}: a file name cannot contain a NUL "
                              "character.")
    return list(names)


def id_prefix(text: str) -> str:
    """A task id or prefix as typed, refused before the store is asked if it cannot be one
    (the refusal repeats it only in part: it may be anything at all)."""
    prefix = text.strip().lower()
    if not prefix or len(prefix) > MAX_TASK_ID or not set(prefix) <= _HEX:
        raise TaskNotFoundError(
            f"{echo(text, 40)} is not a task id: ids are hexadecimal (any unique prefix of "
            "one will do), and %remote_status --all lists them.")
    return prefix


_MAP = re.compile(r"(?:^|(?<=\s))--map(?:=|\s+)")
_NAME = re.compile(r"\s*([A-Za-z_]\w*)\s*=")
_OPTION_AHEAD = re.compile(r"\s+(?=--?[A-Za-z])|\s*$")


def take_maps(line: str) -> tuple[str, list[tuple[str, str]]]:
    """The `--map NAME=EXPR` options of a `%%remote` line, and the line without them.

    EXPR is Python, not shell words: `--map x=[0.1, 0.01]` must not be split at its spaces
    or lose its quotes. So each one is taken out before the line is split: up to the first
    point from which the rest of the line is another option (or nothing) and the part before
    it is a whole expression. A quoted `--map 'NAME=EXPR'` works as well."""
    maps: list[tuple[str, str]] = []
    rest = []
    at = 0
    while (found := _MAP.search(line, at)) is not None:
        rest.append(line[at:found.start()])
        at = found.end()
        if at < len(line) and line[at] in "'\"":  # quoted whole: one shell word
            lexer = shlex.shlex(line[at:], posix=True)
            lexer.whitespace_split = True
            lexer.commenters = ""
            try:
                word = lexer.get_token() or ""
            except ValueError:
                raise OptionError(f"%%remote: {_unsplittable(line[at:])}") from None
            consumed = len(line[at:]) - len(lexer.instream.read())
            at += consumed
            name, sep, expr = word.partition("=")
            if not sep or not name.strip().isidentifier():
                raise OptionError(f"--map {echo(word, 60)}: write NAME=EXPR, e.g. "
                                  "--map seed=range(10)")
            maps.append((name.strip(), expr.strip()))
            continue
        named = _NAME.match(line, at)
        if named is None:
            raise OptionError(f"--map {echo(line[at:], 60)}: write NAME=EXPR, e.g. "
                              "--map seed=range(10)")
        start = named.end()
        for end in (m.start() for m in _OPTION_AHEAD.finditer(line, start)):
            expr = line[start:end].strip()
            if expr and _compiles(expr):
                maps.append((named.group(1), expr))
                at = end
                break
        else:
            raise OptionError(f"--map {named.group(1)}={echo(line[start:].strip(), 60)}: not "
                              "a Python expression (a sequence of values such as range(10) "
                              "or [0.1, 0.01] was expected)")
    rest.append(line[at:])
    return "".join(rest), maps


def _compiles(expr: str) -> bool:
    try:
        compile(expr, "<--map>", "eval")
    except (SyntaxError, ValueError):
        return False
    return True
