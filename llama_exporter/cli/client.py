"""A small synchronous HTTP client for the control API, used by the CLI."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

from llama_exporter.config.settings import DEFAULT_PORT

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
API = "/api/v1/llama"


class ClientError(Exception):
    """The service answered with an error (status and its message)."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body or {}


class ServiceUnreachable(Exception):
    """Nothing answered at the service URL."""


@dataclass(frozen=True)
class Client:
    """Talks JSON to a running llama-exporter service."""

    base_url: str = DEFAULT_URL
    token: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None) -> Client:
        """Client for --url/--token, else LLAMA_EXPORTER_URL / LLAMA_EXPORTER_API_TOKEN."""
        return cls(
            base_url=(url or os.environ.get("LLAMA_EXPORTER_URL") or DEFAULT_URL).rstrip("/"),
            token=token or os.environ.get("LLAMA_EXPORTER_API_TOKEN") or None,
        )

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON answer or raise ClientError."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
            try:
                return json.loads(raw or b"null")
            except ValueError:
                raise ClientError(
                    resp.status, f"{url} did not answer JSON: is it a llama-exporter service?"
                ) from None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                decoded = json.loads(raw)
                message = decoded["error"]["message"]
            except (ValueError, KeyError, TypeError):
                decoded, message = None, raw.decode(errors="replace") or exc.reason
            raise ClientError(exc.code, str(message), decoded) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceUnreachable(
                f"no llama-exporter service answers at {self.base_url} ({reason}); "
                "start one with `llama-exporter serve` or pass --url"
            ) from None

    def get(self, path: str, **query: str) -> Any:
        """GET an API path."""
        return self.request("GET", API + path, query=query or None)

    def post(self, path: str, body: dict[str, Any] | None = None, **query: str) -> Any:
        """POST to an API path."""
        return self.request("POST", API + path, body=body, query=query or None)

    def delete(self, path: str) -> Any:
        """DELETE an API path."""
        return self.request("DELETE", API + path)
