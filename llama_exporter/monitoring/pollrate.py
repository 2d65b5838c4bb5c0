"""When to read an instance: every tick while busy, every idle_interval while idle (pure).

An idle instance (its last read showed no slot processing, no request waiting
and no new token) changes nothing until a request arrives, so it is read less
often. A request makes llama-server burn CPU (tokenizing, prompt processing,
generation): the poller samples the process's CPU time every tick (one /proc
read, far cheaper than two HTTP requests) and reads at once when it moved by
WAKE_CPU_SECONDS or more, or when the gateway has a request in flight for it.
"""

from __future__ import annotations

from llama_exporter.monitoring.derive import ModelSnapshot

# CPU seconds an idle llama-server must use between two ticks to be read at once:
# two 10 ms clock ticks of /proc's accounting. Answering our reads costs it well
# under a millisecond; a request's tokenizing and decoding cost more.
WAKE_CPU_SECONDS = 0.02


def is_idle(snapshot: ModelSnapshot) -> bool:
    """Nothing processing, nothing waiting, and no token since the read before."""
    return (
        snapshot.slots_busy == 0
        and snapshot.requests_waiting == 0
        and snapshot.tokens_per_second == 0.0
    )


def read_now(
    *,
    idle: bool,
    since_read: float,
    interval: float,
    idle_interval: float,
    cpu_used: float | None,
    in_flight: int = 0,
) -> bool:
    """Whether this tick reads the instance.

    since_read: seconds since its last full read; cpu_used: CPU seconds the process
    used since the previous tick (None: unknown); in_flight: gateway requests now.
    """
    if not idle or idle_interval <= interval or in_flight > 0:
        return True
    if cpu_used is None or cpu_used >= WAKE_CPU_SECONDS:
        return True
    # Half a tick of slack: ticks drift by a few ms and must not skip a whole tick.
    return since_read >= idle_interval - interval / 2
