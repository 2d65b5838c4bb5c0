"""Random interleavings of start, stop, crash and time against the Supervisor.

Whatever the order, and however the operations overlap: never more live processes
than the cap, every state change is one the state machine allows (none is refused
and turned into an "internal error"), only the errors a caller can act on are
raised, and shutdown leaves no process behind.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_supervisor import FakeSpawner, config, models

from llama_exporter.config.settings import RestartPolicy
from llama_exporter.states import (
    COUNTS_AGAINST_CAP,
    TRANSITIONS,
    CapExceeded,
    Conflict,
    InstanceStatus,
    ShuttingDown,
    State,
)
from llama_exporter.supervision.supervisor import Supervisor

MODELS = 5
CAP = 2

operation = st.one_of(
    st.tuples(st.sampled_from(["start", "stop", "crash", "hang"]), st.integers(0, MODELS - 1)),
    st.tuples(st.just("tick"), st.integers(0, 3)),
)


async def run(ops: list[tuple[str, int]], tmp: Path) -> None:
    policy = RestartPolicy(max_retries=2, backoff_initial=0.001, backoff_max=0.004)
    spawner = FakeSpawner()
    sup = Supervisor(
        config(
            tmp,
            Path("/nonexistent/llama-server"),
            max_parallel=CAP,
            restart=policy,
            hang_timeout=0.003,
        ),
        models(MODELS, tmp / "x.gguf"),
        spawn=spawner,
        watchdog_interval=0.001,
    )
    violations: list[str] = []
    last: dict[str, InstanceStatus] = {}

    def check(status: InstanceStatus) -> None:
        old = last.get(status.model)
        moved = old is not None and old.state is not status.state
        if old is not None and moved and status.state not in TRANSITIONS[old.state]:
            violations.append(f"{status.model}: {old.state} -> {status.state}")
        # An illegal transition is never published: it raises, and the life task turns
        # it into FAILED "internal error: ..." (then STOPPED at shutdown, all legal).
        if status.last_error is not None and "internal error" in status.last_error:
            violations.append(f"{status.model}: {status.last_error}")
        last[status.model] = status
        alive = sum(1 for inst in spawner.instances if inst.returncode is None)
        if alive > CAP:
            violations.append(f"{alive} live processes with cap {CAP}")
        if sup.running_count > CAP:
            violations.append(f"running_count {sup.running_count} > cap")

    sup.subscribe(check)
    tasks: list[asyncio.Task[InstanceStatus]] = []
    for kind, i in ops:
        name = f"m{i}"
        if kind == "start":
            tasks.append(asyncio.create_task(sup.start(name)))
        elif kind == "stop":
            tasks.append(asyncio.create_task(sup.stop(name)))
        elif kind in ("crash", "hang"):
            live = [x for x in spawner.by_model.get(name, []) if x.returncode is None]
            for inst in live:
                if kind == "crash":
                    inst.finish(1)
                else:
                    inst.healthy = False
        else:
            for _ in range(i + 1):
                await asyncio.sleep(0.001)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    unexpected = [
        r
        for r in results
        if isinstance(r, BaseException) and not isinstance(r, CapExceeded | Conflict | ShuttingDown)
    ]
    assert not unexpected, unexpected
    await sup.shutdown()
    assert not violations, violations
    assert all(inst.returncode is not None for inst in spawner.instances)
    assert all(s.state is State.STOPPED for s in sup.statuses())
    assert not any(s.state in COUNTS_AGAINST_CAP for s in sup.statuses())


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(operation, min_size=1, max_size=30))
def test_random_interleavings_keep_the_invariants(
    ops: list[tuple[str, int]], tmp_path: Path
) -> None:
    asyncio.run(run(ops, tmp_path))
