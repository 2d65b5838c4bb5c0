"""Tests for llama_exporter.monitoring.procstat: /proc/<pid>/stat against psutil."""

from __future__ import annotations

import os
import subprocess

import psutil
import pytest

from llama_exporter.monitoring import procstat


def test_parse_stat_with_an_awkward_command_name() -> None:
    fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", "250", "50"]
    fields += ["0", "0", "20", "0", "1", "0", "100", "123456", "1000"]
    data = ("4242 (llama) (x y) " + " ".join(fields) + " 18446744073709551615 0 0\n").encode()
    cpu, rss = procstat.parse_stat(data)
    assert cpu == pytest.approx(300 / procstat.CLOCK_TICKS)
    assert rss == 1000 * procstat.PAGE_SIZE


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "psutil"])
def test_sample_matches_psutil(proc: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procstat, "_HAVE_PROC", proc and procstat._HAVE_PROC)
    sum(range(2_000_000))  # some CPU time to read
    ours = procstat.sample(os.getpid())
    reference = psutil.Process()
    cpu, rss = reference.cpu_times(), reference.memory_info().rss
    assert ours[0] == pytest.approx(cpu.user + cpu.system, abs=0.05)
    assert ours[1] == pytest.approx(rss, rel=0.1)


def test_a_gone_process_raises() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(procstat.ProcessGone):
        procstat.sample(child.pid)
