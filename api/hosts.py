"""Which ``Host`` a request may name, and which ``Origin`` a WebSocket may come from.

A web page cannot send a token it does not have, but it can make a browser
send requests: by DNS rebinding (``evil.example`` made to resolve to
127.0.0.1, so that the page's own origin reaches a registry on loopback) or
by opening a WebSocket to the registry from any origin. Both carry a name the
registry does not go by: the rebinding in ``Host``, the cross-site socket in
``Origin``.

So a request is answered only when its ``Host`` names the registry:

- an address it listens on (any IP address when it listens on every
  interface: an address literal is never a rebinding, which needs a name),
  or a loopback address;
- ``localhost`` or this machine's name;
- or a name given with ``--allowed-hosts`` (``*`` turns the check off).

The port is not checked: rebinding keeps it. A WebSocket upgrade that
carries an ``Origin`` (browsers always send one) must come from the same
host as the request's ``Host``, or from an allowed one; clients that are not
browsers send none and pass.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from .problem import ApiError

__all__ = ["AllowedHosts", "require_origin"]

#: Values seen and allowed, kept so that the usual few cost one lookup; bounded.
_MAX_REMEMBERED = 1024


class AllowedHosts:
    def __init__(self, listen: str, extra: str = "") -> None:
        wildcard = listen in ("", "0.0.0.0", "::")
        self._any_address = wildcard
        self._addresses = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
        names = {"localhost", socket.gethostname().lower()}
        if not wildcard:
            try:
                self._addresses.add(ipaddress.ip_address(listen))
            except ValueError:  # a name to listen on: requests may name it too
                names.add(listen.lower())
        names.update(n.strip().lower().rstrip(".") for n in extra.split(",") if n.strip())
        self._names = frozenset(names)
        self._allowed: set[str] = set()

    @classmethod
    def of(cls, listen: str, extra: str) -> AllowedHosts | None:
        """The check for a registry listening on ``listen``, or ``None`` when
        ``extra`` (``--allowed-hosts``) is ``*``."""
        if any(n.strip() == "*" for n in extra.split(",")):
            return None
        return cls(listen, extra)

    def allows(self, host: str | None) -> bool:
        """Whether a request whose ``Host`` header is ``host`` is for this registry."""
        if host is None:
            return False  # HTTP/1.1 requires it; only a hand-made request lacks it
        if host in self._allowed:
            return True
        if not self._names_registry(_hostname(host)):
            return False
        if len(self._allowed) < _MAX_REMEMBERED:
            self._allowed.add(host)
        return True

    def allows_origin(self, origin: str | None, host: str | None) -> bool:
        """Whether a WebSocket upgrade with this ``Origin`` (and ``Host``) may proceed."""
        if origin is None:
            return True  # not a browser
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:
            return False
        if not netloc:
            return False  # "null" (a sandboxed page or a file) or garbage
        name = _hostname(netloc)
        return (host is not None and name == _hostname(host)) or self._names_registry(name)

    def _names_registry(self, name: str) -> bool:
        if name in self._names:
            return True
        try:
            address = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            return False
        return self._any_address or address in self._addresses or address.is_loopback


def _hostname(host: str) -> str:
    """``host`` without its port, lower case: ``[::1]:8000`` -> ``[::1]``."""
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        return host if end < 0 else host[: end + 1]
    name, colon, _ = host.rpartition(":")
    return (name if colon else host).rstrip(".")


def require_origin(hosts: AllowedHosts | None, request: web.Request, doing: str) -> None:
    """403 ``origin_not_allowed`` for a browser's page of another site ``doing`` something
    (opening the watch, signing in); ``hosts`` is ``None`` when the check is off."""
    origin = request.headers.get(hdrs.ORIGIN)
    if hosts is not None and not hosts.allows_origin(origin, request.headers.get(hdrs.HOST)):
        raise ApiError(
            403,
            "origin_not_allowed",
            f"a page at {(origin or '')[:100]!r} may not {doing}: open it from the registry's own "
            "address, or start the registry with --allowed-hosts naming its host",
        )
