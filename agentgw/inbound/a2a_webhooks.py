"""Push-notification webhooks an A2A caller asks an agent to call (contract 11).

A webhook URL is a request the agent will make on the caller's behalf, from
inside the gateway's network: left unchecked it reaches loopback, private and
metadata addresses no caller could reach itself. This module finds every
webhook URL a request carries and says whether the agent may be told to call it;
the endpoint refuses the request otherwise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("agentgw.inbound.a2a")

# The methods carrying a message, whose `configuration` may name a webhook.
MESSAGE_METHODS = frozenset({"SendMessage", "SendStreamingMessage"})
# Where a webhook URL sits: the params of a create/set call, or a message's `configuration`.
_PUSH_CONFIG_KEYS = (
    "taskPushNotificationConfig",
    "task_push_notification_config",
    "pushNotificationConfig",
    "push_notification_config",
)
WEBHOOK_RESOLVE_TIMEOUT = 5.0
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


def webhook_urls(method: str, params: dict[str, Any]) -> list[Any]:
    """Every webhook URL a request would have the agent call, under any spelling its parser accepts."""
    holders: list[Any] = []
    if method == "CreateTaskPushNotificationConfig":
        holders = [params, *(params.get(k) for k in _PUSH_CONFIG_KEYS)]
    elif method in MESSAGE_METHODS and isinstance(params.get("configuration"), dict):
        holders = [params["configuration"].get(k) for k in _PUSH_CONFIG_KEYS]
    return [h["url"] for h in holders if isinstance(h, dict) and "url" in h]


async def webhook_allowed(url: Any, allowed_hosts: frozenset[str]) -> bool:
    """Whether an agent may be told to call `url`: https, and a host allow-listed or resolving only
    to public addresses. A host that does not resolve is refused. (The agent resolves it again later:
    a name whose records change in between is the reason for the allow-list, not a hole in it.)"""
    if not isinstance(url, str) or not _VISIBLE_ASCII.fullmatch(url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        return False
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme.lower() != "https" or not host or parts.username is not None or parts.password is not None:
        return False
    if host in allowed_hosts:
        return True
    addresses = await _resolve(host, port)
    return bool(addresses) and all(is_public_address(a) for a in addresses)


async def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), WEBHOOK_RESOLVE_TIMEOUT)
        return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    except (OSError, ValueError, TimeoutError) as exc:
        log.warning("webhook host %r not resolved (%s): refused", host[:100], type(exc).__name__)
        return []


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is on the public internet: not loopback, private, link-local, CGNAT,
    metadata, unspecified, multicast or reserved, nor an IPv6 form carrying such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.teredo is not None:
            return False  # the tunnelled client address is the peer's to choose
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT, RFC 2765
_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible, `::` and `::1` included


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped, compatible, translated, 6to4 or NAT64."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in (*_NAT64, _TRANSLATED, _COMPATIBLE)):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None
