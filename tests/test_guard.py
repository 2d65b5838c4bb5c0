"""guard.py: Host, Origin/Referer and body-type decisions, without an event loop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.config.origins import normalise_origin, split_host
from llama_exporter.http.guard import (
    GuardPolicy,
    Refusal,
    build_policy,
    check_body,
    check_host,
    decide,
)

PORT = 9777
LOCAL = build_policy("127.0.0.1")
EVERYWHERE = build_policy(
    "0.0.0.0", allowed_hosts=["proxy.lan", "gw.lan:8443"], machine_names=["box", "box.lan"]
)


def headers(**values: str) -> dict[str, str]:
    """Header dict with Host defaulting to our own address."""
    out = {"Host": f"127.0.0.1:{PORT}"}
    out.update({k.replace("_", "-"): v for k, v in values.items()})
    return out


def run(
    method: str, hdrs: dict[str, str], *, has_body: bool = False, policy: GuardPolicy = LOCAL
) -> Refusal | None:
    """decide() for a request that arrived on 127.0.0.1:PORT."""
    return decide(
        method, hdrs, policy, has_body=has_body, local_address="127.0.0.1", local_port=PORT
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9777", ("127.0.0.1", 9777)),
        ("LocalHost:9777", ("localhost", 9777)),
        ("[::1]:9777", ("::1", 9777)),
        ("example.com", ("example.com", None)),
        ("::1", None),
        ("a:b", None),
        ("a:0", None),
        ("a:70000", None),
        ("user@a:1", None),
        ("", None),
        ("[::1", None),
    ],
)
def test_split_host(value: str, expected: tuple[str, int | None] | None) -> None:
    assert split_host(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:9777", "http://127.0.0.1:9777"),
        ("http://localhost", "http://localhost:80"),
        ("https://Example.com/page?x=1", "https://example.com:443"),
        ("http://[::1]:9777/ui/", "http://[::1]:9777"),
        ("null", None),
        ("file:///etc/passwd", None),
        ("javascript:alert(1)", None),
    ],
)
def test_normalise_origin(value: str, expected: str | None) -> None:
    assert normalise_origin(value) == expected


@pytest.mark.parametrize(
    "host", ["127.0.0.1:9777", "localhost:9777", "[::1]:9777", "LOCALHOST:9777"]
)
def test_loopback_names_with_our_port_are_accepted(host: str) -> None:
    assert check_host(host, LOCAL, local_address="127.0.0.1", local_port=PORT) is None


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:9777",  # DNS rebinding: the attacker's name now resolves to 127.0.0.1
        "evil.example",
        "127.0.0.1:80",
        "localhost",  # port 80 is not ours
        "",
        "127.0.0.1:9777/x",
        None,
    ],
)
def test_rebinding_and_malformed_hosts_are_421(host: str | None) -> None:
    refusal = check_host(host, LOCAL, local_address="127.0.0.1", local_port=PORT)
    assert refusal is not None and refusal.status == 421
    assert "allowed_hosts" in refusal.message


def test_listening_everywhere_accepts_machine_names_the_dialled_address_and_allowed_hosts() -> None:
    def ok(host: str, local: str = "192.168.1.5") -> bool:
        return check_host(host, EVERYWHERE, local_address=local, local_port=PORT) is None

    assert ok("box:9777") and ok("BOX.lan:9777") and ok("localhost:9777")
    assert ok("192.168.1.5:9777")  # the address this connection arrived on
    assert not ok("192.168.1.6:9777")  # another host's address
    assert ok("proxy.lan") and ok("proxy.lan:443")  # allowed without a port: any port
    assert ok("gw.lan:8443") and not ok("gw.lan:8444")
    assert not ok("evil.example:9777")
    assert not ok("0.0.0.0:9777", local="10.0.0.1")
    assert ok("192.168.1.5:9777", local="::ffff:192.168.1.5")  # dual-stack "::" socket
    assert ok("[fe80::1]:9777", local="fe80::1%eth0")
    assert not ok("[::ffff:192.168.1.6]:9777", local="::ffff:192.168.1.5")


def test_a_specific_listen_address_is_accepted_but_not_machine_names() -> None:
    policy = build_policy("10.1.2.3", machine_names=["box"])
    assert check_host("10.1.2.3:9777", policy, local_address="10.1.2.3", local_port=PORT) is None
    refusal = check_host("box:9777", policy, local_address="10.1.2.3", local_port=PORT)
    assert refusal is not None and refusal.status == 421


def test_bad_allowed_entries_raise() -> None:
    with pytest.raises(ValueError, match="origin"):
        build_policy("127.0.0.1", allowed_origins=["evil.example"])
    with pytest.raises(ValueError, match="host"):
        build_policy("127.0.0.1", allowed_hosts=["a/b"])


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_foreign_origin_or_referer_on_a_change_is_403(method: str) -> None:
    for hdrs in (
        headers(Origin="http://evil.example"),
        headers(Origin="null"),
        headers(Referer="http://evil.example/attack.html"),
        headers(Origin=f"http://127.0.0.1:{PORT}", Referer="http://evil.example/"),
        headers(Origin=f"http://localhost:{PORT}"),  # another of our names is another origin
    ):
        refusal = run(method, hdrs)
        assert refusal is not None and refusal.status == 403, hdrs
        assert "allowed_origins" in refusal.message


def test_own_origin_and_allowed_origins_pass() -> None:
    assert run("POST", headers(Origin=f"http://127.0.0.1:{PORT}")) is None
    assert run("POST", headers(Referer=f"http://127.0.0.1:{PORT}/ui/index.html")) is None
    policy = build_policy("127.0.0.1", allowed_origins=["https://grafana.lan"])
    assert run("POST", headers(Origin="https://grafana.lan:443"), policy=policy) is None
    assert run("POST", headers(Origin="http://grafana.lan"), policy=policy) is not None


def test_safe_requests_are_refused_for_a_foreign_origin_but_not_a_foreign_referer() -> None:
    refusal = run("GET", headers(Origin="http://evil.example"))
    assert refusal is not None and refusal.status == 403
    # A link on another site to the page carries a Referer: the page must still open.
    assert run("GET", headers(Referer="http://grafana.lan/d/x")) is None


def test_websocket_handshake_applies_the_strict_origin_rule() -> None:
    ws = {"Upgrade": "websocket", "Connection": "Upgrade"}
    refusal = run("GET", {**headers(Origin="http://evil.example"), **ws})
    assert refusal is not None and refusal.status == 403
    refusal = run("GET", {**headers(Referer="http://evil.example/"), **ws})
    assert refusal is not None and refusal.status == 403
    assert run("GET", {**headers(Origin=f"http://127.0.0.1:{PORT}"), **ws}) is None


@pytest.mark.parametrize(
    ("content_type", "has_body", "status"),
    [
        ("application/json", True, None),
        ("application/json; charset=utf-8", True, None),
        (None, False, None),  # the CLI's bodiless POST .../stop
        ("application/octet-stream", False, None),  # aiohttp's bodiless POST
        ("application/octet-stream", True, 415),
        ("text/plain", True, 415),
        ("text/plain", False, 415),
        ("application/x-www-form-urlencoded", False, 415),
        ("multipart/form-data; boundary=x", True, 415),
        (None, True, 415),
    ],
)
def test_state_changing_bodies_must_be_json(
    content_type: str | None, has_body: bool, status: int | None
) -> None:
    refusal = check_body("POST", content_type, has_body)
    assert (refusal.status if refusal else None) == status
    assert check_body("GET", content_type, has_body) is None


def test_host_is_checked_before_origin() -> None:
    refusal = run("POST", headers(Host="evil.example", Origin="http://evil.example"))
    assert refusal is not None and refusal.status == 421


_names = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5}){0,2}", fullmatch=True)


@given(name=_names, port=st.integers(1, 65535))
def test_foreign_names_are_never_accepted(name: str, port: int) -> None:
    if name == "localhost":
        return
    assert check_host(f"{name}:{port}", LOCAL, local_address="127.0.0.1", local_port=PORT)


@given(
    method=st.sampled_from(["POST", "PUT", "PATCH", "DELETE"]),
    origin=st.builds(lambda n, p: f"http://{n}:{p}", _names, st.integers(1, 65535)),
    content_type=st.sampled_from(["application/json", "text/plain", None]),
)
def test_no_foreign_origin_gets_through_a_change(
    method: str, origin: str, content_type: str | None
) -> None:
    hdrs = headers(Origin=origin)
    if content_type:
        hdrs["Content-Type"] = content_type
    refusal = run(method, hdrs, has_body=True)
    if origin == f"http://127.0.0.1:{PORT}":
        return
    assert refusal is not None and refusal.status in (403, 415)
