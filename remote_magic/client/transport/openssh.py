"""One connection to a host through the system's OpenSSH client (`transport: openssh`).

Sites set SSH up for OpenSSH: ProxyCommand and ProxyJump chains, Match blocks, certificates,
Kerberos, hardware keys, and master connections that let a 2FA code be typed once a day.
Rather than imitate each, this transport runs `ssh` itself, so all of the user's ssh_config
applies as it does in their terminal, host keys included (StrictHostKeyChecking as they set
it; never loosened here).

One master connection carries everything (ControlMaster): the resident agent, the transfer
agent and every command are sessions multiplexed on it, so a request is a message and a
command a session, never a new login. If the user already has a master open for the host
(their ControlPath), it is used and nobody is asked anything; otherwise one is opened for this
kernel, with a private control socket, and OpenSSH's own questions (password, one-time code,
an unknown host key) reach the user through `askpass.py`. Our master lives on after its last
session only for MASTER_LINGER seconds, so a kernel that dies leaves nothing behind for long.

`OpenSSHConnection` offers what `connection.Connection` offers for paramiko (a session running
a command, a command run to its end, whole files put and got), so `ssh.py` drives both alike.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ...config.hosts import HostConfig
from ...errors import AuthenticationError, HostKeyError, TransportError
from ...wire.diskwrite import splice_into, write_all
from ...wire.protocol import PIPE_SIZE, widen_pipe
from ...wire.tempnames import part_tag, temp_beside, temp_prefix
from .askpass import Askpass, Prompt, Unanswered
from .connection import CONNECT_TIMEOUT, KEEPALIVE, Target

log = logging.getLogger(__name__)
MASTER_LINGER = 60  # seconds our master stays after its last session closed
MASTER_EXIT_WAIT = 3.0  # seconds a closing client waits for its master to go
KEEPALIVE_COUNT = 3  # unanswered keepalives before the master gives the connection up
_PID = re.compile(rb"pid=(\d+)")


@dataclass(frozen=True)
class OpenSSHTarget(Target):
    """A host as OpenSSH will reach it: what `ssh` is given, and what `ssh -G` says it makes
    of it (the fields of Target, for messages, checks and sharing one connection)."""

    destination: str = ""  # the host's address as ssh takes it: alias or user@host
    options: tuple[str, ...] = ()  # from the hosts file: -p, -i, -J, UserKnownHostsFile
    config_file: str | None = None  # -F, only when $HOME is not the account's home
    control_path: str | None = None  # the user's own ControlPath, if they set one
    settings: tuple[tuple[str, str], ...] = ()  # `ssh -G` lines that we look at


def ssh_program() -> str:
    found = shutil.which("ssh")
    if found is None:
        raise TransportError(
            "transport: openssh needs the OpenSSH client program `ssh`, which is not on PATH "
            "here. Install it (Debian/Ubuntu: apt-get install openssh-client), or remove "
            "'transport: openssh' from the host to use the built-in paramiko transport.")
    return found


def user_config_file() -> str | None:
    """The ~/.ssh/config that paramiko reads, for `ssh -F`, when OpenSSH would look
    elsewhere: OpenSSH finds the home through the account database, not $HOME, so a
    redirected $HOME (containers, tests) would otherwise give the two transports different
    configurations. None when they agree (then ssh also reads the system-wide file)."""
    home = os.path.expanduser("~")
    try:
        account_home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        account_home = home
    path = os.path.join(home, ".ssh", "config")
    if os.path.realpath(home) == os.path.realpath(account_home) or not os.path.exists(path):
        return None
    return path


def resolve_openssh(host: HostConfig) -> OpenSSHTarget:
    """What OpenSSH makes of `host` (`ssh -G`: every Match and Host block applied)."""
    assert host.address is not None
    user, _, rest = host.address.rpartition("@")
    alias, _, port_text = rest.partition(":")
    destination = f"{user}@{alias}" if user else alias
    options: list[str] = []
    port = host.port or (int(port_text) if port_text.isdigit() else None)
    if port:
        options += ["-p", str(port)]
    if host.identity_file:
        options += ["-i", os.path.expanduser(host.identity_file)]
    if host.proxy_jump:  # OpenSSH takes no spaces in the list
        options += ["-J", ",".join(hop.strip() for hop in host.proxy_jump.split(","))]
    if host.known_hosts:
        options += ["-o", f"UserKnownHostsFile={os.path.expanduser(host.known_hosts)}"]
    config = user_config_file()
    base = [ssh_program(), *(["-F", config] if config else []), *options]
    try:
        done = subprocess.run([*base, "-G", destination], capture_output=True, text=True,
                              timeout=CONNECT_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TransportError(f"{host.name}: `ssh -G {destination}` failed: {exc}") from exc
    if done.returncode != 0:
        raise TransportError(
            f"{host.name}: OpenSSH cannot read its configuration for {destination}: "
            f"{done.stderr.strip()[-500:] or f'exit status {done.returncode}'}. Fix the line "
            "it names (in ~/.ssh/config or /etc/ssh/ssh_config).")
    found: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        found.setdefault(key.lower(), []).append(value)

    def one(key: str, default: str = "") -> str:
        return found.get(key, [default])[0]

    jump, command = one("proxyjump"), one("proxycommand")
    control = one("controlpath")
    return OpenSSHTarget(
        name=host.name, hostname=one("hostname", alias), port=int(one("port", "22")),
        user=one("user", user), identity_files=tuple(found.get("identityfile", [])),
        proxy_jump=jump if jump not in ("", "none") else None,
        known_hosts=one("userknownhostsfile", "~/.ssh/known_hosts").split()[0],
        proxy_command=command if command not in ("", "none") else None,
        destination=destination, options=tuple(options), config_file=config,
        control_path=control if control not in ("", "none") else None,
        settings=tuple((key, one(key)) for key in (
            "controlmaster", "controlpersist", "stricthostkeychecking", "connecttimeout",
            "serveraliveinterval", "certificatefile", "gssapiauthentication", "batchmode")
            if key in found))


# `ssh -G` settings worth naming in `remote-magic test` when they differ from OpenSSH's
# defaults: how the host is reached and logged in to, as ssh_config(5) spells them
NOTABLE = {"certificatefile": ("CertificateFile", None),
           "controlmaster": ("ControlMaster", "false"),
           "controlpersist": ("ControlPersist", "no"),
           "gssapiauthentication": ("GSSAPIAuthentication", "no"),
           "stricthostkeychecking": ("StrictHostKeyChecking", "ask"),
           "batchmode": ("BatchMode", "no")}


def notable_settings(target: OpenSSHTarget) -> list[str]:
    """OpenSSH's settings for the host that are not its defaults, e.g. `ControlMaster auto`."""
    return [f"{NOTABLE[key][0]} {value}" for key, value in target.settings
            if key in NOTABLE and value != NOTABLE[key][1]]


