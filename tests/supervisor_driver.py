"""Run a Supervisor with two fake servers, print their pids as JSON, then sleep (to be killed).

Usage: python supervisor_driver.py FAKE_BIN STATE_DIR FIRST_PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from llama_exporter.config.settings import Config, ModelConfig, PortRange
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.supervisor import Supervisor


async def _main(fake_bin: Path, state_dir: Path, first_port: int) -> None:
    config = Config(
        source=None,
        llama_server=fake_bin,
        state_dir=state_dir,
        ports=PortRange(first_port, first_port + 20),
    )
    models = StaticModels([ModelConfig(n, state_dir / f"{n}.gguf") for n in ("one", "two")])
    supervisor = Supervisor(config, models)
    for name in models.names():
        await supervisor.start(name)
    statuses = [await supervisor.wait_settled(n, timeout=30) for n in models.names()]
    print(json.dumps([s.pid for s in statuses]), flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(_main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
