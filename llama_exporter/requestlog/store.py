"""The request log on disk: SQLite (WAL) in state_dir, written in batches by one thread.

Nothing here runs on the event loop: put() only appends to a list under a lock; the
writer thread inserts what has gathered in one transaction, trims by age and rows, and
replaces a database it cannot read (moved aside as <name>.corrupt-<time>, a log line
naming it). Queries are plain functions the caller runs in a thread; each opens its
own connection (WAL lets it read while the writer writes).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from llama_exporter.requestlog.record import Query, Record, id_at, id_number
from llama_exporter.requestlog.sql import (
    COLUMNS,
    INSERT,
    SCHEMA,
    SCHEMA_VERSION,
    connect,
    damaged,
    record_of,
    row_of,
    where_clause,
)

log = logging.getLogger(__name__)

BATCH_WINDOW = 0.1  # seconds the writer lets records gather before a transaction
AGE_TRIM_INTERVAL = 60.0  # seconds between trims by age


class StoreUnreadable(Exception):
    """The database could not be read for a query (busy past the timeout, or damaged)."""


class RequestStore:
    """The log's SQLite file: a writer thread for inserts and trims, queries by the caller."""

    def __init__(
        self,
        path: Path,
        *,
        retention: float,
        max_rows: int,
        clock: Callable[[], float] = time.time,
        batch_window: float = BATCH_WINDOW,
    ) -> None:
        self.path = path
        self.retention = retention
        self.max_rows = max_rows
        self._clock = clock
        self._batch_window = batch_window
        self._lock = threading.Condition()
        self._queue: list[Record] = []
        self._pending: dict[str, Record] = {}  # put, not committed yet (queries merge them)
        self._stopping = False
        self._recheck = False  # a query found the file damaged: the writer opens it again
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._rows = 0
        self._next_age_trim = 0.0
        self.written = 0  # records committed since start
        self.dropped = 0  # records lost because no database could be opened
        self.moved_aside: list[Path] = []  # databases replaced since start

    # -- the event loop's side (never blocks on I/O) --------------------------------

    def start(self) -> None:
        """Start the writer thread (it opens the database)."""
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._thread.start()

    def put(self, record: Record) -> None:
        """Queue a finished record for the writer."""
        with self._lock:
            self._queue.append(record)
            self._pending[record.id] = record
            if len(self._queue) == 1:
                self._lock.notify()

    def pending(self) -> list[Record]:
        """Records put and not written yet."""
        with self._lock:
            return list(self._pending.values())

    def pending_get(self, rid: str) -> Record | None:
        """A record put and not written yet, by id."""
        with self._lock:
            return self._pending.get(rid)

    # -- queries (run in a thread) ----------------------------------------------------

    def query(self, q: Query) -> list[Record]:
        """Up to q.limit stored records matching q, newest first (in flight: none)."""
        if q.filter.in_flight:
            return []
        where, params = where_clause(q.filter, q.cursor.id if q.cursor else None)
        sql = f"SELECT {COLUMNS} FROM requests{where} ORDER BY id DESC LIMIT ?"
        return [record_of(row) for row in self._read(sql, [*params, q.limit])]

    def iter_all(self, q: Query, batch: int = 1000) -> Iterator[list[Record]]:
        """Every stored record matching q's filter, newest first, in batches (for export)."""
        cursor = q.cursor.id if q.cursor else None
        if q.filter.in_flight:
            return
        while True:
            where, params = where_clause(q.filter, cursor)
            sql = f"SELECT {COLUMNS} FROM requests{where} ORDER BY id DESC LIMIT ?"
            rows = [record_of(row) for row in self._read(sql, [*params, batch])]
            if not rows:
                return
            yield rows
            cursor = int(rows[-1].id)

    def get(self, rid: str) -> Record | None:
        """One stored record by id, with its captured bodies."""
        number = id_number(rid)
        if number is None:
            return None
        rows = self._read(f"SELECT {COLUMNS} FROM requests WHERE id = ?", [number])
        if not rows:
            return None
        record = record_of(rows[0])
        bodies = self._read("SELECT request, response FROM bodies WHERE id = ?", [number])
        if bodies:
            record.request_body, record.response_body = bodies[0]
        return record

    def count(self) -> int:
        """Stored rows."""
        rows = self._read("SELECT count(*) FROM requests", [])
        return int(rows[0][0])

    def _read(self, sql: str, params: list[object]) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        try:
            with closing(connect(self.path)) as conn:
                conn.execute("PRAGMA query_only = 1")
                return conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):  # being replaced, or not created yet
                return []
            log.warning("request log: reading %s failed: %s", self.path, exc)
            if damaged(exc):
                with self._lock:
                    self._recheck = True
                    self._lock.notify_all()
            raise StoreUnreadable(f"the request log {self.path} cannot be read: {exc}") from exc

    # -- the writer thread ------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything put so far is written (True) or timeout (tests, close)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._lock.notify()
            while self._pending and self._thread is not None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the thread, close the database (blocks: a thread)."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        self._open()
        while True:
            with self._lock:
                while not self._queue and not self._stopping and not self._recheck:
                    self._lock.wait(self._age_wait())
                    if not self._queue and self._clock() >= self._next_age_trim:
                        break
                stopping = self._stopping
                recheck, self._recheck = self._recheck, False
            if recheck:
                self._reopen()
            if self._queue and not stopping and self._batch_window > 0:
                time.sleep(self._batch_window)  # let a burst gather into one transaction
            with self._lock:
                batch, self._queue = self._queue, []
            self._write(batch)
            with self._lock:
                for record in batch:
                    self._pending.pop(record.id, None)
                self._lock.notify_all()
                if stopping and not self._queue:
                    break
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _age_wait(self) -> float:
        return max(0.05, self._next_age_trim - self._clock())

    def _write(self, batch: list[Record]) -> None:
        for attempt in range(2):
            if self._conn is None:
                self._open()
            if self._conn is None:
                self.dropped += len(batch)
                return
            try:
                self._insert(batch)
                self._trim()
                self.written += len(batch)
                return
            except sqlite3.DatabaseError as exc:
                if attempt or not damaged(exc):
                    log.error("request log: writing %d records failed: %s", len(batch), exc)
                    self.dropped += len(batch)
                    return
                self._replace(exc)

    def _insert(self, batch: list[Record]) -> None:
        conn = self._conn
        assert conn is not None
        if not batch:
            return
        with conn:  # one transaction
            conn.execute("BEGIN")
            conn.executemany(INSERT, [row_of(r) for r in batch])
            bodies = [
                (int(r.id), r.request_body, r.response_body)
                for r in batch
                if r.request_body is not None or r.response_body is not None
            ]
            if bodies:
                conn.executemany("INSERT OR REPLACE INTO bodies VALUES (?, ?, ?)", bodies)
        self._rows += len(batch)

    def _trim(self) -> None:
        """Drop rows older than the retention (every minute) and the oldest past max_rows."""
        conn = self._conn
        assert conn is not None
        now = self._clock()
        if now >= self._next_age_trim:
            self._next_age_trim = now + AGE_TRIM_INTERVAL
            with conn:
                conn.execute("BEGIN")
                cutoff = (id_at(max(0.0, now - self.retention)),)
                cur = conn.execute("DELETE FROM requests WHERE id < ?", cutoff)
            self._rows -= max(0, cur.rowcount)
        if self._rows > self.max_rows:
            excess = self._rows - self.max_rows
            with conn:
                conn.execute("BEGIN")
                cur = conn.execute(
                    "DELETE FROM requests WHERE id IN "
                    "(SELECT id FROM requests ORDER BY id LIMIT ?)",
                    (excess,),
                )
            # Counted, not recounted: a count(*) of a million rows on every batch at the cap.
            self._rows -= max(0, cur.rowcount)

    def _count(self) -> int:
        assert self._conn is not None
        return int(self._conn.execute("SELECT count(*) FROM requests").fetchone()[0])

    def _open(self) -> None:
        """Open (or create) the database; one that cannot be read is moved aside first."""
        for attempt in range(2):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = connect(self.path)
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable but for power loss
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    if 0 < version < SCHEMA_VERSION:
                        log.warning(
                            "request log: %s is of an older layout; started anew", self.path
                        )
                        conn.executescript(
                            "DROP TABLE IF EXISTS requests; DROP TABLE IF EXISTS bodies;"
                        )
                    conn.executescript(SCHEMA)
                    self._conn = conn
                    self._rows = self._count()
                    self._trim()
                except BaseException:
                    self._conn = None
                    conn.close()
                    raise
                return
            except (sqlite3.DatabaseError, OSError) as exc:
                if attempt or not self.path.exists():
                    log.error(
                        "request log: cannot open %s (%s); requests are not logged until "
                        "the service can write there",
                        self.path,
                        exc,
                    )
                    return
                self._move_aside(exc)

    def _reopen(self) -> None:
        """Open the file anew (a query found it damaged): moved aside if it cannot be read."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._open()

    def _replace(self, exc: Exception) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._move_aside(exc)
        self._open()

    def _move_aside(self, exc: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            self.path.rename(aside)
        except OSError as err:
            log.error("request log: cannot move %s aside: %s", self.path, err)
            return
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                try:
                    side.rename(aside.with_name(aside.name + suffix))
                except OSError:
                    side.unlink(missing_ok=True)
        self.moved_aside.append(aside)
        log.error(
            "request log: %s could not be read (%s); moved it aside as %s and started a new one",
            self.path,
            exc,
            aside,
        )
