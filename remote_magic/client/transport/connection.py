"""One SSH connection to a host: resolve it, verify its key, authenticate, open channels.

Everything about making a connection lives here (`ssh.py` only uses the channels, and
`known_hosts.py` reads the known_hosts file and judges host keys and certificates). The host
key is checked right after the key exchange, before authentication, so nothing of ours reaches
a host whose key is unknown, changed or revoked; the exchange is restricted to the key types
known_hosts holds for the host and their certificates (certificates of any type when a
@cert-authority line applies to it), so a server that also has a key of another type is
neither mistaken for an unknown host nor allowed to dodge a changed key by offering a type we
have no record of. A ProxyJump chain is walked hop by hop, each hop's key checked the same way.
Keys, ssh-agent, and keyboard-interactive or password prompts (asked through `prompt`, which in
a notebook is the front end's own input box) are tried in the order the server allows.
"""

from __future__ import annotations

import getpass
import logging
import os
import queue
import shlex
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import paramiko

from ...config.hosts import HostConfig
from ...errors import AuthenticationError, HostKeyError, TransportError
from ...wire.tempnames import part_tag, temp_beside, temp_prefix
from . import chunk_pipe
from .known_hosts import Skipped, changed, key_algorithms, records_for, verify

CONNECT_TIMEOUT = 15.0
KEEPALIVE = 15  # seconds between keepalive messages on an idle connection
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                     "aes256-ctr")
NO_REKEY = 2 ** 40  # paramiko-initiated rekeys can stall big transfers; OpenSSH still rekeys
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
MAX_HOPS = 10  # a longer ProxyJump chain is taken for a loop in ~/.ssh/config
# Channels that carry bulk data (the transfer agent, a hop's tunnel) get a wider window and
# larger packets than paramiko's 2 MiB / 32 KiB: the server may then send more, in bigger
# packets, before waiting for us, and each packet costs paramiko Python-level work.
BULK_WINDOW = 32 * 1024 * 1024
BULK_PACKET = 256 * 1024

