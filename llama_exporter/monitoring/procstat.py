"""CPU seconds and RSS of a process from one read of /proc/<pid>/stat (psutil elsewhere).

psutil's cpu_times() and memory_info() read /proc/<pid>/stat and /proc/<pid>/statm
inside a oneshot() cache, about 12 % of the poller's CPU at 64 busy instances;
both values are in stat, so one read does. Without /proc, psutil answers.
"""

from __future__ import annotations

import os

import psutil

_HAVE_PROC = os.path.isdir("/proc/self") and hasattr(os, "sysconf")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if _HAVE_PROC else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if _HAVE_PROC else 4096


class ProcessGone(Exception):
    """The process does not exist (any more) or cannot be read."""


def parse_stat(data: bytes) -> tuple[float, int]:
    """(user + system CPU seconds, RSS bytes) from the text of /proc/<pid>/stat."""
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    utime, stime, rss_pages = int(fields[11]), int(fields[12]), int(fields[21])
    return (utime + stime) / CLOCK_TICKS, rss_pages * PAGE_SIZE


def sample(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of pid; raises ProcessGone."""
    if _HAVE_PROC:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                return parse_stat(stat.read())
        except (OSError, ValueError, IndexError) as exc:
            raise ProcessGone(pid) from exc
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            cpu, memory = process.cpu_times(), process.memory_info()
    except (psutil.Error, OSError) as exc:
        raise ProcessGone(pid) from exc
    return cpu.user + cpu.system, memory.rss
