"""`serve --watch-config`: follow the config file and the GGUF files in model_dirs.

Polled, not inotify: one stat of the file and one listing per folder every
WATCH_INTERVAL, in a thread. An editor's save is often several writes (or a
rename); ``Debounce`` (pure) fires once the view has stayed the same for QUIET
seconds after a change, so a reload reads the finished file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.25  # seconds between looks
QUIET = 0.3  # seconds without a further change before a reload
# An edit is seen within WATCH_INTERVAL, applied after QUIET + WATCH_INTERVAL more at most.

View = tuple[object, ...]


def look(config: Path | None, folders: Iterable[Path]) -> View:
    """What is watched, as comparable values: the file's identity and each folder's GGUFs."""
    seen: list[object] = []
    if config is not None:
        try:
            st = os.stat(config)
            seen.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            seen.append(None)  # gone for now (an editor's rename): its return is a change
    for folder in folders:
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".gguf"))
        except OSError:
            names = []
        seen.append((str(folder), tuple(names)))
    return tuple(seen)


@dataclass
class Debounce:
    """Fires once per settled change: after a change, when QUIET seconds pass without another."""

    view: View
    quiet: float = QUIET
    changed_at: float | None = None  # the last change not yet fired

    def feed(self, view: View, now: float) -> bool:
        """A new look at now; True when a reload should run."""
        if view != self.view:
            self.view, self.changed_at = view, now
            return False
        if self.changed_at is not None and now - self.changed_at >= self.quiet:
            self.changed_at = None
            return True
        return False


async def watch(
    config: Path | None,
    folders: Callable[[], Iterable[Path]],
    trigger: Callable[[str], object],
    *,
    interval: float = WATCH_INTERVAL,
    quiet: float = QUIET,
) -> None:
    """Call trigger(why) after each settled change; folders() is read at every look."""
    loop = asyncio.get_running_loop()
    first = await asyncio.to_thread(look, config, list(folders()))
    debounce = Debounce(first, quiet)
    log.info("watching %s and %d model folder(s) for changes", config, len(first) - 1)
    while True:
        await asyncio.sleep(interval)
        try:
            view = await asyncio.to_thread(look, config, list(folders()))
        except Exception:  # a bug must not end watching
            log.exception("watching the config failed; trying again")
            continue
        if debounce.feed(view, loop.time()):
            trigger("the config file or a model folder changed")
