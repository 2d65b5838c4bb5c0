"""What a Host header and a web origin look like: parsed and normalised (pure).

The config checks ``allowed_hosts`` and ``allowed_origins`` with these; the HTTP guard
compares requests with them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_host(value: str, default_port: int | None = None) -> tuple[str, int | None] | None:
    """A Host header (or netloc) as (lower-case name without brackets, port); None if malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/@ \t?#\\"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") > 1:
        return None  # a bare IPv6 address must be bracketed in Host
    else:
        name, _, port_text = value.partition(":")
        if ":" not in value:
            port_text = None
    if not name:
        return None
    if port_text is None:
        return name, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def normalise_origin(value: str) -> str | None:
    """'scheme://host:port' of an Origin or Referer value (explicit port); None if not a URL."""
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.netloc:
        return None
    host = split_host(parts.netloc.rsplit("@", 1)[-1], DEFAULT_PORTS[scheme])
    if host is None:
        return None
    name, port = host
    shown = f"[{name}]" if ":" in name else name
    return f"{scheme}://{shown}:{port}"
