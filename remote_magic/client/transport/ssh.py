"""The transport for hosts behind SSH: one connection, a resident agent, bulk transfers.

Every request goes to an agent started once per connection in a login shell (after the
host's `setup` lines), so a poll costs a message on an open channel, not a remote shell.
Large files go through a second agent on a channel of their own, streamed in chunks, so a
1 GiB upload never holds up the status of other tasks. When the connection drops it is opened
again on the next request; tasks run on, detached, on the host meanwhile. While the host stays
unreachable, attempts to reconnect back off (see `Reconnect`), so that a down host is not
hammered by every poll, view and callback of the kernel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import paramiko

from ...config.hosts import HostConfig
from ...errors import AgentStartError, AuthenticationError, HostKeyError, TransportError
from ...wire.diskwrite import write_all
from ...wire.protocol import MARKER
from ...wire.serialization import Pickled
from ...wire.taskdir import RESULT_FILES, TaskPaths, task_path, valid_task_id, workdir_message
from ...wire.tempnames import temp_prefix
from ..agent_client import AgentClient
from ..fingerprint import named, new_digest
from . import Collected, SharedConnections, Staged, collect_found, inline_payload, stage_plan
from .connection import Connection, ask_in_main_thread, connect, target_for
from .follow import Follow
from .oneshot import OneShotAgent
from .openssh import (
    OpenSSHConnection,
    OpenSSHTarget,
    ProcessChannel,
    connect_openssh,
    notable_settings,
    resolve_openssh,
    version,
)
from .runtime import DAMAGED, MISSING, UNSAFE, check_command, runtime_zip, unsafe_problem
from .streams import file_pieces, open_at, ranges, run_parallel, slice_pieces, streams_for

INLINE_MAX = 8 * 1024 * 1024  # files up to this size travel inside one request
HASH_MAX = 64 * 1024 * 1024  # uploads up to this size are checked by hash, larger by size
CHUNK = 4 * 1024 * 1024
KEPT_MAX = 64  # tasks whose pushed result files are kept, waiting to be loaded
FOLLOW_INPUTS = 64 * 1024 * 1024  # a task sent this many bytes has its outputs followed
NO_COMMAND = (126, 127)  # the shell's exit status when a program is missing or not executable
START_TIMEOUT = 60.0  # a login shell on a busy login node can be slow
RECONNECT_FIRST = 0.5  # seconds to wait after the first failed attempt to connect
RECONNECT_MAX = 30.0  # the wait doubles after each further failure, up to this

log = logging.getLogger(__name__)


class Reconnect:
    """When the next attempt to connect to a host may be made.

    Every failure doubles the wait (RECONNECT_FIRST, then twice that, up to RECONNECT_MAX);
    a success forgets them all, so a connection that drops later is reopened at once. Only
    the kernel's background threads (session polls, live views, result callbacks) are held to
    the schedule; between attempts they fail at once, saying when the next one is. A request
    from the main thread is something the user just ran (a cell, a magic, the command line):
    it tries at once, since the user may have just fixed the network and is there to see the
    answer; its failure counts like any other.
    """

    def __init__(self, first: float = RECONNECT_FIRST, cap: float = RECONNECT_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.first, self.cap = first, cap
        self.clock = clock  # a test's own clock: the schedule without the waiting
        self.failures = 0
        self.error = ""
        self._next = 0.0

    def delay(self) -> float:
        """Seconds until the next attempt is due (0: now)."""
        return max(0.0, self._next - self.clock()) if self.failures else 0.0

    def check(self, name: str) -> None:
        """Raise TransportError if a background thread asks before the next attempt is due."""
        wait = self.delay()
        if wait <= 0 or threading.current_thread() is threading.main_thread():
            return
        attempts = "attempt" if self.failures == 1 else f"{self.failures} attempts in a row"
        raise TransportError(
            f"{name} is unreachable ({self.error}); the last {attempts} to connect failed, "
            f"the next one is in {wait:.1f} s. Tasks on the host run on meanwhile; any "
            "%remote command tries at once.")

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.error = str(exc)
        # the exponent stops growing long before it matters: 2 ** 1024 is no float
        doubled = self.first * 2 ** min(self.failures - 1, 60)
        self._next = self.clock() + min(self.cap, doubled)

    def succeeded(self) -> None:
        self.failures, self.error, self._next = 0, "", 0.0


class SSHTransport:
    def __init__(self, host: HostConfig, on_event: Callable[[dict[str, Any]], None],
                 shared: SharedConnections | None = None) -> None:
        self.host = host
        self._shared = shared if shared is not None else SharedConnections()
        self._on_event = on_event
        self.openssh = host.transport == "openssh"
        self.target = resolve_openssh(host) if self.openssh else target_for(host)
        self.python = host.python or "python3"
        self._conn: Connection | OpenSSHConnection | None = None
        self._agent: AgentClient | OneShotAgent | None = None
        self.fallback: str | None = None  # why the resident agent could not be used
        self._where: dict[str, str] = {}  # the agent's absolute workdir and home
        self._data: dict[int, AgentClient] = {}  # transfer agents: one per parallel stream
        self._data_locks: dict[int, threading.Lock] = {}  # each starts on its own
        self._streams = 1  # parallel streams that fill the link (see streams.py)
        self._rtt = 0.0  # seconds: a request's round trip, measured as the first starts
        self._spare: AgentClient | None = None  # follows outputs as they are written
        self._follows: dict[str, Follow] = {}  # by task, until its results are read
        self._following = False  # the spare agent is busy with one of them
        self._lock = threading.RLock()
        # result files the agent pushed with a task's end (its events come from the reader)
        self._kept: dict[str, tuple[list[dict[str, Any]], bytes]] = {}
        self._kept_lock = threading.Lock()
        self.notes: list[str] = []  # what happened that `remote-magic test` should say
        self.reconnect = Reconnect()

    # ------------------------------------------------------------ connection and agents

    def connection(self) -> Connection | OpenSSHConnection:
        """The open connection, opened (again) if needed, as `Reconnect` allows."""
        with self._lock:
            if self._conn is not None and self._conn.alive:
                return self._conn
            if self._conn is not None:
                self._shared.release(self.target, self, self._conn)
                self._conn = None
            self._conn = self._shared.get(self.target, self)
            if self._conn is not None:
                return self._conn
            self.reconnect.check(self.host.name)
            try:
                if isinstance(self.target, OpenSSHTarget):
                    self._conn = connect_openssh(self.target, ask_in_main_thread)
                else:
                    self._conn = connect(self.target)
            except TransportError as exc:
                self.reconnect.failed(exc)
                raise
            self.reconnect.succeeded()
            self._shared.add(self.target, self, self._conn)
            said = self._transport_notes(self._conn)
            self.notes.extend(n for n in said if n not in self.notes)
            return self._conn

    def _transport_notes(self, conn: Connection | OpenSSHConnection) -> list[str]:
        """How the host was reached, for `remote-magic test`."""
        target = self.target
        if isinstance(conn, OpenSSHConnection):
            config = target.config_file if isinstance(target, OpenSSHTarget) and \
                target.config_file else "~/.ssh/config and /etc/ssh/ssh_config"
            said = [f"transport: openssh ({version()}); all of {config} applied by OpenSSH "
                    "itself"]
            notable = notable_settings(target) if isinstance(target, OpenSSHTarget) else []
            if notable:
                said.append(f"OpenSSH's settings for it include: {', '.join(notable)}")
            said.append(f"on your open master connection {conn.control}: no new login"
                        if conn.folder is None else
                        f"its own master connection for this kernel ({conn.control})")
        else:
            said = ["transport: paramiko" + (f"; applied from ~/.ssh/config: "
                                             f"{', '.join(target.applied)}"
                                             if target.applied else "")]
            if target.unapplied:
                said.append(f"~/.ssh/config options that the paramiko transport leaves "
                            f"aside: {', '.join(target.unapplied)} (each kernel opens one "
                            "connection of its own; 'transport: openssh' applies them)")
        if target.proxy_command:
            said.append(f"through its ProxyCommand ({target.proxy_command})")
        return said

    def retry_delay(self) -> float:
        """Seconds until the next attempt to connect is due: the session waits that long
        after a failed poll, so that its polls and the reconnect schedule are one back-off.
        Not under the lock: that is held for as long as another thread is connecting."""
        return self.reconnect.delay()

    def agent(self) -> AgentClient | OneShotAgent:
        """The resident agent, started on first use and again after a dropped connection;
        where it cannot run, the one-command-per-request fallback."""
        with self._lock:
            if self._agent is None or not self._agent.alive:
                if self.fallback is None:
                    try:
                        self._agent = self._start_agent(self._on_event, "")
                    except AgentStartError as exc:
                        self._agent = self._one_shot(str(exc))
                else:
                    self._agent = self._one_shot(self.fallback)
            if not self._where:
                self._where = self._agent.request("hello")
            return self._agent

    def _one_shot(self, reason: str) -> OneShotAgent:
        agent = OneShotAgent(self.connection, self._agent_command(once=True), self.host.name)
        try:
            agent.request("hello")
        except TransportError as exc:
            raise AgentStartError(f"{reason}; running the agent once per request failed too: "
                                  f"{exc}") from exc
        if self.fallback is None:
            self.fallback = reason
        return agent

    def remote_path(self, path: str) -> str:
        """An absolute path on the host, for whole-file copies: relative paths are under the
        workdir."""
        self.agent()
        if path.startswith("/"):
            return path
        if path.startswith("~/"):
            return f"{self._where['home']}/{path[2:]}"
        return f"{self._where['workdir']}/{path}"

    def data_agent(self, index: int = 0) -> AgentClient:
        """The transfer agent of parallel stream `index` (0: of every transfer), started on
        first use; the first one also measures the link (how many streams fill it)."""
        with self._lock:
            lock = self._data_locks.setdefault(index, threading.Lock())
        with lock:
            agent = self._data.get(index)
            if agent is None or not agent.alive:
                agent = self._start_agent(lambda event: None, " (transfers" + (
                    f" {index + 1})" if index else ")"), bulk=True)
                if index == 0:
                    self._rtt = _round_trip(agent)
                    self._streams = streams_for(self._rtt)
                self._data[index] = agent
            return agent

    def streams(self) -> int:
        """How many parallel streams a large transfer to this host takes (streams.py)."""
        self.data_agent()
        return self._streams

    def spare_agent(self) -> AgentClient:
        """A third agent, for requests that wait on the host for long (follow.py)."""
        with self._lock:
            if self._spare is None or not self._spare.alive:
                self._spare = self._start_agent(lambda event: None, " (follows)", bulk=True)
            return self._spare

    def _start_agent(self, on_event: Callable[[dict[str, Any]], None],
                     role: str, bulk: bool = False) -> AgentClient:
        conn = self.connection()
        command = self._agent_command(cold=bulk)  # a bulk agent starts no task
        channel = conn.open_exec(command, bulk)
        status, text, leftover = _await_marker(channel)
        if status in (MISSING, DAMAGED):  # a fresh host (or a damaged copy): ship, try again
            self.setup()
            channel = conn.open_exec(command, bulk)
            status, text, leftover = _await_marker(channel)
        if status is None:
            return AgentClient(_SSHChannel(channel, leftover), on_event, self.host.name + role,
                               host=self.host.name)
        if status == UNSAFE:
            raise TransportError(self._unsafe(text))
        if status in (MISSING, DAMAGED):
            raise TransportError(self._not_shipped())
        log = conn.run(f"tail -n 5 {shell_path(self.host.workdir)}/agent.log")[1]
        said = (text.strip() or log.strip())[-800:] or "no output"
        if status in NO_COMMAND:  # not worth the fallback: it needs the same Python
            raise TransportError(self._no_python(said))
        raise AgentStartError(f"The agent on {self.host.name} did not start (exit status "
                              f"{status}): {said}. `remote-magic test {self.host.name}` checks "
                              "the host step by step.")

    def login_shell(self, script: str) -> str:
        """A command running `script` in a login shell after the host's setup lines, so that
        `module load` and conda activation work as they do for the user."""
        return f"bash -l -c {shlex.quote(self.host.setup + chr(10) + script)}"

    def _agent_command(self, once: bool = False, cold: bool = False) -> str:
        """Check the work directory and the runtime (`check_command`), then run the agent
        from the runtime. Nothing is written into the work directory before the check (not
        even the agent's log): a link planted there could point anywhere. A `cold` agent
        keeps no warm runner (one that only moves files would keep it for nothing)."""
        name, _ = runtime_zip()
        script = "\n".join([
            f"W={shell_path(self.host.workdir)}",
            f'R="$W/runtime/{name}"',
            f'[ -f "$R" ] || exit {MISSING}',  # a fresh host: ship first (Python or not)
            f'{check_command(self.python, chr(34) + "$W" + chr(34))} || exit $?',
            '( umask 077 && : >>"$W/agent.log" )',  # private whatever the login's umask
            'export PYTHONPATH="$R${PYTHONPATH:+:$PYTHONPATH}"',
            # debug records here: the agent's too, in its log on the host
            *(["export REMOTE_MAGIC_DEBUG=1"]
              if logging.getLogger("remote_magic").isEnabledFor(logging.DEBUG) else []),
            f'exec {shlex.quote(self.python)} -m remote_magic.host.agent --workdir "$W" '
            + ("--once " if once else "") + ("" if self.host.warm and not cold else "--cold ")
            + (f"--allocation {shlex.quote(self.host.allocation)} " if self.host.allocation
               else "")
            + '2>>"$W/agent.log"',
        ])
        return self.login_shell(script)

    def setup(self) -> str:
        """Ship the runtime into the host's work directory and check that it imports.

        A missing work directory is made private (0700). The upload needs no Python on the
        host, and goes to a fresh file created exclusively (so a link planted under its name
        is not followed), renamed over the runtime's name; nothing runs before the check has
        found the work directory and the runtime to be the user's alone, with the content
        hash this kernel built.
        """
        name, data = runtime_zip()
        conn = self.connection()
        workdir = shell_path(self.host.workdir)
        code, out, err = conn.run(self.login_shell(
            f"umask 077 && mkdir -p {workdir}/runtime && cd {workdir}/runtime && pwd -P"))
        if code != 0:
            raise TransportError(f"Cannot create the work directory {self.host.workdir} on "
                                 f"{self.host.name}: {err.strip() or out.strip()}. Set "
                                 "'workdir:' to a writable place.")
        runtime_dir = out.strip().splitlines()[-1]
        conn.install(runtime_dir, name, data)
        imports = (f"import sys; sys.path.insert(0, {runtime_dir + '/' + name!r}); "
                   "import remote_magic.host.agent, cloudpickle; print(sys.version.split()[0])")
        code, out, err = conn.run(self.login_shell(
            f"{check_command(self.python, workdir)} && "
            f"{shlex.quote(self.python)} -c {shlex.quote(imports)}"))
        if code == UNSAFE:
            raise TransportError(self._unsafe(out))
        if code in (MISSING, DAMAGED):
            raise TransportError(self._not_shipped())
        if code in NO_COMMAND:
            raise TransportError(self._no_python(err.strip()[-500:]))
        if code != 0:
            raise TransportError(f"The runtime was copied to {self.host.name} but does not "
                                 f"import with {self.python}: {err.strip()[-500:]}")
        self.notes.append(f"shipped the runtime {name} ({len(data) // 1024} KiB)")
        return out.strip()

    def _unsafe(self, output: str) -> str:
        """The refusal for a work directory (or runtime) another user could have written."""
        problem = unsafe_problem(output)
        if problem is None:
            return (f"The work directory {self.host.workdir} on {self.host.name} could not be "
                    f"checked: {output.strip()[-300:] or 'no output'}.")
        return workdir_message(problem, self.host.name)

    def _not_shipped(self) -> str:
        return (f"The runtime shipped to {self.host.name} does not have the content this "
                "kernel sent (its SHA-256 differs), so it is not run. Something on the host "
                f"changes files in {self.host.workdir}/runtime: remove that directory and run "
                f"`remote-magic setup {self.host.name}`; if it happens again, ask the host's "
                "administrators.")

    def _no_python(self, said: str) -> str:
        """What to do about a host where the configured Python does not run at all."""
        ours = "{}.{}".format(*sys.version_info[:2])
        return (f"There is no usable Python on {self.host.name}: '{self.python}' does not run "
                f"there ({said}). Tasks are Python, so they cannot run on this host until it "
                f"has one: set 'python:' for it in the hosts file to the path of a Python "
                f"{ours} there (such as a conda environment's bin/python), or add the "
                f"'setup:' lines that provide one (such as module load python/{ours}). "
                f"`remote-magic test {self.host.name}` checks each step.")

    def checks(self) -> Iterator[tuple[str, bool | None, str]]:
        """`remote-magic test`: each step with what it found (ok True, False, or None for a
        warning); stops at the first failure."""
        target = self.target
        if target.proxy_jump is None and target.proxy_command is None:
            try:
                socket.create_connection((target.hostname, target.port), 10).close()
            except OSError as exc:
                yield "TCP reachable", False, (
                    f"{target.hostname}:{target.port}: {exc}. Check 'address:' and 'port:' "
                    f"of {self.host.name} in the hosts file (or its entry in ~/.ssh/config), "
                    "that the host is up and runs sshd, and that a VPN or firewall lets you "
                    "through.")
                return
            yield "TCP reachable", True, f"{target.hostname}:{target.port}"
        try:
            conn = self.connection()
        except HostKeyError as exc:
            yield "host key known", False, str(exc)
            return
        except AuthenticationError as exc:
            yield "host key known", True, f"{target.key_name} in {target.known_hosts}"
            yield "authenticated", False, str(exc)
            return
        except TransportError as exc:
            yield "SSH connection", False, str(exc)
            return
        yield "host key known", True, conn.host_key or f"{target.key_name} in {target.known_hosts}"
        if conn.skipped:  # OpenSSH skips them too; worth knowing, not worth failing for
            shown = "; ".join(str(s) for s in conn.skipped[:5])
            more = f" (and {len(conn.skipped) - 5} more)" if len(conn.skipped) > 5 else ""
            yield "known_hosts lines skipped", None, (
                f"{shown}{more}. They were ignored, as OpenSSH ignores them; fix or remove them "
                "if they were meant for a host.")
        yield "authenticated", True, f"as {target.user} by {', '.join(conn.methods)}"
        yield from self._shell_checks(conn)

    def _shell_checks(self, conn: Connection) -> Iterator[tuple[str, bool | None, str]]:
        """The steps after login, each of which needs the one before."""
        name = self.host.name
        code, out, err = conn.run(self.login_shell("echo ok"))
        said = err.strip()[-300:]
        if code != 0 or not out.strip().endswith("ok"):
            yield "login shell works", False, (
                f"bash -l with the host's 'setup:' lines exited {code}"
                + (f": {said}" if said else " without saying why")
                + ". Every command runs in that shell, so nothing can run until it works: fix "
                "the 'setup:' lines of this host (a line that exits or fails), or what "
                "~/.bash_profile, ~/.profile or ~/.bashrc run on the host; `ssh HOST bash -l "
                "-c 'echo ok'` shows the same.")
            return
        if said:  # it ran to the end, but a setup line or a startup file complained
            yield "login shell works", None, (
                f"bash -l and the 'setup:' lines run, but print errors: {said}. A setup "
                "line that fails (a module that does not load, an environment that does not "
                "activate) leaves the tasks without what it should provide: check those "
                "lines on the host.")
        else:
            yield "login shell works", True, "bash -l and the setup lines run"
        probe = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
        code, out, err = conn.run(
            self.login_shell(f"{shlex.quote(self.python)} -c {shlex.quote(probe)}"))
        ours = "{}.{}".format(*sys.version_info[:2])
        provide = (f"set 'python:' for {name} in the hosts file to the path of a Python {ours} "
                   f"on the host (such as a conda environment's bin/python), or add the "
                   f"'setup:' lines that provide one (such as module load python/{ours})")
        theirs = out.strip().splitlines()[-1] if out.strip() else ""
        if code != 0 or theirs.count(".") != 2:
            yield "remote Python", False, (
                f"'{self.python}' does not run there (exit status {code}: "
                f"{err.strip()[-300:] or out.strip()[-300:] or 'no output'}). Tasks cannot run "
                f"on this host without a Python {ours}: {provide}.")
            return
        same = theirs.rsplit(".", 1)[0] == ours
        yield "remote Python", same, f"{self.python} is {theirs}, the kernel {ours}" + (
            "" if same else f"; pickled data does not cross Python versions reliably, so "
                            f"{provide}")
        if not same:
            return
        workdir = shell_path(self.host.workdir)
        probe_file = f"{workdir}/.write-test-{os.getpid()}"
        code, out, err = conn.run(self.login_shell(
            f"{check_command(self.python, workdir)}; [ $? -eq {UNSAFE} ] && exit {UNSAFE}; "
            f"touch {probe_file} && rm {probe_file}"))
        if code == UNSAFE:
            yield "work directory private", False, self._unsafe(out)
            return
        if code != 0:
            yield "work directory writable", False, (
                f"{self.host.workdir}: {err.strip()[-300:] or f'exit status {code}'}. Task "
                f"directories go there: set 'workdir:' for {name} to a directory you can "
                "create and write on the host (the default is ~/.remote_magic).")
            return
        yield "work directory writable", True, f"{self.host.workdir}"
        runtime, _ = runtime_zip()
        code, out, err = conn.run(f"test -f {workdir}/runtime/{runtime} && echo present")
        if "present" not in out:
            self.notes.append(f"the runtime was not on the host yet ({runtime})")
        try:  # starting the agent ships a missing runtime
            info = self.agent().request("hello")
        except TransportError as exc:
            yield "runtime importable", False, str(exc)
            return
        yield "runtime importable", True, f"{runtime}"
        if self.fallback is None:
            streams = self.streams()
            yield "agent mode", True, (
                f"resident agent (pid {info['pid']}): every request is a message on an open "
                f"channel (a round trip: {self._rtt * 1000:.1f} ms), files stream over a "
                "second one" + (f", large ones over {streams} at once (a distant host)"
                                if streams > 1 else ""))
        else:
            yield "agent mode", None, (
                "fallback: one remote command per request (a login shell start each, for "
                "every poll too) and files by "
                + ("copies in sessions" if self.openssh else "SFTP")
                + "; it works, slowly. The resident agent "
                f"cannot run because: {self.fallback}")

    # ------------------------------------------------------------ files

    def stage(self, task_id: str, source: Path, names: list[str],
              extra: list[tuple[Path, str]] = (), start: bool = False,
              streams: Mapping[str, Pickled] | None = None) -> Staged:
        """Send a task's files: small ones in one request, large ones (and `streams`, files
        made in memory) streamed after it, all into a staging directory that the agent puts
        in place once everything arrived.

        If the identical task is already on the host (another kernel sent it at the same
        time, or it completed), nothing is sent: the task's start attaches to it.
        """
        streams = dict(streams or {})
        small, files, payload = inline_payload(source, names, INLINE_MAX)
        inside, outside, size = stage_plan(source, names, extra)
        size += sum(stream.size for stream in streams.values())
        whole = not outside and not streams and all(name in small for _, name in inside)
        answer = self.agent().call(
            "stage", {"task": valid_task_id(task_id), "files": files, "size": size,
                      "commit": whole, "start": start and whole, "push": True}, payload)[0]
        if answer.get("existing") or whole:
            return Staged(answer["root"], answer.get("started"))
        staging = answer["staging"]
        follow = self._follow(task_id, source) if size >= FOLLOW_INPUTS else None
        try:
            for local, name in inside:
                if name not in small:
                    self.upload(local, f"{staging}/{name}")
            for name, stream in streams.items():
                self.send_stream(stream, f"{staging}/{name}")
            for local, destination in outside:
                self.upload(local, destination)
            staged = Staged(self.agent().request("commit", task=task_id, staging=staging)["root"])
            if follow is not None:
                follow.go()
            return staged
        except BaseException:
            if follow is not None:
                self._drop_follow(task_id)
            try:  # the agent also removes it when it exits, or the next one when stale
                self.agent().request("unstage", task=task_id, staging=staging, timeout=10)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise

    def share(self, local: Path, name: str) -> None:
        """Send inputs that the elements of a sweep share, once, into the host's `shared`
        folder (verified on arrival, put in place whole)."""
        self.upload(local, f"shared/{name}")

    def upload(self, local: Path, remote: str) -> int:
        """Stream a file to the host; it appears there whole and verified, or not at all."""
        if self.fallback is not None:
            return self.connection().put_file(local, self.remote_path(remote))
        size = local.stat().st_size
        digest = hashlib.sha256() if size <= HASH_MAX else None
        return self._send(lambda offset, length: file_pieces(local, offset, length, CHUNK),
                          size, remote, digest)

    def send_stream(self, stream: Pickled, remote: str) -> int:
        """Send a file made in memory (a task's pickled inputs) as `remote`, whole and
        verified or not at all, hashing what goes out: if it is not what the task's id was
        made from (a caller changed an argument after submitting it, before it was sent),
        the upload fails rather than a task run on other inputs than its id says."""
        if self.fallback is not None:
            with tempfile.TemporaryDirectory() as folder:
                stream.write(Path(folder) / "stream", digest=False)
                return self.connection().put_file(Path(folder) / "stream",
                                                  self.remote_path(remote))
        digest = new_digest()
        # The host checks the size; what was sent is checked here, against the inputs' name.
        sent = self._send(lambda offset, length: slice_pieces(stream.chunks(), offset, length,
                                                              CHUNK),
                          stream.size, remote, digest, verify=False)
        if named(digest) != stream.digest:
            raise TransportError(
                f"the inputs of a task changed while they were sent to {self.host.name} (an "
                "argument modified after submit() returned, before it was sent): nothing "
                "ran. Submit it again, and leave its arguments alone until its future is "
                "running, or pass a copy.")
        return sent

    def _send(self, read: Callable[[int, int], Iterator[bytes | memoryview]], size: int,
              remote: str, digest: Any, verify: bool | None = None) -> int:
        """Stream `size` bytes (`read(offset, length)` gives a range of them) to the transfer
        agent as the file `remote`, hashing them into `digest` if given; the agent checks the
        hash when `verify` (default: when there is a digest), else the size. A large file
        for a distant host goes in parallel streams (each range checked as the whole is)."""
        verify = digest is not None if verify is None else verify
        parts = self._ranges(size)
        if len(parts) > 1:
            sent = self._send_parts(read, size, remote, parts, verify)
            if digest is not None:  # what was sent, read again: it is still in memory
                for piece in read(0, size):
                    digest.update(piece)
            return sent
        data = self.data_agent()
        handle = data.request("put_open", path=remote, size=size, verify=verify)
        for piece in read(0, size):
            if digest is not None:
                digest.update(piece)
            data.send_oneway("put_chunk", {"handle": handle}, piece)  # type: ignore[arg-type]
        return data.request("put_close", timeout=None, handle=handle,
                            sha256=digest.hexdigest() if verify else None)

    def _send_parts(self, read: Callable[[int, int], Iterator[bytes | memoryview]], size: int,
                    remote: str, parts: list[tuple[int, int]], verify: bool) -> int:
        """Send each range of the file over a transfer agent of its own, into one temporary
        file on the host, which the first agent puts in place once every range is in (with
        `verify`, each range's sha256 is checked there)."""
        first = self.data_agent()
        opened = first.request("put_open", path=remote, size=size, verify=verify,
                               part=list(parts[0]))
        hashes: dict[int, str | None] = {}

        def send(index: int, offset: int, length: int) -> int:
            data = self.data_agent(index)
            handle = opened["handle"] if index == 0 else data.request(
                "put_open", path=remote, size=size, verify=verify, part=[offset, length],
                temp=opened["temp"])
            digest = hashlib.sha256() if verify else None
            for piece in read(offset, length):
                if digest is not None:
                    digest.update(piece)
                data.send_oneway("put_chunk", {"handle": handle},
                                 piece)  # type: ignore[arg-type]
            hashes[index] = digest.hexdigest() if digest is not None else None
            return 0 if index == 0 else data.request("put_close", timeout=None, handle=handle,
                                                     sha256=hashes[index])

        try:
            run_parallel(send, parts, lambda: self._close_streams(len(parts)))
        except BaseException:
            try:  # the other ranges' agents dropped their parts; the first drops the file
                first.request("put_close", timeout=10, handle=opened["handle"], abandon=True)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        first.request("put_close", timeout=None, handle=opened["handle"], sha256=hashes[0])
        return size

    def _ranges(self, size: int) -> list[tuple[int, int]]:
        """The ranges of a transfer of `size` bytes, one per parallel stream whose transfer
        agent is up (they start together). Should the host refuse some (its sshd's
        MaxSessions), the streams it took are all that later transfers ask for."""
        parts = ranges(size, self.streams(), CHUNK)
        if len(parts) == 1:
            return parts

        def start(index: int) -> bool:
            try:
                self.data_agent(index)
            except (TransportError, OSError) as exc:
                log.debug("%s: stream %d has no transfer agent: %s", self.host.name,
                          index + 1, exc)
                return False
            return True

        with ThreadPoolExecutor(len(parts) - 1) as pool:
            up = [True, *pool.map(start, range(1, len(parts)))]
        usable = up.index(False) if False in up else len(up)
        if usable < len(parts):
            self._streams = usable
            parts = ranges(size, usable, CHUNK)
        return parts

    def _close_streams(self, count: int) -> None:
        """End the transfers of parallel streams 1..count-1 at once (their agents go)."""
        for index in range(1, count):
            agent = self._data.get(index)
            if agent is not None:
                agent.close()

    def download(self, remote: str, local: Path, size: int | None = None) -> int:
        """Copy a file from the host, whole or not at all; a large one whose `size` is known
        comes in parallel streams from a distant host."""
        if self.fallback is not None:
            return self.connection().get_file(self.remote_path(remote), local)
        parts = self._ranges(size) if size is not None else [(0, 0)]
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=temp_prefix(local))
        try:
            if len(parts) > 1:
                os.close(fd)
                written = sum(run_parallel(
                    lambda index, offset, length: self._fetch_range(index, remote, tmp, offset,
                                                                    length),
                    parts, lambda: self._close_streams(len(parts))))
            else:
                with os.fdopen(fd, "wb", buffering=0) as f:
                    result, _ = self.data_agent().call("get", {"path": remote}, timeout=None,
                                                       sink=fd)
                    written = f.tell()
                if written != result["size"]:
                    raise TransportError(f"{remote}: received {written} of {result['size']} "
                                         "bytes")
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return written

    def _fetch_range(self, index: int, remote: str, tmp: str, offset: int, length: int) -> int:
        """One stream of a parallel download: its range, into its place in `tmp`."""
        fd = open_at(tmp, offset)
        try:
            result, _ = self.data_agent(index).call(
                "get", {"path": remote, "offset": offset, "length": length}, timeout=None,
                sink=fd)
            written = os.lseek(fd, 0, os.SEEK_CUR) - offset
        finally:
            os.close(fd)
        if written != result["size"] or written != length:
            raise TransportError(f"{remote}: received {written} of the {length} bytes from "
                                 f"byte {offset} (the file has changed on the host)")
        return written

    def _follow(self, task_id: str, local: Path) -> Follow | None:
        """Follow the outputs of a task that was sent a lot (see follow.py), if it runs as
        a process beside the agents and the spare agent is free."""
        if self.host.scheduler != "process" or self.host.allocation or self.fallback or \
                self.streams() > 1:  # far away, the outputs come faster in parallel streams
            return None
        with self._kept_lock:
            if self._following:
                return None
            self._following = True
            follow = self._follows[task_id] = Follow(task_id, local, self.spare_agent,
                                                     INLINE_MAX + 1, self._followed)
            stale = list(self._follows)[:max(0, len(self._follows) - KEPT_MAX)]
        for old in stale:  # the oldest, whose results nobody read
            self._drop_follow(old)
        return follow

    def _followed(self) -> None:
        with self._kept_lock:
            self._following = False

    def _drop_follow(self, task_id: str) -> None:
        with self._kept_lock:
            follow = self._follows.pop(task_id, None)
        if follow is not None:
            follow.cancel()

    def results(self, task_id: str, local: Path) -> TaskPaths:
        """Copy a finished task's result files into `local` (once) and read them there."""
        with self._kept_lock:
            follow = self._follows.pop(task_id, None)
        try:
            return self._results(task_id, local, follow)
        finally:
            if follow is not None:
                follow.cancel()  # not needed, or done

    def _results(self, task_id: str, local: Path, follow: Follow | None) -> TaskPaths:
        paths = TaskPaths(local)
        complete = paths.fetched  # written last: a copy cut short is fetched again
        if complete.exists():
            return paths
        with self._kept_lock:
            kept = self._kept.pop(task_id, None)
        listing, payload = kept or self.agent().call(
            "read", {"task": task_id, "names": list(RESULT_FILES), "inline_max": INLINE_MAX})
        refused = [str(entry.get("name")) for entry in listing
                   if entry.get("name") not in RESULT_FILES]
        if refused or len({entry["name"] for entry in listing}) != len(listing):
            raise TransportError(
                f"{self.host.name} answered the request for task {task_id}'s results with "
                f"file names that are not among them: {', '.join(map(repr, refused))}. They "
                "were refused and nothing was written here. The agent on the host is not the "
                "one this kernel sent: have the host checked before using it again.")
        view = memoryview(payload)
        for entry in listing:
            target = local / entry["name"]
            if entry["inline"]:
                _write_file(target, view[:entry["size"]])
                view = view[entry["size"]:]
            elif follow is None or target != paths.outputs or \
                    not follow.take(target, entry["size"]):
                self.download(f"{task_path(task_id)}/{entry['name']}", target, entry["size"])
        complete.touch()
        return paths

    def keep_results(self, task_id: str, listing: list[dict[str, Any]], payload: bytes) -> None:
        """Keep the pushed files until `results` wants them (the oldest go past KEPT_MAX)."""
        with self._kept_lock:
            self._kept[task_id] = (listing, payload)
            while len(self._kept) > KEPT_MAX:
                self._kept.pop(next(iter(self._kept)))

    def collect(self, task_id: str, patterns: list[str], dest: Path) -> Collected:
        """Copy the matching files back into `dest`; a name that would land outside it (the
        host decides the names) is refused and listed, never written."""
        found = self.agent().request("glob", task=valid_task_id(task_id), patterns=patterns)
        return collect_found(found, patterns, dest, lambda name, target: self.download(
            _in_work(task_id, name), target))

    def sent_inputs(self, task_id: str, target: Path) -> None:
        self.download(f"{task_path(valid_task_id(task_id))}/{TaskPaths('.').inputs.name}",
                      target)

    def fetch(self, task_id: str, name: str, target: Path) -> None:
        self.download(_in_work(task_id, name), target)
        mask = os.umask(0o022)  # the file the cell wrote gets the mode a local write gives it
        os.umask(mask)
        os.chmod(target, 0o666 & ~mask)

    def close(self) -> None:
        with self._kept_lock:
            follows, self._follows = list(self._follows.values()), {}
        for follow in follows:
            follow.cancel()
        with self._lock:
            for agent in (self._agent, *self._data.values(), self._spare):
                if agent is not None:
                    agent.close()
            self._agent = self._spare = None
            self._data = {}
            if self._conn is not None:
                self._shared.release(self.target, self, self._conn)
                self._conn = None


def _round_trip(agent: AgentClient, tries: int = 3) -> float:
    """The shortest of a few request round trips on an open agent: the link's, nearly."""
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        agent.request("hello")
        best = min(best, time.perf_counter() - start)
    return best


def shell_path(path: str) -> str:
    """A remote path for a shell command line: quoted, with `~` left to the remote $HOME."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _write_file(target: Path, data: memoryview) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target))
    with os.fdopen(fd, "wb", buffering=0):
        write_all(fd, data)
    os.replace(tmp, target)


def _await_marker(channel: paramiko.Channel) -> tuple[int | None, str, bytes]:
    """Wait for the agent's marker.

    Returns (None, "", bytes after the marker) once the agent runs, else (exit status, what
    the command printed, b"").
    """
    channel.settimeout(START_TIMEOUT)
    seen = b""
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            data = channel.recv(65536)
            if not data:
                break
            seen += data
            if MARKER in seen:
                channel.settimeout(None)
                return None, "", seen.split(MARKER, 1)[1]
    except OSError as exc:
        raise TransportError(
            f"the agent did not start within {START_TIMEOUT:.0f} s: the login shell on the "
            "host (bash -l, with the host's setup lines) did not finish starting. Check what "
            "~/.bash_profile, ~/.profile or ~/.bashrc run there.") from exc
    err = b""
    while channel.recv_stderr_ready():
        err += channel.recv_stderr(65536)
    status = channel.recv_exit_status()
    channel.close()
    return status, (seen + err).decode(errors="replace"), b""


class _SSHChannel:
    """An agent's stdin/stdout over an SSH channel, as AgentClient wants it."""

    def __init__(self, channel: paramiko.Channel, leftover: bytes) -> None:
        self._channel = channel
        self._leftover = leftover

    def send(self, data: bytes) -> None:
        try:
            # paramiko's sendall re-slices what is left after every 32 KiB packet: a 4 MiB
            # chunk given as bytes would be copied over and over, as a memoryview it is not.
            self._channel.sendall(memoryview(data))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise OSError(str(exc)) from exc

    def recv(self) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        try:
            return self._channel.recv(1 << 20)
        except (OSError, EOFError, paramiko.SSHException):
            return b""

    def splice_to(self, fd: int, count: int) -> int:
        if self._leftover:
            data, self._leftover = self._leftover[:count], self._leftover[count:]
            return write_all(fd, data)
        if isinstance(self._channel, ProcessChannel):
            return self._channel.splice_to(fd, count)
        try:  # a paramiko channel: its bytes are Python's already
            return write_all(fd, self._channel.recv(min(count, 1 << 20)))
        except (OSError, EOFError, paramiko.SSHException):
            return 0

    def close(self) -> None:
        self._channel.close()

    def describe_failure(self) -> str:
        if self._channel.exit_status_ready():
            return f"exit status {self._channel.recv_exit_status()}"
        return "the connection was closed"


def _in_work(task_id: str, name: str) -> str:
    """A file the task wrote, relative to the host's work directory."""
    return (TaskPaths(task_path(task_id)).work / name).as_posix()
