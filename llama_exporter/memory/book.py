"""MemoryBook: each model's figure for admission, learned from a past load, else estimated.

Every method may block (GGUF header reads, the learned file): the caller runs it in a
thread. The estimate is estimate.py's; the learned figure is report.py's parse of what
llama-server allocated, kept by learned.py under the file and the memory settings.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from pathlib import Path

from llama_exporter.catalog.gguf_header import GGUFHeaderCache
from llama_exporter.config.settings import ModelConfig
from llama_exporter.memory.estimate import cpu_repack_types, estimate
from llama_exporter.memory.figure import DeviceNeed, MemoryFigure
from llama_exporter.memory.launch import model_launch
from llama_exporter.memory.learned import LearnedFigures, file_key
from llama_exporter.memory.report import LoadReport, parse_report

log = logging.getLogger(__name__)

# A load that died out of memory needed more than its figure said, by an amount nobody
# logged. The next figure is the last one plus a quarter on every device: enough that
# admission makes real room (evicts, or waits) rather than repeating the same load,
# small enough that one failure does not lock a model out of a budget it fits. A load
# that succeeds afterwards replaces it with the exact figure.
OOM_RAISE = 1.25
SKIPS_FILE = "gguf-skips.json"  # where long header arrays end, per file version


def context_note(model: ModelConfig, report: LoadReport) -> str | None:
    """A warning when the instance got less context than configured (--fit, on by default
    in this llama.cpp, may lower settings to fit free memory), else None."""
    wanted = -(-model_launch(model).ctx_size // 256) * 256  # llama_context pads to 256
    if report.n_ctx is None or report.n_ctx >= wanted - 256 * max(1, model.parallel):
        return None  # equal, up to the rounding to a multiple of parallel x 256
    return (
        f"model {model.name}: llama-server runs with n_ctx = {report.n_ctx} "
        f"({report.n_ctx_slot} per slot), not the configured ctx_size {model.ctx_size}: "
        "its --fit lowered it to fit free memory; lower ctx_size, or pass --fit off in args "
        "to fail instead"
    )


def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def _raised(figure: MemoryFigure) -> MemoryFigure:
    devices = {
        device: DeviceNeed(
            weights=need.weights,
            kv=need.kv,
            compute=need.compute + int(need.total * (OOM_RAISE - 1.0)),
        )
        for device, need in figure.devices.items()
    }
    return MemoryFigure(
        devices=devices, source="learned", shared_weights_key=figure.shared_weights_key
    )


class MemoryBook:
    """Figures by model: learned if a load of the same file and settings was seen."""

    def __init__(
        self,
        state_dir: Path,
        headers: GGUFHeaderCache | None = None,
        *,
        gpus: tuple[str, ...] = (),
        repack: frozenset[int] | None = None,
    ) -> None:
        self.learned = LearnedFigures(state_dir)
        self.headers = headers or GGUFHeaderCache(Path(state_dir) / SKIPS_FILE)
        self.gpus = gpus  # device names llama-server offloads to, e.g. ("cuda0",)
        self.repack = (
            cpu_repack_types(platform.machine(), _cpu_flags()) if repack is None else repack
        )

    def key(self, model: ModelConfig) -> str:
        """Where the learned figure of this model (file and memory settings) is kept."""
        # not the GPU list: a load's report is what that load did, whatever we assumed
        return file_key(model.path, model_launch(model).key())

    def estimate(self, model: ModelConfig) -> MemoryFigure:
        """The figure before any load: from the GGUF header and the launch settings."""
        header = self.headers.get(model.path)
        return estimate(
            header,
            model_launch(model),
            gpus=self.gpus,
            repack=self.repack,
            shared_weights_key=str(Path(model.path).expanduser().resolve()),
        )

    def figure(self, model: ModelConfig) -> MemoryFigure:
        """The learned figure if known, else the estimate (``source`` says which)."""
        learned = self.learned.get(self.key(model))
        return learned if learned is not None else self.estimate(model)

    def learn(self, model: ModelConfig, report: LoadReport) -> None:
        """Keep what a load really allocated as the model's figure from now on."""
        if not report.buffers:
            return  # nothing was logged (verbosity below 4): keep what we had
        shared = str(Path(model.path).expanduser().resolve())
        self.learned.put(self.key(model), report.figure(shared_weights_key=shared))
        note = context_note(model, report)
        if note:
            log.warning("%s", note)

    def learn_lines(self, model: ModelConfig, lines: Sequence[str]) -> None:
        """learn() from the raw lines of a load (supervision hands them over as they came)."""
        self.learn(model, parse_report(lines))

    def raise_after_oom(self, model: ModelConfig) -> None:
        """A load died out of memory: the next figure is this one raised by OOM_RAISE."""
        self.learned.put(self.key(model), _raised(self.figure(model)))
