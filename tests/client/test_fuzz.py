"""Property-based fuzzing (Hypothesis) of everything a user types or writes that we parse.

Magic lines go through the very functions the magics call (`arguments.parse`, `task_options`,
`id_prefix`), without a kernel; hosts files through `parse_config`; task ids through a real task
store; `--files` and `--collect` names through planning, staging on this machine, and both
globbers. The rule checked on every example is the one the magics promise: it works, or it is
refused with one short paragraph (a RemoteMagicError, which the notebook shows as its message),
and nothing is written outside its place.

The examples are fixed (`derandomize`) and few, so the whole module stays within ~30 s of the
suite's budget; set REMOTE_MAGIC_FUZZ=20 (a factor) to search longer and at random.
"""

from __future__ import annotations

import glob
import os
import shlex
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from remote_magic.client.prepare import TaskOptions, plan_files, prepare_cell
from remote_magic.client.store import TaskRecord, TaskStore
from remote_magic.config.checks import NAME_MAX, RESOURCE_KEYS, collect_patterns
from remote_magic.config.hosts import HostConfig, parse_config
from remote_magic.errors import ConfigError, RemoteMagicError
from remote_magic.notebook.arguments import id_prefix, parse, split, task_options
from remote_magic.notebook.magics import RemoteMagics
from remote_magic.wire.tempnames import short, temp_beside, temp_prefix

FACTOR = float(os.environ.get("REMOTE_MAGIC_FUZZ", "1"))


def fuzz(examples: int) -> Any:
    """Hypothesis settings for one property: `examples` fixed examples (more, at random, with
    REMOTE_MAGIC_FUZZ), no example database (it would be a folder written into the checkout)."""
    return settings(max_examples=int(examples * FACTOR), derandomize=FACTOR == 1,
                    deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def clean(error: BaseException) -> str:
    """The error is one the notebook shows as a short message: assert so, return it."""
    assert isinstance(error, RemoteMagicError), f"{type(error).__name__}: {error}"
    message = str(error)
    assert message and len(message) < 700, message
    assert "\n\n" not in message and "Traceback" not in message, message
    return message


SHELLISH = string.ascii_letters[:6] + string.digits[:4] + " \t\n'\"\\-=,.:/*?[]{}~#$;&|<>()!@%^"
OPTIONS = ["-q", "--queue", "-i", "--inputs", "-o", "--outputs", "--walltime", "--cores", "--mem",
           "--nodes", "--gpus", "--partition", "--account", "--files", "--collect", "--name",
           "--nowait", "--rerun", "--", "-", "--help"]
VALUES = st.one_of(
    st.text(SHELLISH, max_size=12),
    st.from_regex(r"\A[0-9]{1,12}(-[0-9]{1,3})?(:[0-9]{1,3}){0,3}\Z"),  # times, right or wrong
    st.from_regex(r"\A[0-9]{1,6}(\.[0-9]{1,3})?\s?[kKmMgGtTpPbB]?[iI]?[bB]?\Z"),  # amounts
    st.from_regex(r"\A[a-z*?./~\[\]]{0,10}\Z"),  # names and patterns
    st.integers(-5, 10 ** 20).map(str),
)
WORD_QUOTING = st.sampled_from([lambda w: w, shlex.quote, lambda w: f'"{w}"', lambda w: f"'{w}"])


@st.composite
def option_lines(draw: Any) -> str:
    """A %%remote line made of real options with values right, wrong and odd, quoted or not."""
    words = []
    for _ in range(draw(st.integers(0, 6))):
        words.append(draw(st.sampled_from(OPTIONS)))
        for _ in range(draw(st.integers(0, 2))):
            words.append(draw(WORD_QUOTING)(draw(VALUES)))
    return " ".join(words)


def remote_line(line: str) -> TaskOptions | None:
    """What %%remote makes of `line` before anything is prepared; None if refused cleanly."""
    try:
        options = task_options(parse(RemoteMagics.remote, line, cell=True))
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions
        clean(exc)
        return None
    for pattern in options.collect:  # what reaches the host is already in its checked form
        assert not pattern.startswith(("/", "~")) and ".." not in pattern.split("/")
        assert all(p == "**" or "**" not in p for p in pattern.split("/"))
    assert all(n.isidentifier() for n in options.inputs + (options.outputs or []))
    assert set(options.resources) <= set(RESOURCE_KEYS)
    return options


@fuzz(300)
@given(st.text(SHELLISH, max_size=120))
def test_any_remote_line_is_parsed_or_refused_in_one_paragraph(line: str) -> None:
    remote_line(line)


@fuzz(400)
@given(option_lines())
def test_lines_of_real_options_with_odd_values_are_parsed_or_refused_cleanly(line: str) -> None:
    remote_line(line)


NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                min_size=1, max_size=40)


