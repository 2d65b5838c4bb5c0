"""Instance states, allowed transitions, and the lifecycle's values and errors (no dependencies)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # STOPPING -> STARTING: a reload's restart keeps the model's place under the cap, and
    # requests waiting for it wait on through to the new instance.
    State.STOPPING: frozenset({State.STOPPED, State.FAILED, State.STARTING}),
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
    # The key readers send to the instance (the model's api_key, else the service's
    # instance key); kept out of repr so no log line or error message can show it.
    api_key: str | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str | None:
        """http://host:port of the running instance, if it has a port."""
        return f"http://{self.host}:{self.port}" if self.port is not None else None

    def uptime(self, now: float) -> float | None:
        """Seconds since ready, or None when not ready."""
        if self.state is not State.READY or self.ready_at is None:
            return None
        return max(0.0, now - self.ready_at)


# Settled: wait_settled() returns once the instance is in one of these.
SETTLED: frozenset[State] = frozenset({State.READY, State.FAILED, State.STOPPED})


@dataclass(frozen=True)
class InstanceCounters:
    """Per-model counters since the service started."""

    restarts_total: int = 0
    start_failures_total: int = 0
    start_rejected_total: int = 0


class UnknownModel(KeyError):
    """No model of that name is known."""

    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}: see `llama-exporter models` for the known names"


class CapExceeded(Exception):
    """Starting the model would exceed max_parallel."""

    def __init__(self, model: str, running: tuple[str, ...], cap: int) -> None:
        self.model, self.running, self.cap = model, running, cap
        super().__init__(
            f"cannot start {model!r}: {len(running)} of {cap} instances are running "
            f"({', '.join(running)}); stop one first or raise max_parallel"
        )


class ShuttingDown(Exception):
    """The service is shutting down and starts no more instances."""


class Conflict(Exception):
    """The instance is in a state that does not allow the request (e.g. stopping)."""


def backoff_delay(retries: int, initial: float, maximum: float) -> float:
    """Seconds to wait before restart number retries+1."""
    return float(min(initial * 2.0**retries, maximum))


# Why an instance started (model_loads_total{trigger}) and stopped (model_unloads_total{reason}).
LOAD_TRIGGERS = ("request", "api", "autostart", "restart", "reload")
UNLOAD_REASONS = ("evicted", "idle", "api", "shutdown", "reload")
