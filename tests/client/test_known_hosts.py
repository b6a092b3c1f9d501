"""known_hosts as OpenSSH reads it: markers, patterns, hashed names, host certificates.

The judge is OpenSSH itself: each known_hosts variant is tried by our client and by `ssh`
against the same real sshd (one presenting plain keys, one presenting host certificates made
by `ssh-keygen -s CA -h -n 127.0.0.1`, one whose certificates have expired), and both must
let the connection through or refuse it alike. The other tests pin down what OpenSSH does not
show us: our messages (revoked, changed, unknown, why a certificate did not vouch), the lines
skipped and why, known_hosts files that are no such file, and each check on certificates that
ssh-keygen makes.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from remote_magic.client.transport.connection import Target, connect
from remote_magic.client.transport.known_hosts import Certificate, KnownHosts
from remote_magic.errors import HostKeyError
from remote_magic.testing.sshd import SSHServer, start_sshd


def keygen(path: Path, kind: str = "ed25519", *options: str) -> str:
    """A new key pair at `path`; its public half as `type base64`."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *options, "-N", "", "-C", path.name,
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The host CA, a CA nobody trusts, and an RSA CA (for signature algorithm checks)."""
    d = tmp_path_factory.mktemp("cas")
    return {"dir": d, "ca": keygen(d / "ca"), "other_ca": keygen(d / "other_ca"),
            "rsa_ca": keygen(d / "rsa_ca", "rsa", "-b", "2048"), "ca_path": d / "ca"}


@pytest.fixture(scope="module")
def cert_server(tmp_path_factory: pytest.TempPathFactory,
                keys: dict[str, Any]) -> Iterator[SSHServer]:
    with start_sshd(tmp_path_factory.mktemp("cert-sshd"), host_ca=keys["ca_path"]) as server:
        yield server


@pytest.fixture(scope="module")
def expired_server(tmp_path_factory: pytest.TempPathFactory,
                   keys: dict[str, Any]) -> Iterator[SSHServer]:
    with start_sshd(tmp_path_factory.mktemp("expired-sshd"), host_ca=keys["ca_path"],
                    host_cert_validity="-2d:-1d") as server:
        yield server


def target(server: SSHServer, known_hosts: Path, hostname: str = "127.0.0.1") -> Target:
    return Target(name="t", hostname=hostname, port=server.port, user=server.user,
                  identity_files=(str(server.key_path),), known_hosts=str(known_hosts))


def ours(server: SSHServer, known_hosts: Path, hostname: str) -> str | None:
    """None if our client connects and runs a command, else its refusal."""
    try:
        conn = connect(target(server, known_hosts, hostname))
    except HostKeyError as exc:
        return str(exc)
    try:
        assert conn.run("echo ok")[1] == "ok\n"
    finally:
        conn.close()
    return None


def openssh(server: SSHServer, known_hosts: Path, hostname: str) -> bool:
    """Whether the OpenSSH client, checking host keys strictly, gets in."""
    done = subprocess.run(
        ["ssh", "-F", "/dev/null", "-p", str(server.port), "-i", str(server.key_path),
         "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
         "-o", "UpdateHostKeys=no", "-o", "BatchMode=yes", f"{server.user}@{hostname}",
         "echo ok"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    return done.returncode == 0 and done.stdout == "ok\n"


def hashed(name: str, tmp_path: Path) -> str:
    """`name` as `ssh-keygen -H` hashes it in known_hosts."""
    f = tmp_path / "to_hash"
    f.write_text(f"{name} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPyyJIUMqy9Gnl6OU4V4UZ9p6F03bbxBZbJ+"
                 "9mZkW5FD\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(f)], check=True, capture_output=True)
    return f.read_text().split()[0]


JUNK = [
    "this line is not a known_hosts line",
    "@bogus-marker host.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
    "@cert-authority @revoked *.example.org {ca}",
    "host.example.org ssh-ed25519 !!!not-base64!!!",
    "host.example.org ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIPyyJIUMqy9Gnl6OU4V4UZ9p6F03bbxBZbJ+9mZkW5FD",
    "old.example.org 1024 35 1234567890123456789",
    "|1|not-a-salt|x ssh-ed25519 {key}",
    "truncated.example.org",
    "@cert-authority *.hpc.example.org {other_ca}",
    "@revoked *.example.org {other_ca}",
    "damaged.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\0\0\0\0",
]

# id -> (server, host name connected to, known_hosts lines, whether OpenSSH gets in)
CASES: dict[str, tuple[str, str, list[str], bool]] = {
    "known key among unparseable, marker and revoked lines": (
        "plain", "127.0.0.1", [*JUNK, "{name} {key}", "# the end"], True),
    "hashed name": ("plain", "127.0.0.1", ["{hashed} {key}"], True),
    "wildcard pattern": ("plain", "127.0.0.1", ["other,[127.0.0.?]:* {key}"], True),
    "key listed for the host name without the port": ("plain", "127.0.0.1",
                                                       ["127.0.0.1 {key}"], True),
    "negated pattern excludes the host": ("plain", "127.0.0.1",
                                          ["*,!{name},!127.0.0.1 {key}"], False),
    "negation of the host with its port only": ("plain", "127.0.0.1", ["*,!{name} {key}"],
                                                True),
    "negation of another host": ("plain", "127.0.0.1", ["!other.example.org,{name} {key}"],
                                 True),
    "patterns ignore case": ("plain", "localhost", ["[LocalHost]:{port} {key}"], True),
    "key revoked for every host": ("plain", "127.0.0.1", ["{name} {key}", "@revoked * {key}"],
                                   False),
    "key revoked for other hosts only": (
        "plain", "127.0.0.1", ["{name} {key}", "@revoked *.example.org {key}"], True),
    "host key listed only as a CA": ("plain", "127.0.0.1", ["@cert-authority {name} {key}"],
                                     False),
    "certificate from the listed CA": ("cert", "127.0.0.1", ["@cert-authority {name} {ca}"],
                                       True),
    "certificate, CA for every host, among junk": (
        "cert", "127.0.0.1", [*JUNK, "@cert-authority * {ca}"], True),
    "certificate, CA under a hashed name": (
        "cert", "127.0.0.1", ["@cert-authority {hashed} {ca}"], True),
    "certificate, CA line negated for the host": (
        "cert", "127.0.0.1", ["@cert-authority *,!{name},!127.0.0.1 {ca}"], False),
    "certificate, CA listed for the host name without the port": (
        "cert", "127.0.0.1", ["@cert-authority 127.0.0.1 {ca}"], True),
    "certificate from another CA": ("cert", "127.0.0.1", ["@cert-authority * {other_ca}"],
                                    False),
    "certificate from a revoked CA": (
        "cert", "127.0.0.1", ["@cert-authority * {ca}", "@revoked * {ca}"], False),
    "certificate of a revoked key": (
        "cert", "127.0.0.1", ["@cert-authority * {ca}", "@revoked {name} {key}"], False),
    "certificate for another name": (
        "cert", "localhost", ["@cert-authority * {ca}"], False),
    "certificate for another name, plain key known": (
        "cert", "localhost", ["@cert-authority * {ca}", "[localhost]:{port} {key}"], True),
    "certificate for another name, another key type known": (
        "cert", "localhost", ["@cert-authority * {ca}", "[localhost]:{port} {ecdsa_key}",
                              "localhost {key}"], False),
    "certificate, CA for other hosts, plain key known": (
        "cert", "127.0.0.1", ["@cert-authority *.example.org {ca}", "{name} {key}"], True),
    "certificate, only the RSA key known": ("cert", "127.0.0.1", ["{name} {rsa_key}"], True),
    "certificate from a revoked CA, plain key known": (
        "cert", "127.0.0.1", ["{name} {key}", "@revoked * {ca}"], False),
    "expired certificate": ("expired", "127.0.0.1", ["@cert-authority * {ca}"], False),
    "expired certificate, plain key known": (
        "expired", "127.0.0.1", ["@cert-authority * {ca}", "{name} {key}"], True),
}


@pytest.fixture
def write_known_hosts(tmp_path: Path, keys: dict[str, Any]) -> Callable[..., Path]:
    """Known_hosts lines with {name} {port} {key} {rsa_key} {ecdsa_key} {ca} {other_ca}
    {hashed} filled in for `server`, written to a file."""

    def write(server: SSHServer, lines: list[str]) -> Path:
        name = f"[{server.host}]:{server.port}"
        values = {"name": name, "port": server.port, "ca": keys["ca"],
                  "other_ca": keys["other_ca"],
                  "key": f"ssh-ed25519 {server.host_keys['ssh-ed25519']}",
                  "rsa_key": f"ssh-rsa {server.host_keys['ssh-rsa']}",
                  "ecdsa_key": "ecdsa-sha2-nistp256 "
                               f"{server.host_keys['ecdsa-sha2-nistp256']}",
                  "hashed": hashed(name, tmp_path) if any("{hashed}" in x for x in lines)
                  else ""}
        path = tmp_path / "known_hosts"
        path.write_text("".join(line.format(**values) + "\n" for line in lines))
        return path

    return write


@pytest.mark.parametrize("case", list(CASES))
def test_each_known_hosts_variant_is_judged_as_openssh_judges_it(
        case: str, request: pytest.FixtureRequest,
        write_known_hosts: Callable[..., Path]) -> None:
    kind, hostname, lines, expected = CASES[case]
    server = request.getfixturevalue(
        {"plain": "sshd", "cert": "cert_server", "expired": "expired_server"}[kind])
    known_hosts = write_known_hosts(server, lines)
    assert openssh(server, known_hosts, hostname) is expected, "the case itself is wrong"
    before = server.accepted_logins()
    refusal = ours(server, known_hosts, hostname)
    assert (refusal is None) is expected, refusal
    if refusal is not None:  # refused before anything was sent: no login at all
        assert server.accepted_logins() == before
        assert "nothing was sent" in refusal and "\n" not in refusal


def test_a_host_certificate_is_negotiated_and_named_as_what_vouched_for_the_host(
        cert_server: SSHServer, write_known_hosts: Callable[..., Path]) -> None:
    known_hosts = write_known_hosts(cert_server, ["@cert-authority {name} {ca}"])
    conn = connect(target(cert_server, known_hosts))
    try:
        assert conn.transport.host_key_type == "ssh-ed25519-cert-v01@openssh.com"
        assert conn.host_key == (f"host certificate 'sshd-test ed25519' signed by the "
                                 f"@cert-authority of {known_hosts} line 1")
    finally:
        conn.close()
    # Without a CA, the certificate of the known key's type is still preferred (as OpenSSH
    # does, so that a revoked CA is noticed), and its plain key found in known_hosts.
    known_hosts = write_known_hosts(cert_server, ["{name} {rsa_key}"])
    conn = connect(target(cert_server, known_hosts))
    try:
        assert conn.transport.host_key_type == "rsa-sha2-512-cert-v01@openssh.com"
        assert conn.host_key == f"ssh-rsa key of {known_hosts} line 1"
    finally:
        conn.close()


def test_a_revoked_key_is_refused_naming_the_line_that_revokes_it(
        cert_server: SSHServer, write_known_hosts: Callable[..., Path]) -> None:
    known_hosts = write_known_hosts(cert_server, ["@cert-authority * {ca}", "# why:",
                                                  "@revoked * {ca}"])
    message = ours(cert_server, known_hosts, "127.0.0.1") or ""
    assert message.startswith("The certificate authority that signed the host certificate "
                              f"of [127.0.0.1]:{cert_server.port} (ssh-ed25519 SHA256:")
    assert f"is REVOKED: {known_hosts} line 3 marks it @revoked" in message
    assert "ask the host's administrators" in message
    known_hosts = write_known_hosts(cert_server, ["{name} {key}", "@revoked {name} {key}"])
    message = ours(cert_server, known_hosts, "127.0.0.1") or ""
    assert message.startswith(f"The host key of [127.0.0.1]:{cert_server.port} (ssh-ed25519 "
                              f"SHA256:") and f"{known_hosts} line 2 marks it" in message


def test_a_certificate_that_does_not_vouch_for_the_host_says_why(
        cert_server: SSHServer, expired_server: SSHServer,
        write_known_hosts: Callable[..., Path]) -> None:
    known_hosts = write_known_hosts(expired_server, ["@cert-authority * {ca}"])
    message = ours(expired_server, known_hosts, "127.0.0.1") or ""
    assert message.startswith(f"The host key of [127.0.0.1]:{expired_server.port} ")
    assert f"is not in {known_hosts}: nothing was sent to it." in message  # as for any unknown
    assert (f"Its host certificate, signed by the @cert-authority of {known_hosts} line 1, "
            "does not vouch for it: it expired at ") in message
    assert "ssh-keyscan" in message
    known_hosts = write_known_hosts(cert_server, ["@cert-authority * {ca}"])
    message = ours(cert_server, known_hosts, "localhost") or ""
    assert "it is for 127.0.0.1, not for localhost" in message
    known_hosts = write_known_hosts(cert_server, ["@cert-authority * {other_ca}"])
    message = ours(cert_server, known_hosts, "127.0.0.1") or ""
    assert "It presented a host certificate signed by ssh-ed25519 SHA256:" in message
    assert "but no @cert-authority line for" in message


def test_lines_that_were_skipped_are_listed_with_their_line_numbers_and_why(
        sshd: SSHServer, write_known_hosts: Callable[..., Path]) -> None:
    known_hosts = write_known_hosts(sshd, [*JUNK, "{name} {key}"])
    conn = connect(target(sshd, known_hosts))
    conn.close()
    assert conn.host_key == f"ssh-ed25519 key of {known_hosts} line {len(JUNK) + 1}"
    reasons = {s.number: s.reason for s in conn.skipped}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7, 8, 11]  # 9 and 10 are fine, just unused
    assert reasons[1] == "the 'line' key is not valid base64 key data"
    assert reasons[2].startswith("unknown marker '@bogus-marker'")
    assert reasons[3].startswith("more than one marker")
    assert reasons[4] == "the 'ssh-ed25519' key is not valid base64 key data"
    assert reasons[5] == "the key type says 'ssh-rsa' but the key data is 'ssh-ed25519'"
    assert reasons[6].startswith("an SSH-1 RSA key")
    assert reasons[7].startswith("the salt of the hashed host name")
    assert reasons[8] == "no key after the host names"
    assert reasons[11] == "holds a NUL byte (the file is damaged here)"
    assert str(conn.skipped[0]) == f"{known_hosts} line 1: {reasons[1]}"


def test_unknown_and_changed_keys_keep_their_messages_with_markers_around(
        sshd: SSHServer, keys: dict[str, Any], write_known_hosts: Callable[..., Path]) -> None:
    known_hosts = write_known_hosts(sshd, [*JUNK, "@cert-authority * {ca}"])
    message = ours(sshd, known_hosts, "127.0.0.1") or ""
    assert message == (
        f"The host key of [127.0.0.1]:{sshd.port} (ssh-ed25519 SHA256:"
        f"{message.split('SHA256:')[1].split(')')[0]}) is not in {known_hosts}: nothing was "
        f"sent to it. If this is the right host, trust it with: ssh-keyscan -p {sshd.port} "
        f"127.0.0.1 >> {known_hosts} (or connect once with ssh and check the fingerprint).")
    stray = keygen(keys["dir"] / f"stray-{time.monotonic_ns()}")
    known_hosts = write_known_hosts(sshd, [*JUNK, f"{{name}} {stray}"])
    message = ours(sshd, known_hosts, "127.0.0.1") or ""
    assert message.startswith(f"The host key of [127.0.0.1]:{sshd.port} CHANGED: it offers "
                              "ssh-ed25519 SHA256:")
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {known_hosts}" in message


@pytest.mark.parametrize("problem", ["a directory", "binary", "unreadable"])
def test_a_known_hosts_that_cannot_be_a_known_hosts_file_is_a_clean_error(
        problem: str, tmp_path: Path, sshd: SSHServer) -> None:
    known_hosts = tmp_path / "known_hosts"
    expected = {"a directory": "is a directory",
                "binary": "holds binary data, not known_hosts lines",
                "unreadable": "cannot be read (Permission denied)"}[problem]
    if problem == "a directory":
        known_hosts.mkdir()
    elif problem == "binary":
        known_hosts.write_bytes(gzip.compress(sshd.known_hosts.read_bytes() * 20))
    else:
        known_hosts.write_text(sshd.known_hosts.read_text())
        known_hosts.chmod(0)
        if os.geteuid() == 0:  # root reads anything: ask as an unprivileged user
            message = _load_as_nobody(known_hosts)
            assert message.startswith(f"HostKeyError: The known_hosts file {known_hosts} "
                                      f"{expected}"), message
            return
    before = sshd.accepted_logins()
    with pytest.raises(HostKeyError) as info:
        connect(target(sshd, known_hosts))
    message = str(info.value)
    assert message.startswith(f"The known_hosts file {known_hosts} {expected}")
    assert "nothing was sent" in message and "Point 'known_hosts:'" in message
    assert "\n" not in message and len(message) < 600
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, OSError)
    assert sshd.accepted_logins() == before


def _load_as_nobody(path: Path) -> str:
    """What loading `path` raises in a child process that runs as user nobody (uid 65534):
    root can read any file, so only another user sees an unreadable one."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, load, report, and leave without pytest's clean-up
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                KnownHosts.load(str(path))
                said = "loaded"
            except Exception as exc:  # noqa: BLE001 - whatever it is, the parent reports it
                said = f"{type(exc).__name__}: {exc}"
            os.write(write, said.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    return said


@pytest.mark.parametrize("options, problem", [
    (["-h", "-n", "login.example.org"], None),
    (["-h", "-n", "*.example.org,other"], None),
    (["-h", "-n", "login.example.org", "-V", "-2d:-1d"], "it expired at 20"),
    (["-h", "-n", "login.example.org", "-V", "+1d:+2d"], "it is not valid before 20"),
    (["-h"], "it names no host (sign it with ssh-keygen -h -n HOSTNAME)"),
    (["-h", "-n", "Login.example.org"], "it is for Login.example.org, not for "
                                        "login.example.org (the name connected to must be "
                                        "one of its principals)"),
    (["-n", "login.example.org"], "it is a user certificate, not a host certificate"),
], ids=["valid", "wildcard principal", "expired", "not yet valid", "no principals",
        "principals are case-sensitive", "user certificate"])
def test_certificates_are_checked_as_openssh_checks_host_certificates(
        options: list[str], problem: str | None, keys: dict[str, Any], tmp_path: Path) -> None:
    found = _certificate(keys["dir"] / "ca", tmp_path, options).problem("login.example.org")
    assert found == problem or (problem and (found or "").startswith(problem))


@pytest.mark.parametrize("algorithm, problem", [
    ("rsa-sha2-512", None), ("rsa-sha2-256", None),
    ("ssh-rsa", "it is signed with ssh-rsa, which OpenSSH does not accept for certificates")])
def test_an_rsa_ca_signature_made_with_sha1_is_not_accepted(
        algorithm: str, problem: str | None, keys: dict[str, Any], tmp_path: Path) -> None:
    cert = _certificate(keys["dir"] / "rsa_ca", tmp_path,
                        ["-t", algorithm, "-h", "-n", "login.example.org"])
    assert cert.problem("login.example.org") == (problem and problem + " (re-sign it with an "
                                                 "ed25519, ECDSA or rsa-sha2-512 signature)")


def test_a_certificate_with_a_forged_signature_or_damaged_data_is_refused(
        keys: dict[str, Any], tmp_path: Path) -> None:
    cert = _certificate(keys["dir"] / "ca", tmp_path, ["-h", "-n", "login.example.org"])
    forged = Certificate.parse(cert.signed.replace(b"login.example.org", b"evil0.example.org")
                               + len(cert.signature).to_bytes(4, "big") + cert.signature)
    assert forged.principals == ("evil0.example.org",)
    assert forged.problem("evil0.example.org") == ("its signature does not verify with the CA "
                                                   "key it names")
    whole = cert.signed + len(cert.signature).to_bytes(4, "big") + cert.signature
    for damaged in (whole[:-1], whole + b"x", whole[:40]):
        with pytest.raises(ValueError):
            Certificate.parse(damaged)


def _certificate(ca: Path, tmp_path: Path, options: list[str]) -> Certificate:
    """A certificate made by ssh-keygen for a new key, parsed."""
    import base64

    key = tmp_path / f"host-{time.monotonic_ns()}"
    keygen(key, "ecdsa", "-b", "256")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "test", *options,
                    str(key.with_suffix(".pub"))], check=True, capture_output=True)
    text = key.with_name(key.name + "-cert.pub").read_text()
    return Certificate.parse(base64.b64decode(text.split()[1]))


def test_matching_follows_openssh_patterns_and_hashes(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPyyJIUMqy9Gnl6OU4V4UZ9p6F03bbxBZbJ+9mZkW5FD"
    lines = {
        "login?.hpc.example.org,!login9.hpc.example.org": {"login1.hpc.example.org"},
        "*.EXAMPLE.org": {"login1.hpc.example.org", "login9.hpc.example.org"},
        "[*.example.org]:2222": {"[login1.hpc.example.org]:2222"},
        "[login1.hpc.example.org]:2222": {"[login1.hpc.example.org]:2222"},
        hashed("login9.hpc.example.org", tmp_path): {"login9.hpc.example.org"},
    }
    f = tmp_path / "known_hosts"
    f.write_text("".join(f"{hosts} {key}\n" for hosts in lines))
    known = KnownHosts.load(str(f))
    assert not known.skipped
    for name in ("login1.hpc.example.org", "login9.hpc.example.org",
                 "[login1.hpc.example.org]:2222", "login1.hpc.example.com"):
        found = {known.entries[e.number - 1].hosts for e in known.lookup(name).keys}
        assert found == {hosts for hosts, names in lines.items() if name in names}, name
