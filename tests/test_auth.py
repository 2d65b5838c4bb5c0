"""auth.py: which routes need which token, token comparison, the WebSocket auth message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.http.auth import (
    Tokens,
    accepted_tokens,
    bearer,
    check_request,
    parse_auth_message,
    token_matches,
)

BOTH = Tokens("api", "scrape")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/healthz", None),
        ("HEAD", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/", None),
        ("GET", "/ui/app.js", None),
        ("POST", "/", ("api",)),
        ("POST", "/healthz", ("api",)),
        ("GET", "/metrics", ("api", "scrape")),
        ("GET", "/api/v1/llama/targets", ("api", "scrape")),
        ("GET", "/api/v1/llama/models", ("api",)),
        ("GET", "/api/v1/llama/ws", ("api",)),
        ("GET", "/v1/models", ("api",)),
        ("POST", "/api/v1/llama/models/m/start", ("api",)),
        ("GET", "/uix", ("api",)),
    ],
)
def test_accepted_tokens(method: str, path: str, expected: tuple[str, ...] | None) -> None:
    assert accepted_tokens(method, path, BOTH) == expected


def test_without_tokens_nothing_is_needed_and_scrape_token_alone_guards_scrapes() -> None:
    assert accepted_tokens("POST", "/api/v1/llama/models", Tokens(None)) is None
    only_scrape = Tokens(None, "s")
    assert accepted_tokens("GET", "/metrics", only_scrape) == ("s",)
    assert accepted_tokens("GET", "/api/v1/llama/models", only_scrape) is None


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("Bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


@given(given_token=st.text(max_size=20), real=st.text(min_size=1, max_size=20))
def test_token_matches_only_the_exact_token(given_token: str, real: str) -> None:
    assert token_matches(given_token, [real]) == (given_token == real)
    assert token_matches(real, ["other-" + real, real])
    assert not token_matches(None, [real])


def test_check_request_names_the_token_to_send() -> None:
    refusal = check_request("GET", "/metrics", {}, BOTH)
    assert refusal is not None and refusal.status == 401
    assert "scrape_token" in refusal.message
    refusal = check_request("POST", "/api/v1/llama/models/m/stop", {}, BOTH)
    assert refusal is not None and "api_token" in refusal.message
    assert check_request("POST", "/x", {"Authorization": "Bearer api"}, BOTH) is None
    assert check_request("GET", "/metrics", {"Authorization": "Bearer scrape"}, BOTH) is None
    assert check_request("POST", "/x", {"Authorization": "Bearer scrape"}, BOTH) is not None


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ('{"type": "auth", "token": "t"}', "t"),
        ('{"type": "auth", "token": 5}', None),
        ('{"type": "auth"}', None),
        ('{"model": null}', None),
        ('["auth", "t"]', None),
        ("not json", None),
    ],
)
def test_parse_auth_message(text: str, token: str | None) -> None:
    assert parse_auth_message(text) == token