Prompt = Callable[[str, bool], str]  # (prompt text, echo) -> answer
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where to connect, after ~/.ssh/config and the host's own settings are applied."""

    name: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    proxy_jump: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    proxy_command: str | None = None  # ~/.ssh/config's, its %h %p %r already filled in
    identities_only: bool = False  # IdentitiesOnly: no ssh-agent keys besides the files
    # ~/.ssh/config options for this host, as ssh_config(5) spells them: those this transport
    # applied, those it leaves aside harmlessly (LEFT_ASIDE), and those it cannot honour
    # (REFUSED), for which it refuses to connect rather than fail in a misleading way
    applied: tuple[str, ...] = ()
    unapplied: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()

    @property
    def key_name(self) -> str:
        """How known_hosts names this host: `host`, or `[host]:port` off port 22."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


# ~/.ssh/config options this transport leaves aside without harm: it keeps one connection
# per kernel of its own, so master connections do not apply. Named in `remote-magic test`.
LEFT_ASIDE = {"controlmaster": "ControlMaster", "controlpath": "ControlPath",
              "controlpersist": "ControlPersist"}
# Options that change how a host is reached or logged in to, and that this transport cannot
# honour: a login without them would fail, or reach the host another way than the user set
# up, so it is not tried (`transport: openssh` honours them).
REFUSED = {
    "certificatefile": "CertificateFile", "identityagent": "IdentityAgent",
    "gssapiauthentication": "GSSAPIAuthentication", "pkcs11provider": "PKCS11Provider",
    "securitykeyprovider": "SecurityKeyProvider", "hostkeyalias": "HostKeyAlias",
    "bindaddress": "BindAddress", "bindinterface": "BindInterface",
}
OFF = (None, "no", "none", "SSH_AUTH_SOCK")  # values that ask for nothing beyond the default

APPLIED = {"hostname": "HostName", "user": "User", "port": "Port",
           "identityfile": "IdentityFile", "identitiesonly": "IdentitiesOnly",
           "proxyjump": "ProxyJump", "proxycommand": "ProxyCommand",
           "userknownhostsfile": "UserKnownHostsFile"}


def resolve(spec: str, port: int | None = None, identity_file: str | None = None,
            proxy_jump: str | None = None, known_hosts: str | None = None,
            name: str | None = None,
            fallback_known_hosts: str = "~/.ssh/known_hosts") -> Target:
    """Read `user@alias[:port]` through ~/.ssh/config (HostName, User, Port, IdentityFile,
    ProxyJump, UserKnownHostsFile); explicit arguments win over the file, and
    `fallback_known_hosts` is used when neither names a known_hosts file."""
    user, _, rest = spec.rpartition("@")
    alias, _, port_text = rest.partition(":")
    config = paramiko.SSHConfig()
    path = os.path.expanduser("~/.ssh/config")
    if os.path.exists(path):
        config = paramiko.SSHConfig.from_path(path)
    found = config.lookup(alias)
    files = [identity_file] if identity_file else list(found.get("identityfile", []))
    jump = proxy_jump or found.get("proxyjump")
    command = found.get("proxycommand")
    if jump not in (None, "none") or command in (None, "none"):
        command = None  # a ProxyJump (ours or the file's) goes first; OpenSSH takes one
    unapplied = tuple(name for key, name in LEFT_ASIDE.items() if found.get(key) not in OFF)
    refused = tuple(name for key, name in REFUSED.items() if found.get(key) not in OFF)
    only = found.get("identitiesonly") == "yes"
    used = {"hostname": found.get("hostname") != alias, "user": not user,
            "port": not (port or port_text), "identityfile": not identity_file,
            "identitiesonly": only, "proxyjump": not proxy_jump and command is None,
            "proxycommand": command is not None, "userknownhostsfile": not known_hosts}
    applied = tuple(APPLIED[key] for key, taken in used.items() if taken and key in found
                    and found[key] not in (None, "none"))
    return Target(
        name=name or alias,
        hostname=found.get("hostname", alias),
        port=port or int(port_text or found.get("port", 22)),
        user=user or found.get("user") or getpass.getuser(),
        identity_files=tuple(files),
        proxy_jump=None if jump in (None, "none") else jump,
        known_hosts=known_hosts or (found.get("userknownhostsfile") or fallback_known_hosts)
        .split()[0],
        proxy_command=command, identities_only=only, applied=applied, unapplied=unapplied,
        refused=refused,
    )


def target_for(host: HostConfig) -> Target:
    assert host.address is not None
    return resolve(host.address, host.port, host.identity_file, host.proxy_jump,
                   host.known_hosts, name=host.name)


def ask_in_main_thread(prompt: str, echo: bool) -> str:
    """Ask the user; only the main thread may (in a kernel, that is the cell's input box)."""
    if threading.current_thread() is not threading.main_thread():
        raise AuthenticationError(
            "The host asks for a password or a one-time code, which can only be answered "
            "while a cell runs. Run any %remote command to reconnect.")
    return input(prompt) if echo else getpass.getpass(prompt)


@dataclass
class Connection:
    target: Target
    transport: paramiko.Transport
    jump: Connection | None = None
    methods: list[str] = field(default_factory=list)  # how we authenticated
    host_key: str = ""  # what in known_hosts vouched for the host, for `remote-magic test`
    skipped: tuple[Skipped, ...] = ()  # known_hosts lines not understood, and why

    @property
    def alive(self) -> bool:
        return self.transport.is_active()

    def open_exec(self, command: str, bulk: bool = False) -> paramiko.Channel:
        """Start `command` on a channel of its own; `bulk` for one that carries large files."""
        try:
            channel = self.transport.open_session(
                timeout=CONNECT_TIMEOUT, window_size=BULK_WINDOW if bulk else None,
                max_packet_size=BULK_PACKET if bulk else None)
            if bulk:
                chunk_pipe.install(channel)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"{self.target}: cannot run a command: {exc}") from exc
        return channel

    def run(self, command: str, stdin: bytes = b"", timeout: float = 120) -> tuple[int, str, str]:
        """Run one command to its end: (exit status, stdout, stderr) as text."""
        status, out, err = self.exchange(command, stdin, timeout)
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def exchange(self, command: str, stdin: bytes = b"",
                 timeout: float | None = 120) -> tuple[int, bytes, bytes]:
        """Run one command with `stdin` to its end: (exit status, stdout, stderr) as bytes."""
        channel = self.open_exec(command)
        channel.settimeout(timeout)
        try:
            if stdin:
                channel.sendall(memoryview(stdin))  # paramiko re-slices what it is given
            channel.shutdown_write()
            out, err = _drain(channel)
            return channel.recv_exit_status(), out, err
        except socket.timeout as exc:
            raise TransportError(f"{self.target}: '{command[:60]}' took over {timeout} s") \
                from exc
        finally:
            channel.close()

    def sftp(self) -> paramiko.SFTPClient:
        return paramiko.SFTPClient.from_transport(self.transport)

    def install(self, directory: str, name: str, data: bytes) -> None:
        """Write `data` to a fresh file in `directory` (created exclusively, so a link
        planted under its name is not followed) and rename it to `name`."""
        with self.sftp() as sftp:
            tmp = f"{directory}/.{name}.{part_tag()}"
            try:
                with sftp.open(tmp, "wbx") as f:
                    f.write(data)
                sftp.posix_rename(tmp, f"{directory}/{name}")
            except BaseException:
                try:
                    sftp.remove(tmp)
                except OSError:
                    pass
                raise

    def put_file(self, local: Path, remote: str) -> int:
        """Upload under a temporary name and rename: the file appears whole or not at all."""
        with self.sftp() as sftp:
            tmp = str(temp_beside(PurePosixPath(remote), part_tag()))
            parent = os.path.dirname(remote)
            if parent:
                self.run(f"mkdir -p -m 700 {shlex.quote(parent)}")
            attrs = sftp.put(str(local), tmp, confirm=True)
            sftp.posix_rename(tmp, remote)
        return attrs.st_size or 0

    def get_file(self, remote: str, local: Path) -> int:
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=temp_prefix(local))
        os.close(fd)
        try:
            with self.sftp() as sftp:
                sftp.get(remote, tmp)
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return local.stat().st_size

    def close(self) -> None:
        self.transport.close()
        if self.jump is not None:
            self.jump.close()


