"""The service's instance key: <state_dir>/instance.key, made once (0600), then reused.

Every llama-server the service starts requires this key (``--api-key-file``), so a web
page or another local user cannot drive an instance's port directly; the service's own
readers (health probe, poller, gateway, /upstream) send it, and Prometheus reads the same
file (``credentials_file``). The file is created atomically: written in full to a temp
file of mode 0600 beside it, then hard-linked into place, so nobody ever reads half a key
and a key that exists already is never overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from llama_exporter.atomic import fsync_dir

log = logging.getLogger(__name__)

KEY_FILE = "instance.key"
KEY_BYTES = 32  # of randomness: token_urlsafe makes 43 characters of them
MIN_KEY_CHARS = 32  # a key the operator put there (one key for many hosts) is this long
_KEY_TEXT = re.compile(r"[\x21-\x7e]+")  # one word of printable ASCII: no space, no '#' first


class InstanceKeyError(Exception):
    """The key file exists but cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class InstanceKey:
    """The key and the file that holds it (the value never shows in a repr)."""

    path: Path
    value: str = field(repr=False)


def key_path(state_dir: Path) -> Path:
    """Where the service keeps its instance key."""
    return state_dir / KEY_FILE


def check_key_text(text: str) -> str | None:
    """What is wrong with a key file's content, or None when it holds one usable key."""
    value = text.strip()
    if not value:
        return "is empty"
    if "\n" in value or not _KEY_TEXT.fullmatch(value) or value.startswith("#"):
        # llama-server reads every line as a key and '#' lines as comments: one word only.
        return "must hold one key on one line (printable characters, no spaces, no '#' first)"
    if len(value) < MIN_KEY_CHARS:
        return f"holds a key of {len(value)} characters; at least {MIN_KEY_CHARS} are needed"
    return None


def read_instance_key(path: Path) -> InstanceKey:
    """Read an existing key file; its mode is narrowed to 0600 if others could read it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s was readable by others (mode %o): changed to 0600", path, mode)
    text = path.read_text(encoding="ascii", errors="replace")
    problem = check_key_text(text)
    if problem is not None:
        raise InstanceKeyError(
            f"the instance key file {path} {problem}: delete it and the service makes a new "
            "one at start (then give Prometheus the new file), or write a key of at least "
            f"{MIN_KEY_CHARS} random characters into it"
        )
    return InstanceKey(path, text.strip())


def load_or_create_instance_key(state_dir: Path) -> InstanceKey:
    """The key in <state_dir>/instance.key, made first (32 random bytes, mode 0600) if absent."""
    path = key_path(state_dir)
    try:
        if path.exists():
            return read_instance_key(path)
        return _create(state_dir, path)
    except OSError as exc:
        raise InstanceKeyError(
            f"cannot read or create the instance key {path}: {exc.strerror or exc} (check "
            "that state_dir is a folder the service's user may write)"
        ) from exc


def _create(state_dir: Path, path: Path) -> InstanceKey:
    state_dir.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600: the key is never readable by others.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{KEY_FILE}.", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(KEY_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp_name, path)  # atomic, and never replaces a key made meanwhile
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: rename is atomic too
            os.replace(tmp_name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    fsync_dir(state_dir)
    log.info("created the instance key %s (Prometheus reads it: credentials_file)", path)
    return read_instance_key(path)
