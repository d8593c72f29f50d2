"""The client's address: the peer, or what trusted proxies say in ``X-Forwarded-For``."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from ..errors import AuditConfigError

__all__ = ["TrustedProxies"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAX_HOP = 64  # no IP address with port and brackets is longer: longer entries are not IPs
_CACHED = 4096  # answers remembered per TrustedProxies
_MAX_CACHED_HEADER = 256  # longer X-Forwarded-For headers are walked, not remembered


def _parse_address(text: str) -> _Address | None:
    """An IP from a peer or ``X-Forwarded-For`` entry; ports and brackets removed."""
    text = text.strip()
    if len(text) > _MAX_HOP:
        return None
    if text.startswith("["):  # "[2001:db8::1]:443"
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # "203.0.113.7:8080"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The peers allowed to tell us the client's address in ``X-Forwarded-For``.

    Give addresses or networks (``"10.0.0.0/8"``, ``"::1"``), or ``"*"`` to
    trust every peer (only when the app is reachable through proxies alone).
    With none, ``X-Forwarded-For`` is ignored and the peer address is the
    client's: a header any client can write proves nothing.

    >>> proxies = TrustedProxies(["10.0.0.0/8"])
    >>> proxies.client_ip("10.0.0.2", "198.51.100.9, 203.0.113.7, 10.0.0.1")
    '203.0.113.7'
    >>> proxies.client_ip("192.0.2.1", "198.51.100.9")   # untrusted peer: header ignored
    '192.0.2.1'
    """

    __slots__ = ("_everyone", "_networks", "_remembered_walk")

    def __init__(self, proxies: Iterable[str] | str = ()) -> None:
        if isinstance(proxies, str):
            proxies = proxies.split(",")
        networks: list[_Network] = []
        self._everyone = False
        for entry in proxies:
            if not isinstance(entry, str):
                raise AuditConfigError(
                    f"trusted_proxies takes IP addresses or networks as strings, not {entry!r}"
                )
            entry = entry.strip()
            if entry == "*":
                self._everyone = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise AuditConfigError(
                    f"trusted_proxies: {entry!r} is not an IP address or network "
                    "(e.g. '10.0.0.1', '10.0.0.0/8', '::1', or '*')"
                ) from None
        self._networks = tuple(networks)
        # Parsing addresses costs more than the rest of a request's audit work, and
        # the same proxies and clients come back request after request.
        self._remembered_walk = functools.lru_cache(maxsize=_CACHED)(self._walk)

    def __bool__(self) -> bool:
        return self._everyone or bool(self._networks)

    def __repr__(self) -> str:
        shown = ["*"] if self._everyone else [str(n) for n in self._networks]
        return f"TrustedProxies({shown!r})"

    def _trusted(self, address: _Address) -> bool:
        return self._everyone or any(address in network for network in self._networks)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: the right-most hop not added by a trusted proxy.

        ``X-Forwarded-For`` is read only when ``peer`` is trusted; it is then
        walked from the right (the hop nearest to us) past trusted proxies.
        An entry that is not an IP stops the walk at the last verified hop.
        Answers for short headers are remembered (a few thousand).
        """
        if not forwarded_for or peer is None or not self:
            return peer
        if len(forwarded_for) > _MAX_CACHED_HEADER:
            return self._walk(peer, forwarded_for)
        return self._remembered_walk(peer, forwarded_for)

    def _walk(self, peer: str, forwarded_for: str) -> str:
        closest = _parse_address(peer)
        if closest is None or not self._trusted(closest):
            return peer
        for hop in reversed(forwarded_for.split(",")):
            address = _parse_address(hop)
            if address is None:
                break
            closest = address
            if not self._trusted(address):
                break
        return str(closest)
