"""known_hosts read as OpenSSH reads it, and the verdict on the key a host presents.

paramiko's own loader gives up on the whole file at the first line it does not understand,
and it understands neither `@cert-authority` nor `@revoked`, which HPC centres' known_hosts
files often hold: one such line made every host unreachable. So the file is parsed here,
following sshd(8)'s "SSH_KNOWN_HOSTS FILE FORMAT": an optional marker, a host field
(comma-separated patterns with `*` and `?`, `!pattern` negation, `[host]:port`, or a hashed
`|1|salt|hash` name), a key type, the base64 key and a comment. A line that does not parse is
skipped and kept in `KnownHosts.skipped` with why, so that it can be reported; it never hides
the other lines.

The verdict (`verify`) follows OpenSSH's client: a key listed with `@revoked` for the host, or
a certificate signed by such a key, is refused outright; a host certificate is accepted when a
`@cert-authority` line for the host lists its signer and the certificate is valid for the host
name now; otherwise (no certificate, or one that does not pass) the plain key must be one the
file lists for the host, else its key changed (other keys listed) or it is unknown (none).
`key_algorithms` picks what to negotiate so that the verdict is reached on a key the file
can speak for. paramiko negotiates host certificates and proves the host holds the certified
key, but reads nothing inside a certificate: `Certificate` does that part.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import stat
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import paramiko

from ...errors import HostKeyError

if TYPE_CHECKING:
    from .connection import Target

CA_MARKER = "@cert-authority"
REVOKED_MARKER = "@revoked"
HASH_MAGIC = "|1|"
CERT_SUFFIX = "-cert-v01@openssh.com"
# A known_hosts file is a few hundred kilobytes even at large sites; a bigger "file" is a
# mistake (a disk image, /dev/zero through a symlink) that would only stall the connection.
MAX_BYTES = 64 * 1024 * 1024
# Public-key fields that follow the type name in each plain key's wire format (PROTOCOL.certkeys
# puts the same fields, in this order, after the nonce of the matching certificate type).
_KEY_FIELDS = {
    "ssh-rsa": 2, "ssh-dss": 4, "ssh-ed25519": 1,
    "ecdsa-sha2-nistp256": 2, "ecdsa-sha2-nistp384": 2, "ecdsa-sha2-nistp521": 2,
    "sk-ecdsa-sha2-nistp256@openssh.com": 3, "sk-ssh-ed25519@openssh.com": 2,
}
# certificate type -> the type of the key it certifies
_CERT_TYPES = {kind.replace("@openssh.com", "") + CERT_SUFFIX: kind for kind in _KEY_FIELDS}
# Plain host key algorithms whose certificate variant paramiko can negotiate.
_CERTIFIABLE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256")
# OpenSSH's default CASignatureAlgorithms: a certificate signed with RSA/SHA-1 ("ssh-rsa") is
# not trusted, since SHA-1 signatures can be forged by a well-funded attacker.
_CA_SIGNATURES = frozenset({
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512", "rsa-sha2-256",
})
# A known_hosts key of type `ssh-rsa` is verified through these signature algorithms (plain
# ssh-rsa, SHA-1, stays off unless paramiko itself offers it).
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}
_HOST_CERT = 2  # certificate type field: 1 is a user certificate, 2 a host certificate


@dataclass(frozen=True)
class Skipped:
    """A known_hosts line that was not used, and why (OpenSSH skips the same lines)."""

    path: str
    number: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path} line {self.number}: {self.reason}"


@dataclass(frozen=True)
class Entry:
    """One usable known_hosts line: a host's key, a certificate authority, or a revoked key."""

    path: str
    number: int
    marker: str  # "", CA_MARKER or REVOKED_MARKER
    hosts: str  # the host field as written: patterns, or one hashed name
    key_type: str
    blob: bytes  # the key in wire format, as the line holds it

    @property
    def where(self) -> str:
        return f"{self.path} line {self.number}"

    def applies_to(self, name: str) -> bool:
        """Whether this line is about host `name` (`host` or `[host]:port`, as OpenSSH looks
        it up): its hashed name is that name's, or one of its patterns matches and none of
        its negated ones does."""
        if self.hosts.startswith("|"):
            return _hashed(name, self.hosts) == self.hosts
        return match_host(name, self.hosts)

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.key_type, self.blob)


