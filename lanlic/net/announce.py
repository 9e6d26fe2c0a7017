"""What a running licence server announces over mDNS: its identity, vendor, site and products."""

from __future__ import annotations

from collections.abc import Sequence

from lanlic.core.service import LicenseService
from lanlic.discovery import (
    Announcer,
    announce_addresses,
    announce_interfaces,
    build_txt,
    listens_everywhere,
)
from lanlic.proto import messages as m

__all__ = ["announcer_for"]


def announcer_for(
    service: LicenseService,
    listen_host: str,
    port: int,
    interfaces: Sequence[str] | None = None,
    member: str = "",
) -> Announcer:
    """An ``Announcer`` for ``service`` listening on ``listen_host``:``port``.

    ``interfaces`` overrides where it is announced; by default, the listen address's own
    interface (``lanlic.discovery.announce_interfaces``). A server listening on one address
    announces only there: ``ValueError`` if ``interfaces`` leaves that address out."""
    if interfaces and not listens_everywhere(listen_host) and listen_host not in interfaces:
        raise ValueError(
            f"the server listens on {listen_host} only: announcing it on "
            f"{', '.join(interfaces)} would send clients to an address they cannot reach"
        )
    txt = build_txt(
        protocol=m.PROTOCOL_VERSIONS,
        server_id=service.server_id,
        server_fp=service.server_id,
        vendor_fp=service.key.vendor_fp,
        site=service.key.customer,
        products=[p.name for p in service.key.products],
    )
    return Announcer(
        site=service.key.customer,
        port=port,
        addresses=announce_addresses(listen_host, interfaces),
        txt=txt,
        server_fp=service.server_id,
        interfaces=announce_interfaces(listen_host, interfaces),
        member=member,
    )