@fuzz(200)
@given(st.lists(NAMES, min_size=1, max_size=5))
def test_any_file_names_quoted_as_a_shell_quotes_them_arrive_whole(names: list[str]) -> None:
    """Blanks, tabs, newlines, quotes, backslashes: `{shlex.quote(name)}` always works."""
    line = " ".join(shlex.quote(n) for n in names)
    assert split(line, "%%remote") == names
    assume(not any(n.startswith("-") for n in names))
    options = remote_line(f"--files {line} --name fuzz")
    assert options is not None and options.files == names


LINE_MAGICS = [RemoteMagics.remote_status, RemoteMagics.remote_fetch, RemoteMagics.remote_log,
               RemoteMagics.remote_kill, RemoteMagics.remote_purge, RemoteMagics.remote_hosts]


@fuzz(300)
@given(st.sampled_from(LINE_MAGICS), st.text(SHELLISH, max_size=60))
def test_any_line_magic_line_is_parsed_or_refused_in_one_paragraph(magic: Any,
                                                                   line: str) -> None:
    try:
        args = parse(magic, line)
        for value in [*getattr(args, "ids", []), *([args.id] if hasattr(args, "id") else [])]:
            id_prefix(value)
    except Exception as exc:  # noqa: BLE001
        clean(exc)


# ------------------------------------------------------------------------------------------
# Task ids against a real store

KNOWN = ["0123456789abcdef", "0123456789abcd00", "fedcba9876543210"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TaskStore:
    store = TaskStore(tmp_path_factory.mktemp("fuzz-store") / "tasks.sqlite")
    for task in KNOWN:
        store.add(TaskRecord(id=task, content_hash=task * 4, host="localhost"))
    return store


TASK_IDS = st.one_of(
    st.sampled_from(KNOWN).flatmap(lambda t: st.integers(0, 16).map(lambda n: t[:n])),
    st.from_regex(r"\A[0-9a-fA-F ]{0,20}\Z"),
    st.text(SHELLISH + "%_", max_size=40),
    st.sampled_from(["' OR 1=1 --", "%", "_", "0123456789abcdef' --", "f" * 5000,
                     "0123456789ABCDEF", " fedcba "]),
)


@fuzz(300)
@given(TASK_IDS)
def test_a_task_id_finds_its_own_task_or_is_refused_in_one_paragraph(store: TaskStore,
                                                                      text: str) -> None:
    try:
        record = store.resolve(id_prefix(text))
    except Exception as exc:  # noqa: BLE001
        clean(exc)
        matches = [t for t in KNOWN if text.strip() and t.startswith(text.strip().lower())]
        assert len(matches) != 1, f"{text!r} should have found {matches}"
        return
    assert record.id.startswith(text.strip().lower()) and record.id in KNOWN


# ------------------------------------------------------------------------------------------
# Hosts files

KEYS = ["default", "hosts", "address", "port", "scheduler", "resources", "walltime", "mem",
        "cores", "paths", "workdir", "setup", "max_running", "auto_files", "partition", "hpc",
        "localhost", "<<", "x"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 12), st.floats(),
                    st.sampled_from(["slurm", "lsf", "sge", "process", "1:00:00", "0", "1:99",
                                     "4G", "0M", "hpc", "localhost", "me@host", "~/w"]),
                    st.text(max_size=20))
DOCUMENTS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5)),
    max_leaves=25)
YAMLISH = string.ascii_lowercase[:4] + "0123456789 \n\t:-[]{},&*!|>'\"#?<%@`\\"


@st.composite
def aliased_documents(draw: Any) -> str:
    """Anchors and aliases nested and fanned out, under keys a hosts file has."""
    levels = draw(st.integers(1, 12))
    fan = draw(st.integers(1, 12))
    lists = ["&a0 [x]"] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]"
                           for i in range(1, levels)]
    place = draw(st.sampled_from(["default: {}", "hosts: {{hpc: {{address: {}}}}}",
                                  "hosts: {{hpc: {{paths: {{a: {}}}}}}}",
                                  "hosts: {{hpc: {{resources: {{walltime: {}}}}}}}"]))
    return place.format(f"[{', '.join(lists)}]") + "\n"


@fuzz(500)
@given(st.one_of(DOCUMENTS.map(lambda d: yaml.safe_dump(d, default_flow_style=None)),
                 st.text(YAMLISH, max_size=200),
                 aliased_documents()))
