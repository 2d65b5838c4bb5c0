"""Instance states and the transitions allowed between them (no dependencies)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """Lifecycle state of one model's llama-server instance; the value is a metric label."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"  # crashed or hung; waiting to be restarted
    FAILED = "failed"  # gave up: start failed and no restarts left


class TransitionError(RuntimeError):
    """Raised when code asks for a transition the state machine does not allow."""


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.READY, State.STOPPING, State.BACKOFF, State.FAILED}),
    State.READY: frozenset({State.STOPPING, State.BACKOFF, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED, State.FAILED}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED, State.FAILED}),
    State.FAILED: frozenset({State.STARTING, State.STOPPED}),
}

# A model waiting to be restarted keeps its place under the cap: otherwise a crash
# would free a slot that another start could take, and the restart would be refused.
COUNTS_AGAINST_CAP: frozenset[State] = frozenset(
    {State.STARTING, State.READY, State.STOPPING, State.BACKOFF}
)


def check_transition(old: State, new: State) -> None:
    """Raise TransitionError unless ``old -> new`` is allowed."""
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"illegal state transition {old} -> {new}")


@dataclass(frozen=True)
class InstanceStatus:
    """Immutable view of one model's instance, published on every state change."""

    model: str
    state: State
    since: float  # wall-clock time of the last state change
    pid: int | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    started_at: float | None = None  # wall-clock time the current process was spawned
    ready_at: float | None = None  # wall-clock time it answered /health 200
    restarts: int = 0  # automatic restarts since the service started
    retries: int = 0  # consecutive restarts without a stable run
    last_error: str | None = None
    next_retry_at: float | None = None  # wall-clock time of the next restart (BACKOFF)
    api_key: str | None = None  # llama-server --api-key, for readers of /slots and /metrics

    @property
    def base_url(self) -> str | None:
        """http://host:port of the running instance, if it has a port."""
        return f"http://{self.host}:{self.port}" if self.port is not None else None

    def uptime(self, now: float) -> float | None:
        """Seconds since ready, or None when not ready."""
        if self.state is not State.READY or self.ready_at is None:
            return None
        return max(0.0, now - self.ready_at)