def _drain(channel: paramiko.Channel) -> tuple[bytes, bytes]:
    out, err = bytearray(), bytearray()
    while True:
        if channel.recv_ready():
            out += channel.recv(1 << 20)
        elif channel.recv_stderr_ready():
            err += channel.recv_stderr(1 << 20)
        elif channel.exit_status_ready() and not channel.recv_ready() \
                and not channel.recv_stderr_ready():
            while data := channel.recv(1 << 20):
                out += data
            while data := channel.recv_stderr(1 << 20):
                err += data
            return bytes(out), bytes(err)
        else:
            channel.status_event.wait(0.05)


def connect(target: Target, prompt: Prompt = ask_in_main_thread) -> Connection:
    """Open, verify and authenticate a connection, through its ProxyJump hops if it has any.

    As OpenSSH does, a chain `a,b` reaches the target through `b`, which is reached through
    `a`; each hop is a connection of its own whose key is checked (against the hop's
    UserKnownHostsFile from ~/.ssh/config, else the target's known_hosts file). Only the first
    hop's own ProxyJump from ~/.ssh/config is followed, since the chain says how to reach the
    others.
    """
    return _connect(target, prompt, [])


def _connect(target: Target, prompt: Prompt, chain: list[str]) -> Connection:
    if target.refused:
        raise TransportError(
            f"{target}: ~/.ssh/config sets {', '.join(target.refused)} for "
            f"{chain[-1] if chain else target.name}, which the built-in paramiko transport "
            "cannot honour, so it does not try to log in without. Add 'transport: openssh' "
            "to this host in the hosts file: the system's ssh then connects, with all of "
            "your ~/.ssh/config.")
    records = records_for(target)  # a broken known_hosts file stops us before any connection
    log.debug("connecting to %s (ProxyJump %s, ProxyCommand %s, known_hosts %s)", target,
              target.proxy_jump, target.proxy_command, target.known_hosts)
    jump = None
    if target.proxy_jump:
        if len(chain) >= MAX_HOPS:
            raise TransportError(f"{target}: more than {MAX_HOPS} ProxyJump hops "
                                 f"({' -> '.join(chain)}): is there a loop in ~/.ssh/config?")
        *before, last = [hop.strip() for hop in target.proxy_jump.split(",")]
        hop = resolve(last, fallback_known_hosts=target.known_hosts)
        if before:
            hop = replace(hop, proxy_jump=",".join(before))
        jump = _connect(hop, prompt, [*chain, last])
        try:
            sock: Any = HopSocket(jump.transport.open_channel(
                "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0),
                timeout=CONNECT_TIMEOUT, window_size=BULK_WINDOW,
                max_packet_size=BULK_PACKET))
        except (paramiko.SSHException, OSError) as exc:
            jump.close()
            raise TransportError(f"{target}: the jump host {jump.target} cannot reach it: "
                                 f"{exc}") from exc
    elif target.proxy_command:
        try:
            sock = paramiko.ProxyCommand(target.proxy_command)
        except paramiko.ProxyCommandFailure as exc:
            raise TransportError(f"{target}: its ProxyCommand ({target.proxy_command}) could "
                                 f"not start: {exc}") from exc
    else:
        try:
            sock = socket.create_connection((target.hostname, target.port), CONNECT_TIMEOUT)
            # Requests are small messages answered at once: don't let Nagle hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise TransportError(f"{target}: cannot open a TCP connection ({exc}). Check the "
                                 "address and port, and that the host is up.") from exc
    transport = paramiko.Transport(sock)
    try:
        options = transport.get_security_options()
        available = tuple(c for c in options.ciphers if c not in PREFERRED_CIPHERS)
        options.ciphers = PREFERRED_CIPHERS + available
        options.key_types = key_algorithms(options.key_types, records)
        transport.packetizer.REKEY_BYTES = transport.packetizer.REKEY_PACKETS = NO_REKEY
        try:
            transport.start_client(timeout=CONNECT_TIMEOUT)
        except paramiko.IncompatiblePeer as exc:
            if records.keys and not records.authorities and "host key" in str(exc):
                raise HostKeyError(changed(
                    target, f"{target.known_hosts} has only "
                    f"{', '.join(sorted(records.key_types))} keys for it, and it offers none "
                    "of these types now")) from exc
            raise
        vouched = verify(target, transport.get_remote_server_key(), records)
        log.debug("%s: host key accepted (%s), cipher %s", target, vouched,
                  transport.remote_cipher)
        methods = _authenticate(target, transport, prompt)
        log.debug("%s: logged in by %s", target, ", ".join(methods))
        transport.set_keepalive(KEEPALIVE)
    except BaseException as exc:
        transport.close()
        if jump is not None:
            jump.close()
        if isinstance(exc, (paramiko.SSHException, EOFError, OSError)):
            said = _proxy_said(sock) if target.proxy_command and jump is None else ""
            raise TransportError(f"{target}: SSH failed: {exc}{said}") from exc
        raise
    return Connection(target, transport, jump, methods, vouched, records.skipped)


