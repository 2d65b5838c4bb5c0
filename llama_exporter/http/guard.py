"""Cross-site and DNS-rebinding protection: pure decisions plus one thin aiohttp middleware.

A browser lets any web page send a "simple" cross-origin request (POST with a
text/plain or form body, no preflight) to a service on localhost, and a page on
a name the attacker controls can be re-pointed at 127.0.0.1 (DNS rebinding).
The rules, applied to every route (API, page, gateway, WebSocket):

- Host must be one of ours (the listen address, loopback names, the machine's
  names when listening on every interface, or ``allowed_hosts``), else 421.
- A state-changing request or a WebSocket handshake whose Origin or Referer is
  not our own origin nor in ``allowed_origins`` is refused with 403; any other
  request is refused only for a foreign Origin (a plain link from another site
  carries a Referer and must still open the page).
- A state-changing request with a body must say ``Content-Type:
  application/json``, else 415. A bodiless one (the CLI's ``stop``) may carry
  no Content-Type or any but the types a browser form or a simple
  cross-origin ``fetch`` sends (text/plain, form encodings): those are 415.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from llama_exporter.config.origins import DEFAULT_PORTS, normalise_origin, split_host

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
# What a page may send cross-origin without a preflight (a form, or fetch with text):
BROWSER_SIMPLE_TYPES = frozenset(
    {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"}
)


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the HTTP status and a message saying what to do."""

    status: int
    message: str


@dataclass(frozen=True)
class GuardPolicy:
    """Which Host values and foreign origins the service accepts (lower-case, normalised)."""

    names: frozenset[str]  # host names/addresses accepted on the service's own port
    any_port_names: frozenset[str]  # allowed_hosts entries given without a port
    exact_hosts: frozenset[str]  # allowed_hosts entries given as name:port
    allowed_origins: frozenset[str]  # "scheme://host:port"
    accept_local_address: bool  # listening on every interface: the address dialled is ours


def build_policy(
    listen_host: str,
    *,
    allowed_hosts: Iterable[str] = (),
    allowed_origins: Iterable[str] = (),
    machine_names: Iterable[str] = (),
) -> GuardPolicy:
    """The policy for a service listening on listen_host (machine_names: see machine_names())."""
    names = {n.lower() for n in LOOPBACK_NAMES}
    host = listen_host.strip("[]").lower()
    wildcard = host in WILDCARD_HOSTS
    if wildcard:
        names.update(n.lower() for n in machine_names if n)
    else:
        names.add(host)
    any_port: set[str] = set()
    exact: set[str] = set()
    for entry in allowed_hosts:
        parsed = split_host(entry)
        if parsed is None:
            raise ValueError(f"{entry!r} is not a host name, host:port or [IPv6]:port")
        name, port = parsed
        if port is None:
            any_port.add(name)
        else:
            exact.add(f"{name}:{port}")
    origins = set()
    for entry in allowed_origins:
        origin = normalise_origin(entry)
        if origin is None:
            raise ValueError(f"{entry!r} is not an origin like http://host:port")
        origins.add(origin)
    return GuardPolicy(
        names=frozenset(names),
        any_port_names=frozenset(any_port),
        exact_hosts=frozenset(exact),
        allowed_origins=frozenset(origins),
        accept_local_address=wildcard,
    )


def machine_names() -> set[str]:
    """This machine's host name and fully qualified name (accepted when listening on 0.0.0.0)."""
    found = {socket.gethostname()}
    with contextlib.suppress(OSError):
        found.add(socket.getfqdn())
    return {n.lower() for n in found if n}


def _same_address(name: str, local: str) -> bool:
    """True when name is the IP address local (an IPv4-mapped IPv6 local counts as IPv4)."""
    try:
        wanted = ipaddress.ip_address(name)
        got = ipaddress.ip_address(local.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(got, ipaddress.IPv6Address) and got.ipv4_mapped is not None:
        got = got.ipv4_mapped  # a dual-stack socket on "::" sees IPv4 clients this way
    return wanted == got


def check_host(
    host: str | None, policy: GuardPolicy, *, local_address: str | None, local_port: int
) -> Refusal | None:
    """421 unless Host names this service (DNS rebinding puts a foreign name there)."""
    parsed = split_host(host or "")
    if parsed is not None:
        name, port = parsed
        if name in policy.any_port_names or f"{name}:{port}" in policy.exact_hosts:
            return None
        ours = name in policy.names or (
            policy.accept_local_address
            and local_address is not None
            and _same_address(name, local_address)
        )
        if ours and (port or 80) == local_port:
            return None
    return Refusal(
        421,
        f"Host {host!r} is not a name of this service: a page on another name may have been "
        "pointed at this address (DNS rebinding). If you reach the service by that name, "
        "add it to allowed_hosts in the config",
    )


def check_origin(
    headers: Mapping[str, str], policy: GuardPolicy, *, strict: bool
) -> Refusal | None:
    """403 for a foreign Origin (and, when strict, a foreign Referer); Host is already ours."""
    host = split_host(headers.get("Host", ""))
    for header in ("Origin", "Referer") if strict else ("Origin",):
        value = headers.get(header)
        if value is None:
            continue
        origin = normalise_origin(value)
        if origin is not None:
            if origin in policy.allowed_origins:
                continue
            scheme, _, netloc = origin.partition("://")
            if host is not None and split_host(netloc) == (
                host[0],
                host[1] or DEFAULT_PORTS[scheme],
            ):
                continue
        return Refusal(
            403,
            f"{header} {value!r} is not this service's own origin: requests from other web "
            "pages are refused. To allow that page, add its origin to allowed_origins",
        )
    return None


def check_body(method: str, content_type: str | None, has_body: bool) -> Refusal | None:
    """415 when a state-changing request carries anything but JSON."""
    if method not in STATE_CHANGING:
        return None
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (not has_body and media not in BROWSER_SIMPLE_TYPES):
        return None
    shown = media or "none"
    return Refusal(
        415,
        f"this call takes a JSON body: send Content-Type: application/json (got {shown})",
    )


def is_websocket_handshake(method: str, headers: Mapping[str, str]) -> bool:
    """True for a WebSocket upgrade request."""
    return method == "GET" and headers.get("Upgrade", "").lower() == "websocket"


def decide(
    method: str,
    headers: Mapping[str, str],
    policy: GuardPolicy,
    *,
    has_body: bool,
    local_address: str | None,
    local_port: int,
) -> Refusal | None:
    """Every guard rule in order (Host, Origin/Referer, body type); None: let it through."""
    refusal = check_host(
        headers.get("Host"), policy, local_address=local_address, local_port=local_port
    )
    if refusal is not None:
        return refusal
    strict = method in STATE_CHANGING or is_websocket_handshake(method, headers)
    refusal = check_origin(headers, policy, strict=strict)
    if refusal is not None:
        return refusal
    return check_body(method, headers.get("Content-Type"), has_body)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Respond = Callable[[Refusal], web.StreamResponse]


def guard_middleware(
    policy: Callable[[], GuardPolicy], respond: Respond
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The aiohttp middleware applying decide() to every request; respond() builds the error.

    policy() is read at each request: a config reload replaces it.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        local_address = sockname[0] if sockname else None
        local_port = sockname[1] if sockname else 0
        refusal = decide(
            request.method,
            request.headers,
            policy(),
            has_body=request.body_exists,
            local_address=local_address,
            local_port=local_port,
        )
        if refusal is not None:
            return respond(refusal)
        return await handler(request)

    return middleware
