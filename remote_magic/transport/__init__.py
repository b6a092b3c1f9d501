"""How the kernel reaches a host: its agent, staging in, and results back out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import TransportError

if TYPE_CHECKING:
    from ..config import HostConfig
    from .local import LocalTransport


def open_transport(host: HostConfig) -> LocalTransport:
    """The transport for `host`; nothing is started until the first request."""
    if host.is_local:
        from .local import LocalTransport

        return LocalTransport(host)
    raise TransportError(
        f"Host '{host.name}' has an address ({host.address}): SSH hosts are not supported by "
        "this version yet. Remove 'address' to run on this machine."
    )