class HopSocket:
    """A jump host's channel as the socket of the connection it carries.

    paramiko reads its socket a packet header at a time, and a channel's `recv(n)` shifts
    everything it still holds after each read: with the bulk window's 32 MiB waiting, a
    download through a hop ran at 25 MB/s (140-210 MB/s since, bench/ssh_hop.py). Here the
    channel is emptied in one read, and the small reads are served from that."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self._held = b""
        self._at = 0

    def recv(self, size: int) -> bytes:
        if self._at >= len(self._held):
            self._held, self._at = self.channel.recv(BULK_WINDOW), 0
        piece = self._held[self._at:self._at + size]
        self._at += len(piece)
        return piece

    def send(self, data: bytes) -> int:
        return self.channel.send(data)

    def settimeout(self, timeout: float | None) -> None:
        self.channel.settimeout(timeout)

    def close(self) -> None:
        self.channel.close()

    @property
    def _closed(self) -> bool:  # paramiko's Transport looks at its socket's `_closed`
        return self.channel.closed


def _proxy_said(sock: Any) -> str:
    """What a ProxyCommand that ended said on its stderr: why the connection never came."""
    process = getattr(sock, "process", None)
    if process is None:
        return ""
    try:
        process.wait(timeout=2)
        words = process.stderr.read().decode(errors="replace").strip()
    except Exception:  # noqa: BLE001 - only for the message
        return ""
    tail = words.splitlines()[-1][-300:] if words else "nothing on stderr"
    return (f". Its ProxyCommand (from ~/.ssh/config) exited with status "
            f"{process.returncode}: {tail}")


def _authenticate(target: Target, transport: paramiko.Transport, prompt: Prompt) -> list[str]:
    try:
        transport.auth_none(target.user)
        return ["none"]
    except paramiko.BadAuthenticationType as exc:
        allowed = list(exc.allowed_types)
    log.debug("%s: the server accepts %s", target, ", ".join(allowed))
    tried: list[str] = []
    for method in ("publickey", "keyboard-interactive", "password"):
        if method not in allowed or transport.is_authenticated():
            continue
        try:
            if method == "publickey":
                for label, key in _keys(target, prompt):
                    log.debug("%s: offering key %s (%s)", target, label, key.fingerprint)
                    tried.append(label)
                    allowed = _attempt(transport.auth_publickey, target.user, key) or allowed
                    if transport.is_authenticated():
                        return [f"publickey ({label})"]
            elif method == "keyboard-interactive":
                tried.append("keyboard-interactive")
                _interactive(transport, target, prompt)
            else:
                tried.append("password")
                transport.auth_password(target.user, prompt(f"Password for {target}: ", False))
        except paramiko.AuthenticationException:
            continue
        if transport.is_authenticated():
            return [method]
    raise AuthenticationError(
        f"Could not log in to {target} (the server accepts: {', '.join(allowed)}; tried: "
        f"{', '.join(tried) or 'nothing usable'}). Point 'identity_file' in the hosts file "
        "(or IdentityFile in ~/.ssh/config) at a key whose public half is in "
        "~/.ssh/authorized_keys on the host, or load that key into ssh-agent (ssh-add), and "
        f"check the user name ('{target.user}').")


def _attempt(method: Callable[..., Any], user: str, key: paramiko.PKey) -> list[str] | None:
    try:
        return method(user, key)
    except paramiko.AuthenticationException:
        return None


def _keys(target: Target, prompt: Prompt) -> Iterator[tuple[str, paramiko.PKey]]:
    files = target.identity_files or tuple(f"~/.ssh/{name}" for name in DEFAULT_KEYS)
    for name in files:
        path = os.path.expanduser(name)
        if not os.path.exists(path):
            continue
        try:
            yield name, paramiko.PKey.from_path(path)
        except paramiko.PasswordRequiredException:
            yield name, paramiko.PKey.from_path(path, prompt(f"Passphrase for {name}: ", False))
        except (paramiko.SSHException, OSError, ValueError):
            continue
    if target.identities_only:
        return
    try:
        for index, key in enumerate(paramiko.Agent().get_keys()):
            yield f"ssh-agent key {index + 1}", key
    except paramiko.SSHException:
        return


def _interactive(transport: paramiko.Transport, target: Target, prompt: Prompt) -> None:
    """Keyboard-interactive auth whose prompts are asked in *this* thread.

    paramiko calls the prompt handler from its own transport thread, but in a kernel only the
    thread running the cell can ask the user. So the handler hands each round of prompts over
    here, and the auth itself waits in a helper thread.
    """
    rounds: queue.Queue[tuple[str, list[tuple[str, bool]], queue.Queue[list[str]]]] = \
        queue.Queue()

    def handler(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
        if not prompts:  # PAM often ends with an empty round
            return []
        answers: queue.Queue[list[str]] = queue.Queue()
        rounds.put(("\n".join(t for t in (title, instructions) if t), prompts, answers))
        return answers.get()

    failure: list[BaseException] = []

    def authenticate() -> None:
        try:
            transport.auth_interactive(target.user, handler)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the asking thread
            failure.append(exc)

    worker = threading.Thread(target=authenticate, daemon=True, name="ssh-auth")
    worker.start()
    asked: BaseException | None = None
    while worker.is_alive() or not rounds.empty():
        try:
            header, prompts, answers = rounds.get(timeout=0.1)
        except queue.Empty:
            continue
        replies = []
        try:
            for text, echo in prompts:
                label = f"{target}: {text}"
                replies.append(prompt(f"{header}\n{label}" if header else label, echo))
        except BaseException as exc:  # noqa: BLE001 - answer (wrongly) so paramiko returns
            asked = exc
            replies = [""] * len(prompts)
        answers.put(replies)
    worker.join()
    if asked is not None:
        raise asked
    if failure:
        raise failure[0]