@dataclass(frozen=True)
class HostRecords:
    """What a known_hosts file says about one host."""

    name: str  # as looked up: `host`, or `[host]:port` off port 22
    path: str  # the file, as the user named it
    keys: tuple[Entry, ...] = ()
    authorities: tuple[Entry, ...] = ()
    revoked: tuple[Entry, ...] = ()
    skipped: tuple[Skipped, ...] = ()  # every line of the file that was not used
    portless: HostRecords | None = None  # off port 22: the lines for the bare host name

    @property
    def key_types(self) -> set[str]:
        return {entry.key_type for entry in self.keys}


@dataclass(frozen=True)
class KnownHosts:
    """A parsed known_hosts file: its usable lines, and those skipped with why."""

    path: str
    entries: tuple[Entry, ...] = ()
    skipped: tuple[Skipped, ...] = ()

    @classmethod
    def load(cls, path: str) -> KnownHosts:
        """Read `path` (as the user wrote it: `~` is expanded). A missing file knows no host,
        as for OpenSSH; a file that cannot be a known_hosts file (a directory, binary data
        without a single known_hosts line, unreadable) is a HostKeyError rather than an empty
        file, since the user meant it to vouch for hosts and would otherwise only see every
        host called unknown. A stray damaged line, even with binary bytes, is only skipped."""
        data = _read(path)
        text = data.decode(errors="surrogateescape")  # a comment may be in any encoding
        entries: list[Entry] = []
        skipped: list[Skipped] = []
        for number, line in enumerate(text.split("\n"), 1):
            parsed = _parse(line)
            if isinstance(parsed, str):
                skipped.append(Skipped(path, number, parsed))
            elif parsed is not None:
                entries.append(Entry(path, number, *parsed))
        if not entries and skipped and (b"\0" in data or not _is_utf8(data)):
            raise HostKeyError(_unusable(path, "holds binary data, not known_hosts lines"))
        return cls(path, tuple(entries), tuple(skipped))

    def lookup(self, name: str) -> HostRecords:
        """The lines about host `name`; a line whose key is damaged is skipped here (OpenSSH
        too only decodes the keys of the lines that name the host)."""
        name = name.lower()
        found: dict[str, list[Entry]] = {"": [], CA_MARKER: [], REVOKED_MARKER: []}
        skipped = list(self.skipped)
        for entry in self.entries:
            if not entry.applies_to(name):
                continue
            try:
                blob = canonical(entry.key_type, entry.blob)
            except ValueError as exc:
                skipped.append(Skipped(entry.path, entry.number, f"damaged key: {exc}"))
                continue
            found[entry.marker].append(_with_blob(entry, blob))
        return HostRecords(name, self.path, tuple(found[""]), tuple(found[CA_MARKER]),
                           tuple(found[REVOKED_MARKER]), tuple(skipped))


def records_for(target: Target) -> HostRecords:
    """What the target's known_hosts file says about it (HostKeyError if it is unusable)."""
    known = KnownHosts.load(target.known_hosts)
    records = known.lookup(target.key_name)
    if target.key_name == target.hostname:
        return records
    return replace(records, portless=known.lookup(target.hostname))


# --- matching --------------------------------------------------------------------------------


def match_host(name: str, patterns: str) -> bool:
    """OpenSSH's host pattern lists: `name` (lower case) matches if one comma-separated
    pattern matches it and no `!`-negated one does; `*` is any run of characters, `?` one;
    case does not matter."""
    positive = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if (_compiled(pattern).fullmatch(name) if "*" in pattern or "?" in pattern
                else pattern.lower() == name):  # most patterns are plain names: no regex
            if negated:
                return False
            positive = True
    return positive


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()]
    return re.compile("".join(parts), re.DOTALL)


