"""The OpenAPI description: served, valid, and covering every route the app has."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web
from test_api import API, Client, MakeClient, make_config

from llama_exporter.http.app import create_app
from llama_exporter.http.openapi import describe

_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, OpenAPI-style path) of every route (HEAD is aiohttp's automatic twin of GET)."""
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        assert path is not None, f"cannot tell the path of {route}"
        # aiohttp writes {name:regex}; OpenAPI writes {name}.
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", str(path))
        # A route for any method ("*") must be described for each of them.
        for method in sorted(_METHODS) if route.method == "*" else [route.method]:
            found.add((method, path))
    return found


def described_routes() -> set[tuple[str, str]]:
    """(method, path) of every operation in the description."""
    return {
        (method.upper(), path)
        for path, item in describe()["paths"].items()
        for method in item
        if method.upper() in _METHODS
    }


async def test_every_route_is_described(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client: Client = await aiohttp_client(create_app(make_config(tmp_path, fake_server_bin)))
    routes = app_routes(client.app)
    missing = routes - described_routes()
    assert not missing, f"routes missing from llama_exporter/openapi.py: {sorted(missing)}"
    extra = described_routes() - routes
    assert not extra, f"described but not served: {sorted(extra)}"


async def test_the_description_is_served_and_valid(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    import schemathesis

    client: Client = await aiohttp_client(create_app(make_config(tmp_path, fake_server_bin)))
    resp = await client.get(f"{API}/openapi.json")
    assert resp.status == 200
    document = await resp.json()
    assert document == describe()
    schema = schemathesis.openapi.from_dict(document)
    results = list(schema.get_all_operations())
    problems = [r.err() for r in results if not hasattr(r, "ok")]
    assert problems == []
    assert len(results) == len(described_routes())
