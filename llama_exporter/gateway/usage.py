"""The gateway's count of each model's use: requests in flight, waiting, on their way, last use.

Admission, the queue and unloading all read and update it; none of it is instance
state (that is the Supervisor's alone).
"""

from __future__ import annotations

from collections.abc import Callable

from llama_exporter.states import InstanceStatus, State

LIVE = frozenset({State.STARTING, State.READY})  # a place under the cap requests can use


class UseCounts:
    """Per model: requests in flight, waiting on its load, let go from the queue; last use."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.in_flight: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self.load_waiters: dict[str, int] = {}
        self.claims: dict[str, int] = {}  # waiters let go that have not come back yet
        self.requested_loads: set[str] = set()  # loads a request started, not settled yet

    def touch(self, model: str) -> None:
        """Record a use of model now."""
        self.last_used[model] = self._clock()

    def claim(self, model: str) -> None:
        """A queued request for model was let go and is on its way to it."""
        self.claims[model] = self.claims.get(model, 0) + 1

    def unclaim(self, model: str) -> None:
        """A request let go from the queue came back (or gave up)."""
        self.claims[model] = max(0, self.claims.get(model, 0) - 1)

    def busy(self, model: str) -> int:
        """Requests holding, loading, or on their way to model: it must not be evicted."""
        return (
            self.in_flight.get(model, 0)
            + self.load_waiters.get(model, 0)
            + self.claims.get(model, 0)
        )

    def abandoned(self, model: str) -> bool:
        """A load a request started that no request waits for any more."""
        return model in self.requested_loads and self.busy(model) == 0

    def last_use(self, status: InstanceStatus) -> float:
        """When the model was last used (else when it became ready, else its last change)."""
        return self.last_used.get(status.model, status.ready_at or status.since)