def _hashed(name: str, field: str) -> str:
    """`name` hashed with the salt of a `|1|salt|hash` field, in that field's form (compared
    whole, as OpenSSH does)."""
    salt = base64.b64decode(field[len(HASH_MAGIC):].split("|", 1)[0])
    digest = hmac.digest(salt, name.encode(errors="surrogateescape"), "sha1")
    return f"{HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


# --- parsing ---------------------------------------------------------------------------------


def _parse(line: str) -> tuple[str, str, str, bytes] | str | None:
    """A line as (marker, hosts, key type, key blob); None for a comment or blank line; the
    reason as a string when OpenSSH would skip it."""
    fields = line.replace("\t", " ").replace("\r", " ").split(" ")
    fields = [f for f in fields if f]
    if not fields or fields[0].startswith("#"):
        return None
    if "\0" in line:
        return "holds a NUL byte (the file is damaged here)"
    marker = ""
    while fields and fields[0].startswith("@"):
        if marker:
            return "more than one marker (a line is either @cert-authority or @revoked)"
        if fields[0] not in (CA_MARKER, REVOKED_MARKER):
            return (f"unknown marker {_show(fields[0])} (the markers are {CA_MARKER} and "
                    f"{REVOKED_MARKER})")
        marker = fields.pop(0)
    if len(fields) < 2 or fields[1].startswith("#"):
        return "no key after the host names"
    hosts, key_type, *rest = fields
    if hosts.startswith("|") and (reason := _bad_hash(hosts)):
        return reason
    if key_type.isdigit():
        return "an SSH-1 RSA key (bits, exponent, modulus), which OpenSSH no longer reads"
    if not rest or rest[0].startswith("#"):
        return f"no key data after the key type {_show(key_type)}"
    try:
        blob = base64.b64decode(rest[0], validate=True)
        inner = _Reader(blob).text()
    except (binascii.Error, ValueError):
        return f"the {_show(key_type)} key is not valid base64 key data"
    if inner != key_type:
        return f"the key type says {_show(key_type)} but the key data is {_show(inner)}"
    return marker, hosts, key_type, blob


def _bad_hash(hosts: str) -> str | None:
    """Why a hashed host name is malformed (None if it is well formed)."""
    if not hosts.startswith(HASH_MAGIC) or "|" not in hosts[len(HASH_MAGIC):]:
        return f"malformed hashed host name {_show(hosts)} (expected |1|salt|hash)"
    salt = hosts[len(HASH_MAGIC):].split("|", 1)[0]
    try:
        if len(base64.b64decode(salt, validate=True)) != hashlib.sha1().digest_size:
            raise ValueError
    except (binascii.Error, ValueError):
        return f"the salt of the hashed host name {_show(hosts)} is not 20 bytes of base64"
    return None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _show(text: str) -> str:
    """A field quoted for a message, cut short: a damaged line can be arbitrarily long."""
    return repr(_cut(text))


