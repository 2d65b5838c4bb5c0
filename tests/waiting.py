"""The one way tests wait: poll a condition until it holds or a generous limit runs out.

A limit here is a safety net against a hang, never the thing under test: a loaded
machine may take many times longer than a quiet one, so limits are long and a test
never sleeps a fixed time to let something happen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

DEFAULT_LIMIT = 60.0
_STEP = 0.01


def wait_until(
    predicate: Callable[[], T | None],
    what: str = "",
    *,
    limit: float = DEFAULT_LIMIT,
    step: float = _STEP,
) -> T:
    """Call predicate until it returns something truthy, and return that (blocking)."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:  # truthy, so not None
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {limit:g} s for {what or predicate!r}; last: {value!r}")
        time.sleep(step)


@overload
async def async_wait_until(
    predicate: Callable[[], Awaitable[T | None]],
    what: str = "",
    *,
    limit: float = DEFAULT_LIMIT,
    step: float = _STEP,
) -> T: ...


@overload
async def async_wait_until(
    predicate: Callable[[], T | None],
    what: str = "",
    *,
    limit: float = DEFAULT_LIMIT,
    step: float = _STEP,
) -> T: ...


async def async_wait_until(
    predicate: Callable[[], object],
    what: str = "",
    *,
    limit: float = DEFAULT_LIMIT,
    step: float = _STEP,
) -> object:
    """Like wait_until, on the event loop (the loop keeps running between checks).

    predicate may be a coroutine function (a check that makes a request): it is awaited.
    """
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {limit:g} s for {what or predicate!r}; last: {value!r}")
        await asyncio.sleep(step)