def _base(target: OpenSSHTarget) -> list[str]:
    config = ["-F", target.config_file] if target.config_file else []
    return [ssh_program(), *config, *target.options]


def version() -> str:
    """`ssh -V`'s first word, such as OpenSSH_9.2p1, for `remote-magic test`."""
    done = subprocess.run([ssh_program(), "-V"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    return (done.stderr or done.stdout).split(",")[0].strip()


def connect_openssh(target: OpenSSHTarget, prompt: Prompt) -> OpenSSHConnection:
    """A connection on the user's open master for the host, or on one opened now."""
    if target.control_path:
        pid = _master_pid(target, target.control_path)
        log.debug("%s: the user's ControlPath %s has %s", target.destination,
                  target.control_path, f"master {pid}" if pid else "no master")
        if pid:
            return OpenSSHConnection(target, target.control_path, pid, None, [
                f"OpenSSH, on your master connection {target.control_path} (no new login)"])
    folder = _master_folder()
    control = str(folder / "master")
    settings = dict(target.settings)
    extra = ["-o", f"ServerAliveInterval={KEEPALIVE}", "-o",
             f"ServerAliveCountMax={KEEPALIVE_COUNT}"] \
        if settings.get("serveraliveinterval", "0") == "0" else []
    if settings.get("connecttimeout", "none") == "none":
        extra += ["-o", f"ConnectTimeout={int(CONNECT_TIMEOUT)}"]
    argv = [*_base(target), "-o", "ControlMaster=yes", "-o", f"ControlPath={control}",
            "-o", f"ControlPersist={MASTER_LINGER}", *extra, "-N", "-T", target.destination]
    askpass = Askpass(folder)
    log.debug("opening an OpenSSH master: %s", " ".join(argv))
    said_to = folder / "master.log"
    try:
        with open(said_to, "wb") as err:
            # A session of its own: no terminal to ask on (questions go to askpass), and a
            # Ctrl-C in a terminal running the CLI does not reach the master.
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=err, env=askpass.environment(),
                                       start_new_session=True)
        try:
            status = askpass.serve(process, prompt)
        except Unanswered as exc:
            raise _unanswered(target, exc) from None
        said = said_to.read_text(errors="replace").strip()
        log.debug("the master's ssh exited %s: %s", status, said[-500:])
        pid = _master_pid(target, control) if status == 0 else None
        if not pid:
            raise _login_failed(target, status, said, askpass.asked)
    except BaseException:
        askpass.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    askpass.close()
    conn = OpenSSHConnection(target, control, pid, folder, ["OpenSSH (its own configuration)"])
    _ours.add(conn)
    return conn


_ours: weakref.WeakSet[OpenSSHConnection] = weakref.WeakSet()


@atexit.register
def _close_ours() -> None:
    """Masters of a process that ends without closing its clients go with it: tasks run on
    on the host, and the next process logs in afresh."""
    for conn in list(_ours):
        conn.close()


def _master_folder() -> Path:
    """A new private folder for a master's socket and askpass, in the user's own folder
    for them (refused if another user could enter it); folders of masters that are gone
    (a kernel that died) are removed on the way."""
    parent = Path(tempfile.gettempdir()) / f"remote-magic-ssh-{os.getuid()}"
    try:
        parent.mkdir(mode=0o700, exist_ok=True)
        info = parent.lstat()
    except OSError as exc:
        raise TransportError(f"cannot make a folder for OpenSSH's control socket: {exc}") \
            from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise TransportError(
            f"{parent} is not a private folder of yours (another user could reach the "
            "connection's control socket through it): remove it, and it is made again.")
    for old in parent.iterdir():
        try:
            stale = not (old / "master").exists() and \
                time.time() - old.stat().st_mtime > MASTER_LINGER
        except OSError:
            continue
        if stale:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=parent))