def _cut(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@functools.lru_cache(maxsize=1024)
def canonical(key_type: str, blob: bytes) -> bytes:
    """The key's wire format as OpenSSH compares keys: decoded and re-encoded when paramiko
    knows the type (so that an unusual but valid encoding still matches), as written when it
    does not (such keys can still be compared, just not used). ValueError if damaged."""
    try:
        key = paramiko.PKey.from_type_string(key_type, blob)
    except paramiko.UnknownKeyType:
        return blob
    except Exception as exc:  # noqa: BLE001 - each key class fails its own way on bad data
        raise ValueError(f"{key_type} key data does not decode ({exc})") from exc
    if getattr(key, "public_blob", None) is not None:  # a certificate: compared whole
        return blob
    return bytes(key.asbytes())


def _with_blob(entry: Entry, blob: bytes) -> Entry:
    return entry if blob == entry.blob else Entry(entry.path, entry.number, entry.marker,
                                                  entry.hosts, entry.key_type, blob)


def _read(path: str) -> bytes:
    full = os.path.expanduser(path)
    try:
        info = os.stat(full)
        if stat.S_ISDIR(info.st_mode):
            raise HostKeyError(_unusable(path, "is a directory"))
        if not stat.S_ISREG(info.st_mode):
            raise HostKeyError(_unusable(path, "is not a regular file"))
        if info.st_size > MAX_BYTES:
            raise HostKeyError(_unusable(path, f"is {info.st_size // 2 ** 20} MiB, far too "
                                               "large for a known_hosts file"))
        with open(full, "rb") as f:
            return f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise HostKeyError(_unusable(path, f"cannot be read ({exc.strerror or exc})")) from exc


def _unusable(path: str, problem: str) -> str:
    return (f"The known_hosts file {path} {problem}, so no host key can be checked against "
            "it and nothing was sent. Point 'known_hosts:' of the host in the hosts file (or "
            "UserKnownHostsFile in ~/.ssh/config) at a readable known_hosts file, such as "
            "~/.ssh/known_hosts, or fix that file (`ssh-keygen -F HOST -f FILE` shows what "
            "OpenSSH finds in it).")


# --- certificates ----------------------------------------------------------------------------


class _Reader:
    """SSH wire-format fields (RFC 4251) read from a byte string, with bounds checked."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise ValueError("truncated")
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return chunk

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def uint64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())

    def text(self) -> str:
        try:
            return self.string().decode()
        except UnicodeDecodeError as exc:
            raise ValueError("a name that is not text") from exc

    def strings(self) -> Iterable[bytes]:
        """Every string in the rest of the data (a packed list, such as principals)."""
        while self.at < len(self.data):
            yield self.string()


@dataclass(frozen=True)
class Certificate:
    """An OpenSSH certificate (PROTOCOL.certkeys), as a host presents it in the key exchange.

    paramiko negotiates certificate host key algorithms and checks that the host holds the
    certified key, but does not look inside the certificate; this is the rest of what OpenSSH
    checks: who signed it, for which names, until when.
    """

    cert_type: str
    key_type: str  # the certified plain key's type
    key_blob: bytes  # the certified plain key, in wire format
    serial: int
    kind: int  # 1: user certificate, 2: host certificate
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: tuple[str, ...]
    ca_type: str
    ca_blob: bytes
    signature: bytes
    signed: bytes = field(repr=False)  # everything the signature covers

    @classmethod
    def parse(cls, blob: bytes) -> Certificate:
        """Decode a certificate; ValueError if it is not one or is damaged."""
        reader = _Reader(blob)
        cert_type = reader.text()
        key_type = _CERT_TYPES.get(cert_type, "")
        if not key_type:
            raise ValueError(f"not a certificate type: {cert_type}")
        reader.string()  # nonce
        start = reader.at
        for _ in range(_KEY_FIELDS[key_type]):
            reader.string()
        key_fields = blob[start:reader.at]
        serial, kind = reader.uint64(), reader.uint32()
        key_id = reader.string().decode(errors="replace")
        principals = tuple(p.decode(errors="replace")
                           for p in _Reader(reader.string()).strings())
        valid_after, valid_before = reader.uint64(), reader.uint64()
        critical = _Reader(reader.string())
        options = []
        for name in critical.strings():
            options.append(name.decode(errors="replace"))
            critical.string()  # the option's data
        reader.string()  # extensions: none of them concerns a host certificate
        reader.string()  # reserved
        ca = reader.string()
        signed = blob[:reader.at]
        signature = reader.string()
        if reader.at != len(blob):
            raise ValueError("data after the signature")
        name = key_type.encode()
        return cls(cert_type, key_type, struct.pack(">I", len(name)) + name + key_fields,
                   serial, kind, key_id, principals, valid_after, valid_before, tuple(options),
                   _Reader(ca).text(), ca, signature, signed)

    def problem(self, hostname: str, now: float | None = None) -> str | None:
        """Why this certificate does not vouch for `hostname` at `now` (None if it does),
        checked as OpenSSH's client checks a host certificate: a good signature by its CA, of
        an accepted algorithm; a host (not user) certificate; within its validity period; the
        name among its principals (which may hold `*` and `?`); no critical options."""
        try:
            algorithm = _Reader(self.signature).text()
        except ValueError:
            return "its signature is damaged"
        if algorithm not in _CA_SIGNATURES:
            return (f"it is signed with {algorithm}, which OpenSSH does not accept for "
                    "certificates (re-sign it with an ed25519, ECDSA or rsa-sha2-512 signature)")
        try:
            ca = paramiko.PKey.from_type_string(self.ca_type, self.ca_blob)
            good = ca.verify_ssh_sig(self.signed, paramiko.Message(self.signature))
        except paramiko.UnknownKeyType:
            return f"its CA key type {self.ca_type} cannot be checked by paramiko"
        except Exception:  # noqa: BLE001 - a damaged CA key or signature fails its own way
            good = False
        if not good:
            return "its signature does not verify with the CA key it names"
        if self.kind != _HOST_CERT:
            return ("it is a user certificate, not a host certificate" if self.kind == 1
                    else f"it is not a host certificate (its type is {self.kind})")
        now = time.time() if now is None else now
        if now < self.valid_after:
            return f"it is not valid before {_when(self.valid_after)}"
        if now >= self.valid_before:
            return f"it expired at {_when(self.valid_before)}"
        if not self.principals:
            return "it names no host (sign it with ssh-keygen -h -n HOSTNAME)"
        if not any(_compiled_exact(p).fullmatch(hostname) for p in self.principals):
            names = ", ".join(_cut(p) for p in self.principals[:5])
            more = f" and {len(self.principals) - 5} more" if len(self.principals) > 5 else ""
            return (f"it is for {names}{more}, not for {hostname} (the name connected to "
                    "must be one of its principals)")
        if self.critical_options:
            return (f"it has critical options ({', '.join(self.critical_options)}), which "
                    "OpenSSH does not support in host certificates")
        return None


@functools.lru_cache(maxsize=256)
def _compiled_exact(pattern: str) -> re.Pattern[str]:
    """A principal pattern: `*` and `?` are wildcards, and unlike host patterns case counts."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def _when(timestamp: int) -> str:
    if timestamp >= 2 ** 63:
        return "the end of time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(min(timestamp, 2 ** 37)))


def certificate_of(key: paramiko.PKey) -> Certificate | None:
    """The certificate a host presented with `key` (paramiko keeps it as the key's public
    blob), or None for a plain key; ValueError if it is damaged."""
    blob = getattr(key, "public_blob", None)
    if blob is None or not str(blob.key_type).endswith(CERT_SUFFIX):
        return None
    return Certificate.parse(bytes(blob.key_blob))


# --- the verdict -----------------------------------------------------------------------------


def key_algorithms(offered: tuple[str, ...], records: HostRecords) -> tuple[str, ...]:
    """The host key algorithms to negotiate, from paramiko's (`offered`, in its order).

    Only those that can produce a key known_hosts holds, or a certificate of one: otherwise a
    server with keys of several types may agree on one that known_hosts has no record of, and
    a known host is refused. Certificates come first, as in OpenSSH (one that does not pass
    falls back to its plain key, and one from a revoked CA is refused as OpenSSH refuses it);
    with a @cert-authority line for the host, or no line at all (a CA listed for the bare
    host name may still vouch, see `verify`), certificates of every type.
    """
    wanted = {algorithm for kind in records.key_types
              for algorithm in _ALGORITHMS.get(kind, (kind,))}
    plain = tuple(algorithm for algorithm in offered if algorithm in wanted)
    certifiable = plain if plain and not records.authorities else offered
    certificates = tuple(f"{algorithm}{CERT_SUFFIX}" for algorithm in certifiable
                         if algorithm in _CERTIFIABLE)
    return certificates + (plain or offered)


def verify(target: Target, key: paramiko.PKey, records: HostRecords) -> str:
    """Refuse (HostKeyError) a key that known_hosts does not vouch for; else say how it does.

    Order as in OpenSSH: revocation first, whatever else the file says; then a certificate
    signed by a listed authority; then the plain key, also when the host presented a
    certificate that did not pass (OpenSSH retries with the plain key then, too). A host with
    keys listed but not this one has CHANGED its key; with none listed it is unknown, unless
    (off port 22) the lines for the bare host name vouch for it, which OpenSSH accepts too.
    """
    try:
        cert = certificate_of(key)
        authority = canonical(cert.ca_type, cert.ca_blob) if cert else None
    except ValueError as exc:
        raise HostKeyError(f"{target.key_name} presented a damaged host certificate ({exc}): "
                           "nothing was sent. Tell the host's administrators.") from exc
    vouched, note = _judge(target, key, cert, authority, records)
    if vouched:
        return vouched
    if records.keys:
        kind = key.get_name()
        listed = sorted(records.keys, key=lambda entry: entry.key_type != kind)[0]
        raise HostKeyError(changed(target, f"it offers {fingerprint(key)} but {records.path} "
                                           f"has {listed.fingerprint}") + note)
    if records.portless is not None:
        vouched = _judge(target, key, cert, authority, records.portless)[0]
        if vouched:
            return f"{vouched}, for {target.hostname} on any port"
    raise HostKeyError(f"The host key of {target.key_name} ({fingerprint(key)}) is not in "
                       f"{records.path}: nothing was sent to it.{note} {trust(target)}")


def _judge(target: Target, key: paramiko.PKey, cert: Certificate | None,
           authority: bytes | None, records: HostRecords) -> tuple[str, str]:
    """What `records` say of the key (and of its certificate, signed by `authority`): (what
    vouches for it or "", why its certificate did not); HostKeyError if they revoke it."""
    presented = canonical(key.get_name(), bytes(key.asbytes()))
    for entry in records.revoked:
        if entry.blob == presented:
            raise HostKeyError(_revoked(f"The host key of {target.key_name} "
                                        f"({fingerprint(key)})", entry))
        if entry.blob == authority:
            raise HostKeyError(_revoked(f"The certificate authority that signed the host "
                                        f"certificate of {target.key_name} "
                                        f"({entry.fingerprint})", entry))
    note = ""
    if cert is not None:
        signer = next((e for e in records.authorities if e.blob == authority), None)
        if signer is not None:
            problem = cert.problem(target.hostname.lower())
            if problem is None:
                return (f"host certificate '{cert.key_id}' signed by the @cert-authority of "
                        f"{signer.where}", "")
            note = (f" Its host certificate, signed by the @cert-authority of {signer.where}, "
                    f"does not vouch for it: {problem}.")
        else:
            note = (f" It presented a host certificate signed by "
                    f"{_fingerprint(cert.ca_type, cert.ca_blob)}, but no @cert-authority line "
                    f"for {target.key_name} in {records.path} lists that key.")
    for entry in records.keys:
        if entry.blob == presented:
            return f"{entry.key_type} key of {entry.where}", ""
    return "", note


def fingerprint(key: paramiko.PKey) -> str:
    return _fingerprint(key.get_name(), bytes(key.asbytes()))


def _fingerprint(key_type: str, blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{key_type} SHA256:{digest}"


def trust(target: Target) -> str:
    return (f"If this is the right host, trust it with: ssh-keyscan -p {target.port} "
            f"{target.hostname} >> {target.known_hosts} (or connect once with ssh and "
            "check the fingerprint).")


def changed(target: Target, how: str) -> str:
    return (f"The host key of {target.key_name} CHANGED: {how}. This can be an attack, so "
            "nothing was sent. If you know why it changed, remove the old key with "
            f"ssh-keygen -R '{target.key_name}' -f {target.known_hosts} and trust the new one. "
            + trust(target))


def _revoked(what: str, entry: Entry) -> str:
    return (f"{what} is REVOKED: {entry.where} marks it @revoked, so nothing was sent. A "
            "revoked key may have been stolen, and must not be trusted however the host "
            "presents it; ask the host's administrators for its current key or certificate. "
            f"Remove that line only if they tell you the revocation was a mistake.")
