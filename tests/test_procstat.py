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


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.mark.skipif(not procstat._HAVE_PROC, reason="needs /proc")
def test_file_backed_rss_is_rssfile_plus_rssshmem() -> None:
    """statm's shared pages are what /proc/PID/status calls RssFile + RssShmem."""
    _, rss, file = procstat.sample(os.getpid())
    assert file is not None and 0 < file <= rss  # the interpreter's mapped libraries
    want = (_status_kib("RssFile") + _status_kib("RssShmem")) * 1024
    assert file == pytest.approx(want, rel=0.05, abs=256 * 1024)
    assert rss - file == pytest.approx(_status_kib("RssAnon") * 1024, rel=0.05, abs=256 * 1024)


def test_parse_statm() -> None:
    assert procstat.parse_statm(b"5000 1200 300 10 0 900 0\n") == (
        1200 * procstat.PAGE_SIZE,
        300 * procstat.PAGE_SIZE,
    )


def test_a_gone_process_raises() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(procstat.ProcessGone):
        procstat.sample(child.pid)
