"""CPU seconds and RSS of a process from /proc/<pid>/stat, its file-backed part from
/proc/<pid>/statm (psutil elsewhere).

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


def parse_statm(data: bytes) -> tuple[int, int]:
    """(RSS bytes, file-backed RSS bytes) from the text of /proc/<pid>/statm.

    statm's third field is the kernel's RssFile + RssShmem (the same counters
    /proc/<pid>/status prints), so RSS less it is RssAnon exactly.
    """
    fields = data.split()
    return int(fields[1]) * PAGE_SIZE, int(fields[2]) * PAGE_SIZE


def sample(pid: int) -> tuple[float, int, int | None]:
    """(CPU seconds, RSS bytes, file-backed RSS bytes or None) of pid; raises ProcessGone."""
    if _HAVE_PROC:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                cpu, rss = parse_stat(stat.read())
            with open(f"/proc/{pid}/statm", "rb") as statm:
                _, shared = parse_statm(statm.read())
        except (OSError, ValueError, IndexError) as exc:
            raise ProcessGone(pid) from exc
        return cpu, rss, min(shared, rss)  # two reads: never more file-backed than resident
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            cpu_times, memory = process.cpu_times(), process.memory_info()
    except (psutil.Error, OSError) as exc:
        raise ProcessGone(pid) from exc
    return cpu_times.user + cpu_times.system, memory.rss, getattr(memory, "shared", None)
