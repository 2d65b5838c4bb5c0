"""The one way tests wait: poll a condition until it holds or a generous limit runs out.

A limit here is a safety net against a hang, never the thing under test: a loaded
machine may take many times longer than a quiet one, so limits are long and a test
never sleeps a fixed time to let something happen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_LIMIT = 60.0
_STEP = 0.01


def wait_until(
    predicate: Callable[[], T], what: str = "", *, limit: float = DEFAULT_LIMIT, step: float = _STEP
) -> T:
    """Call predicate until it returns something truthy, and return that (blocking)."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {limit:g} s for {what or predicate!r}; last: {value!r}")
        time.sleep(step)


async def async_wait_until(
    predicate: Callable[[], T], what: str = "", *, limit: float = DEFAULT_LIMIT, step: float = _STEP
) -> T:
    """Like wait_until, on the event loop (the loop keeps running between checks)."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {limit:g} s for {what or predicate!r}; last: {value!r}")
        await asyncio.sleep(step)