def _master_pid(target: OpenSSHTarget, control: str) -> int | None:
    """The pid of the master listening at `control`, or None if none answers there."""
    if not os.path.exists(os.path.expanduser(control)) and "%" not in control:
        return None
    try:
        done = subprocess.run([*_base(target), "-o", f"ControlPath={control}", "-O", "check",
                               target.destination], capture_output=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _PID.search(done.stderr + done.stdout)
    return int(match.group(1)) if done.returncode == 0 and match else None


def _unanswered(target: OpenSSHTarget, exc: Unanswered) -> TransportError:
    """The error for a question of OpenSSH that nobody could answer here."""
    where = f"{target.destination} ({target})"
    if "(yes/no" in exc.question:
        return HostKeyError(
            f"OpenSSH does not know the host key of {where} and asks whether to trust it, "
            f"but nobody can answer here ({exc.why}): {exc.question} Compare that fingerprint "
            "with the one the site publishes, then accept it by running "
            f"`ssh {target.destination}` once in a terminal (or add it to known_hosts).")
    return AuthenticationError(
        f"OpenSSH asks for {exc.question!r} to log in to {where}, but nobody can answer here "
        f"({exc.why}). Run it from a notebook cell or a terminal, where the question can be "
        "answered, or open a master connection first (ControlMaster in ~/.ssh/config).")


def _login_failed(target: OpenSSHTarget, status: int | None, said: str,
                  asked: list[str]) -> TransportError:
    """The error for a master that did not come up, by what OpenSSH said."""
    text = said[-1500:].rstrip(".") or f"exit status {status}, nothing said"
    where = f"{target.destination} ({target})"
    if re.search(r"Host key verification failed|HOST IDENTIFICATION HAS CHANGED|"
                 r"host key .* (?:is not known|mismatch)|No \S+ host key is known", said):
        return HostKeyError(
            f"OpenSSH refused the host key of {where}: {text}. The transport leaves host "
            "keys to OpenSSH and your ssh_config: check the key with the host's "
            f"administrators, then run `ssh {target.destination}` once in a terminal to "
            "accept it (or fix known_hosts as the message says).")
    if re.search(r"Permission denied|Too many authentication failures|"
                 r"Authentication failed|no more authentication methods", said):
        questions = f" (asked: {'; '.join(q.strip() for q in asked)})" if asked else ""
        keys = [k for k in target.identity_files if os.path.exists(os.path.expanduser(k))]
        tried = f" Key files it could offer: {', '.join(keys)}." if keys else ""
        return AuthenticationError(
            f"OpenSSH could not log in to {where}{questions}: {text}.{tried} Point "
            "'identity_file' in the hosts file (or IdentityFile in ~/.ssh/config) at a key "
            "the host accepts, or load one into ssh-agent (ssh-add); `ssh "
            f"{target.destination}` in a terminal here uses the same configuration.")
    return TransportError(f"OpenSSH could not connect to {where}: {text}")


@dataclass(eq=False)  # compared by identity: kept in a WeakSet
class OpenSSHConnection:
    """Sessions on one OpenSSH master: ours (`folder` holds its socket) or the user's."""

    target: OpenSSHTarget
    control: str
    pid: int
    folder: Path | None
    methods: list[str] = field(default_factory=list)  # how we got in, for `remote-magic test`
    host_key: str = "checked by OpenSSH, as your ssh_config says"
    skipped: tuple[Any, ...] = ()

    @property
    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return os.path.exists(os.path.expanduser(self.control)) or "%" in self.control

    def argv(self, command: str) -> list[str]:
        """`ssh` running `command` as a session on the master, never logging in by itself
        (BatchMode: were the master gone, it fails rather than asks)."""
        return [*_base(self.target), "-o", f"ControlPath={self.control}", "-o",
                "ControlMaster=no", "-o", "BatchMode=yes", "-T", self.target.destination,
                command]

    def open_exec(self, command: str, bulk: bool = False) -> ProcessChannel:
        """Start `command` in a session of its own (`bulk` is paramiko's concern only: here
        OpenSSH sizes its windows itself)."""
        err = tempfile.TemporaryFile()
        try:
            process = subprocess.Popen(self.argv(command), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=err, bufsize=0,
                                       start_new_session=True)
        except OSError as exc:
            err.close()
            raise TransportError(f"{self.target}: cannot run ssh: {exc}") from exc
        return ProcessChannel(process, err)

    def run(self, command: str, stdin: bytes = b"", timeout: float = 120) -> tuple[int, str, str]:
        status, out, err = self.exchange(command, stdin, timeout)
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def exchange(self, command: str, stdin: bytes = b"",
                 timeout: float | None = 120) -> tuple[int, bytes, bytes]:
        try:
            done = subprocess.run(self.argv(command), input=stdin, capture_output=True,
                                  timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise TransportError(f"{self.target}: '{command[:60]}' took over {timeout} s") \
                from exc
        except OSError as exc:
            raise TransportError(f"{self.target}: cannot run ssh: {exc}") from exc
        return done.returncode, done.stdout, done.stderr

    def install(self, directory: str, name: str, data: bytes) -> None:
        """Write `data` to a fresh file in `directory` (created exclusively, so a link
        planted under its name is not followed) and rename it to `name`."""
        tmp = f".{name}.{part_tag()}"
        script = (f"cd {shlex.quote(directory)} && umask 077 && set -C && "
                  f"{{ cat > {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} "
                  f"{shlex.quote(name)}; }} || {{ rm -f {shlex.quote(tmp)}; exit 1; }}")
        status, _, err = self.exchange(script, data)
        if status != 0:
            raise TransportError(f"{self.target}: cannot write {directory}/{name}: "
                                 f"{err.decode(errors='replace').strip()[-300:]}")

    def put_file(self, local: Path, remote: str) -> int:
        """Copy a file up under a temporary name and rename it: whole or not at all."""
        tmp = str(temp_beside(Path(remote), part_tag()))
        parent = os.path.dirname(remote)
        script = ((f"mkdir -p -m 700 {shlex.quote(parent)} && " if parent else "")
                  + f"cat > {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(remote)}"
                  + f" || {{ rm -f {shlex.quote(tmp)}; exit 1; }}")
        with open(local, "rb") as f:
            self._stream(script, stdin=f)
        return local.stat().st_size

    def get_file(self, remote: str, local: Path) -> int:
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=temp_prefix(local))
        try:
            with os.fdopen(fd, "wb") as f:
                self._stream(f"cat {shlex.quote(remote)}", stdout=f)
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return local.stat().st_size

    def _stream(self, command: str, stdin: IO[bytes] | None = None,
                stdout: IO[bytes] | None = None) -> None:
        """Run `command` with files for its stdin or stdout: the bytes go between the file
        and ssh without passing through Python."""
        done = subprocess.run(self.argv(command), stdin=stdin or subprocess.DEVNULL,
                              stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
        if done.returncode != 0:
            raise TransportError(f"{self.target}: '{command[:80]}' failed: "
                                 f"{done.stderr.decode(errors='replace').strip()[-300:]}")

    def close(self) -> None:
        """End our master (the user's stays, as they opened it) and remove its folder."""
        if self.folder is None:
            return
        try:
            subprocess.run([*_base(self.target), "-o", f"ControlPath={self.control}", "-O",
                            "exit", self.target.destination], capture_output=True, timeout=10,
                           stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            pass
        # `-O exit` returns before the master has gone: wait for it, so that a closed client
        # leaves no ssh process behind, and end it ourselves if it does not go.
        deadline = time.monotonic() + MASTER_EXIT_WAIT
        while _running(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _running(self.pid):
            try:
                os.kill(self.pid, signal.SIGTERM)
            except OSError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


def _running(pid: int) -> bool:
    """Whether `pid` is a live process. Where /proc tells, a zombie (which nobody may reap in
    a container without an init) counts as gone; elsewhere, whether a signal would reach it."""
    if os.path.exists("/proc/self/stat"):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class ProcessChannel:
    """An `ssh` session's pipes, with the methods of a paramiko Channel that `ssh.py` uses,
    so that the agents run alike over either transport."""

    def __init__(self, process: subprocess.Popen[bytes], err: IO[bytes]) -> None:
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        self._in = process.stdin
        self._out = process.stdout.fileno()
        for pipe in (self._in.fileno(), self._out):
            widen_pipe(pipe)
        self._err = err  # a file, not a pipe: nobody has to drain it while the session runs
        self._err_read = 0
        self._timeout: float | None = None

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes; b"" once the session ended. Raises socket.timeout as a
        channel does when a timeout is set and nothing came."""
        if self._timeout is not None:
            ready, _, _ = select.select([self._out], [], [], self._timeout)
            if not ready:
                raise socket.timeout("nothing received")
        try:  # a pipe holds at most PIPE_SIZE: a larger read would only allocate more
            return os.read(self._out, min(size, PIPE_SIZE))
        except OSError:
            return b""

    def splice_to(self, fd: int, count: int) -> int:
        """Up to `count` bytes of the session's output, moved into the file `fd` by the
        system, not through Python; 0 once the session ended."""
        try:
            return splice_into(self._out, fd, count)
        except io.UnsupportedOperation:
            return write_all(fd, self.recv(count))

    def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = self._in.write(view)
            if written is None:
                raise OSError("the ssh session does not take data")
            view = view[written:]

    def shutdown_write(self) -> None:
        self._in.close()

    def _stderr(self) -> bytes:
        self._err.seek(self._err_read)
        data = self._err.read()
        self._err_read += len(data)
        return data

    def recv_stderr_ready(self) -> bool:
        return os.fstat(self._err.fileno()).st_size > self._err_read

    def recv_stderr(self, size: int) -> bytes:
        """What the session wrote to stderr since the last call (all of it: it is kept in
        a file, not a window, so `size` does not bound it)."""
        return self._stderr()

    def exit_status_ready(self) -> bool:
        return self._process.poll() is not None

    def recv_exit_status(self) -> int:
        return self._process.wait()

    def close(self) -> None:
        """End the session: the far side sees its input end and the channel close. The
        output pipe stays open until this object goes: a reader thread may still be in it."""
        try:
            self._in.close()
        except OSError:
            pass
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._err.close()

