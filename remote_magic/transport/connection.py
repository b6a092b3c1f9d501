"""One SSH connection to a host: resolve it, verify its key, authenticate, open channels.

The only module that imports paramiko. The host key is checked against known_hosts right
after the key exchange, before authentication, so nothing of ours reaches a host whose key is
unknown or changed. Keys, ssh-agent, and keyboard-interactive or password prompts (asked
through `prompt`, which in a notebook is the front end's own input box) are tried in the order
the server allows.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import paramiko

from ..config import HostConfig
from ..errors import AuthenticationError, HostKeyError, TransportError

CONNECT_TIMEOUT = 15.0
KEEPALIVE = 15  # seconds between keepalive messages on an idle connection
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                     "aes256-ctr")
NO_REKEY = 2 ** 40  # paramiko-initiated rekeys can stall big transfers; OpenSSH still rekeys
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")

Prompt = Callable[[str, bool], str]  # (prompt text, echo) -> answer


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

    @property
    def key_name(self) -> str:
        """How known_hosts names this host: `host`, or `[host]:port` off port 22."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def resolve(spec: str, port: int | None = None, identity_file: str | None = None,
            proxy_jump: str | None = None, known_hosts: str | None = None,
            name: str | None = None) -> Target:
    """Read `user@alias[:port]` through ~/.ssh/config (HostName, User, Port, IdentityFile,
    ProxyJump, UserKnownHostsFile); explicit arguments win over the file."""
    user, _, rest = spec.rpartition("@")
    alias, _, port_text = rest.partition(":")
    config = paramiko.SSHConfig()
    path = os.path.expanduser("~/.ssh/config")
    if os.path.exists(path):
        config = paramiko.SSHConfig.from_path(path)
    found = config.lookup(alias)
    files = [identity_file] if identity_file else list(found.get("identityfile", []))
    jump = proxy_jump or found.get("proxyjump")
    return Target(
        name=name or alias,
        hostname=found.get("hostname", alias),
        port=port or int(port_text or found.get("port", 22)),
        user=user or found.get("user") or getpass.getuser(),
        identity_files=tuple(files),
        proxy_jump=None if jump in (None, "none") else jump,
        known_hosts=known_hosts or (found.get("userknownhostsfile") or "~/.ssh/known_hosts")
        .split()[0],
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

    @property
    def alive(self) -> bool:
        return self.transport.is_active()

    def open_exec(self, command: str) -> paramiko.Channel:
        try:
            channel = self.transport.open_session(timeout=CONNECT_TIMEOUT)
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
                channel.sendall(stdin)
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
    """Open, verify and authenticate a connection (through the jump host if there is one)."""
    jump = None
    if target.proxy_jump:
        jump = connect(resolve(target.proxy_jump.split(",")[-1]), prompt)
        try:
            sock: Any = jump.transport.open_channel(
                "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0),
                timeout=CONNECT_TIMEOUT)
        except (paramiko.SSHException, OSError) as exc:
            jump.close()
            raise TransportError(f"{target}: the jump host {jump.target} cannot reach it: "
                                 f"{exc}") from exc
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
        transport.packetizer.REKEY_BYTES = transport.packetizer.REKEY_PACKETS = NO_REKEY
        transport.start_client(timeout=CONNECT_TIMEOUT)
        verify_host_key(target, transport.get_remote_server_key())
        methods = _authenticate(target, transport, prompt)
        transport.set_keepalive(KEEPALIVE)
    except BaseException as exc:
        transport.close()
        if jump is not None:
            jump.close()
        if isinstance(exc, (paramiko.SSHException, EOFError, OSError)):
            raise TransportError(f"{target}: SSH failed: {exc}") from exc
        raise
    return Connection(target, transport, jump, methods)


def fingerprint(key: paramiko.PKey) -> str:
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def verify_host_key(target: Target, key: paramiko.PKey) -> None:
    path = os.path.expanduser(target.known_hosts)
    known = paramiko.HostKeys()
    if os.path.exists(path):
        known.load(path)
    entry = known.lookup(target.key_name) or {}
    trust = (f"If this is the right host, trust it with: ssh-keyscan -p {target.port} "
             f"{target.hostname} >> {target.known_hosts} (or connect once with ssh and "
             "check the fingerprint).")
    stored = entry.get(key.get_name())
    if stored is None:
        raise HostKeyError(f"The host key of {target.key_name} ({fingerprint(key)}) is not "
                           f"in {target.known_hosts}: nothing was sent to it. {trust}")
    if stored != key:
        raise HostKeyError(
            f"The host key of {target.key_name} CHANGED: it offers {fingerprint(key)} but "
            f"{target.known_hosts} has {fingerprint(stored)}. This can be an attack, so "
            "nothing was sent. If you know why it changed, remove the old key with "
            f"ssh-keygen -R '{target.key_name}' -f {target.known_hosts} and trust the new one.")


def _authenticate(target: Target, transport: paramiko.Transport, prompt: Prompt) -> list[str]:
    try:
        transport.auth_none(target.user)
        return ["none"]
    except paramiko.BadAuthenticationType as exc:
        allowed = list(exc.allowed_types)
    tried: list[str] = []
    for method in ("publickey", "keyboard-interactive", "password"):
        if method not in allowed or transport.is_authenticated():
            continue
        try:
            if method == "publickey":
                for label, key in _keys(target, prompt):
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
        f"{', '.join(tried) or 'nothing usable'}). Check 'identity_file' in the hosts file, "
        "load the key into ssh-agent, or check the user name.")


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