def test_any_hosts_file_loads_or_is_refused_in_one_paragraph(text: str) -> None:
    try:
        config = parse_config(text, Path("/fuzz/hosts.yaml"))
    except Exception as exc:  # noqa: BLE001
        assert isinstance(exc, ConfigError), f"{type(exc).__name__}: {exc}"
        assert str(exc).startswith("/fuzz/hosts.yaml: ")
        clean(exc)
        return
    assert config.default in config.hosts and "localhost" in config.hosts
    assert all(isinstance(h, HostConfig) for h in config.hosts.values())


# ------------------------------------------------------------------------------------------
# --files and --collect names, through planning, staging and globbing

FILE_NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                     min_size=1, max_size=60).filter(
    lambda n: n not in (".", "..") and len(n.encode()) <= 200 and not n.startswith("-"))


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A notebook folder, a private data folder, and a host whose workdir is on this machine;
    the working directory and REMOTE_MAGIC_HOME are set for the module and restored."""
    from remote_magic.client.transport.local import LocalTransport

    root = tmp_path_factory.mktemp("fuzz-files")
    notebook, work = root / "notebook", root / "hostwork"
    notebook.mkdir()
    saved_cwd, saved_home = os.getcwd(), os.environ.get("REMOTE_MAGIC_HOME")
    os.chdir(notebook)
    os.environ["REMOTE_MAGIC_HOME"] = str(root / "data")
    transport = LocalTransport(HostConfig("here", workdir=str(work)), lambda event: None)
    try:
        yield {"root": root, "notebook": notebook, "work": work, "transport": transport,
               "far": HostConfig("far", address="me@far.example", workdir="/w")}
    finally:
        transport.close()
        os.chdir(saved_cwd)
        if saved_home is None:
            os.environ.pop("REMOTE_MAGIC_HOME", None)
        else:
            os.environ["REMOTE_MAGIC_HOME"] = saved_home


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@fuzz(60)
@given(FILE_NAMES)
def test_any_file_name_is_staged_exactly_where_the_task_will_look(places: dict[str, Any],
                                                                  name: str) -> None:
    notebook: Path = places["notebook"]
    (notebook / name).write_bytes(name.encode())
    before = tree(places["root"])
    options = remote_line(f"--files {shlex.quote(name)} --rerun")
    assert options is not None and options.files == [name]
    prepared = prepare_cell("x = 1\n", {}, places["far"], options)  # a host that sees nothing
    try:
        assert prepared.extra == [(notebook / name, f"work/{name}")]
        root = Path(places["transport"].stage(prepared.id, prepared.local_dir, prepared.files,
                                              prepared.extra).root)
    finally:
        prepared.discard()
    assert (root / "work" / name).read_bytes() == name.encode()
    added = tree(places["root"]) - before
    assert all(p.split(os.sep)[0] in ("data", "hostwork") for p in added), added
    half_done = [p for p in added if p.split(os.sep)[-1].startswith((".prepare-", ".stage-"))
                 or p.endswith((".part", ".staging"))]
    assert not half_done, half_done


@fuzz(300)
@given(st.text("ab*?[]!./~\\-\n ", max_size=24))
def test_any_collect_pattern_is_refused_or_matched_inside_the_work_folder(
        places: dict[str, Any], pattern: str) -> None:
    work: Path = places["root"] / "globwork"
    if not work.exists():
        for name in ["a", "b/a", "b/c/ab", ".a", "a b", "[a]", "a*"]:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(name)
    try:
        tidy = collect_patterns([pattern])
    except Exception as exc:  # noqa: BLE001
        clean(exc)
        return
    assert len(tidy) == 1
    found = [*work.glob(tidy[0]), *map(Path, glob.glob(str(work / tidy[0]), recursive=True))]
    for match in found:
        assert match.resolve().is_relative_to(work.resolve()), match


@fuzz(200)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
               min_size=1, max_size=255).filter(lambda n: len(n.encode()) <= NAME_MAX))
def test_a_temporary_name_is_a_legal_name_whatever_the_targets_length(name: str) -> None:
    """A 254-character file name could not be staged: its temporary name was too long."""
    target = Path("/somewhere") / name
    for temp in (temp_beside(target, f"{os.getpid()}.0123abcd.part").name,
                 temp_prefix(target) + "x" * 8):
        assert len(temp.encode()) <= NAME_MAX
        assert temp.startswith("." + short(name)) and name.startswith(short(name))


def test_the_files_planner_refuses_what_cannot_be_a_file(places: dict[str, Any]) -> None:
    """Names that escaped as internal errors (a NUL byte: ValueError from stat; a name longer
    than any file system allows: ENAMETOOLONG), and a blank one, which meant the whole folder."""
    for spec in ["a\0b", "x" * 256, "d/" * 2100, "   "]:
        with pytest.raises(RemoteMagicError) as info:
            plan_files([spec], places["far"], places["notebook"])
        clean(info.value)
