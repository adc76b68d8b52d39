"""The SSRF policy for webhook URLs: with ``WEBHOOK_BLOCK_PRIVATE_NETWORKS=true``, public addresses only.

One policy, checked twice: at intake (``intake_url_policy``: literal IPs and obviously internal names,
answered with 422) and at send time (``delivery.webhook.PinningResolver``: every address a name
resolves to is vetted, and the connection goes to a vetted address, so DNS rebinding between check
and connect cannot slip through). Shared by ``intake`` and ``delivery``, so it lives beside them.
Hosts, addresses or CIDRs in ``WEBHOOK_ALLOWED_HOSTS`` are exempt (internal receivers an operator
trusts). Off by default: internal receivers are the common case for a self-hosted service.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import urlsplit

from batch_pipeline.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The intake's hook for webhook URLs: a reason to reject one, or None.
UrlPolicy = Callable[[str], str | None]

# Named for the reader and the docs; ``is_global`` below is the catch-all for anything not listed.
DENIED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "64:ff9b::/96",  # NAT64 (embeds IPv4)
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215, embeds IPv4)
        "2002::/16",  # 6to4 (embeds IPv4)
        "fc00::/7",  # unique-local
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)
INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".lan", ".intranet")


class BlockedByPolicy(OSError):
    """Raised from DNS resolution when a host resolves to a denied address."""


_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d, deprecated (RFC 4291) but still parsed
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_HEX_DIGITS = frozenset("0123456789abcdef")


def _ipv4_part(part: str) -> int | None:
    """One part of an IPv4 number as inet_aton reads it: 0x hex, a leading 0 octal, else decimal."""
    if part[:2] in ("0x", "0X"):
        digits = part[2:].lower()
        if not digits:
            return 0  # "0x" alone is 0 to the WHATWG parser
        return int(digits, 16) if set(digits) <= _HEX_DIGITS else None
    if not part.isascii() or not part.isdigit():
        return None
    if len(part) > 1 and part[0] == "0":
        return int(part, 8) if set(part) <= set("01234567") else None
    return int(part)


def ipv4_number(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``host`` stands for in any form libc's ``inet_aton`` (and the WHATWG URL parser)
    read as one: 1 to 4 parts (``127.1``, ``2130706433``), each decimal, octal (``0177``) or hex
    (``0x7f``), an optional trailing dot. None when ``host`` is no such number."""
    parts = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not 1 <= len(parts) <= 4 or not all(parts):
        return None
    values: list[int] = []
    for part in parts:
        value = _ipv4_part(part)
        if value is None:
            return None
        values.append(value)
    *head, last = values  # the last part fills the bytes the others leave
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    return ipaddress.IPv4Address(sum(v << (24 - 8 * i) for i, v in enumerate(head)) + last)


def _ends_in_a_number(host: str) -> bool:
    """Whether the last label is numeric (WHATWG "ends in a number"): such a host is an IPv4 address or
    no valid host at all; no public name ends so (no top-level domain is a number)."""
    last = (host[:-1] if host.endswith(".") else host).rsplit(".", 1)[-1]
    return bool(last) and last.isascii() and (last.isdigit() or last[:2].lower() == "0x")


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host names literally, in any form a resolver would take (``[::1]``,
    ``127.1``, ``0x7f.1``, ``2130706433``), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ipv4_number(host)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and leads to: IPv4-mapped, IPv4-compatible, 6to4 and
    NAT64 (the last 32 bits, as the well-known /96 and common local-use /96 prefixes place it)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def denied_reason(ip: IPAddress) -> str | None:
    """Why this address may not be contacted, or None when it is public."""
    v4 = embedded_ipv4(ip)
    if v4 is not None and (reason := denied_reason(v4)):
        return f"{ip} embeds {v4}: {reason}"  # ::ffff:127.0.0.1, 2002:7f00:1:: are loopback too
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return None  # ::ffff:8.8.8.8 is 8.8.8.8
    for net in DENIED_NETWORKS:
        if ip.version == net.version and ip in net:
            return f"{ip} is in the non-public range {net}"
    if not ip.is_global or ip.is_multicast or ip.is_unspecified:
        return f"{ip} is not a public address"
    return None


class EgressPolicy:
    def __init__(self, block_private_networks: bool, allowed_hosts: frozenset[str] = frozenset()) -> None:
        self.enabled = block_private_networks
        self._hosts: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed_hosts:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hosts.add(entry.lower().rstrip("."))

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressPolicy:
        return cls(settings.webhook_block_private_networks, settings.allowed_webhook_hosts)

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._hosts

    def address_reason(self, ip: IPAddress) -> str | None:
        if not self.enabled or any(ip.version == n.version and ip in n for n in self._networks):
            return None
        return denied_reason(ip)

    def host_reason(self, host: str) -> str | None:
        """Intake-time check of a URL host without DNS: literal IPs and obviously internal names."""
        if not self.enabled or self.host_allowed(host):
            return None
        ip = literal_address(host)  # 127.1, 0177.0.0.1, 2130706433 are 127.0.0.1 to every resolver
        if ip is not None:
            return self.address_reason(ip)
        if _ends_in_a_number(host):
            return f"{host} is not a valid IPv4 address"
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(INTERNAL_SUFFIXES) or "." not in name:
            return f"{host} is an internal host name"
        return None

    def url_reason(self, url: str) -> str | None:
        host = urlsplit(url).hostname
        reason = self.host_reason(host) if host else None
        return f"webhook_url is not allowed: {reason}" if reason else None


# Distinct webhook URLs remembered by the intake's policy. A verdict depends on the URL alone (no DNS
# at intake), and bulk calls usually share a few URLs: uncached, the check doubled the intake's cost
# per request (parsing the URL and trying it as an IP address, ~7 us).
_URL_VERDICTS_CACHED = 4096


def intake_url_policy(settings: Settings) -> UrlPolicy | None:
    """The ``UrlPolicy`` for ``IntakeService``; None when the policy is off (nothing to check)."""
    policy = EgressPolicy.from_settings(settings)
    return lru_cache(maxsize=_URL_VERDICTS_CACHED)(policy.url_reason) if policy.enabled else None
