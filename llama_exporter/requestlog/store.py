"""The request log on disk: SQLite (WAL) in state_dir, written in batches by one thread.

Nothing here runs on the event loop: put() only appends to a list under a lock; the
writer thread inserts what has gathered in one transaction, trims by age and rows, and
replaces a database it cannot read (moved aside as <name>.corrupt-<time>, a log line
naming it). Queries are plain functions the caller runs in a thread; each opens its
own connection (WAL lets it read while the writer writes).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from llama_exporter.requestlog.record import DONE, Filter, Query, Record, id_at, id_number

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 1: text ids (a day of development; dropped, not converted)
BATCH_WINDOW = 0.1  # seconds the writer lets records gather before a transaction
AGE_TRIM_INTERVAL = 60.0  # seconds between trims by age
_COLUMNS = (
    "id, arrived, model, endpoint, stream, client, status, error_type, error_message, "
    "finish_reason, prompt_tokens, completion_tokens, queue_wait_s, load_wait_s, "
    "triggered_load, evicted, ttft_s, duration_s, tokens_per_second"
)
# The id is the table's key and sorts as arrivals do (record.new_id): newest first is the
# table's own order, a time range an id range; the indexes end with it for the same.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, arrived REAL NOT NULL, model TEXT NOT NULL, endpoint TEXT NOT NULL,
    stream INTEGER NOT NULL, client TEXT NOT NULL, status INTEGER, error_type TEXT,
    error_message TEXT, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
    queue_wait_s REAL, load_wait_s REAL, triggered_load INTEGER NOT NULL, evicted TEXT,
    ttft_s REAL, duration_s REAL, tokens_per_second REAL
);
CREATE INDEX IF NOT EXISTS requests_by_model ON requests (model, id);
-- By class (2xx..5xx): a class or a code is one equal key, then newest first.
CREATE INDEX IF NOT EXISTS requests_by_class ON requests (status / 100, id);
CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, request BLOB, response BLOB);
CREATE TRIGGER IF NOT EXISTS requests_drop_bodies AFTER DELETE ON requests
    BEGIN DELETE FROM bodies WHERE id = old.id; END;
PRAGMA user_version = {SCHEMA_VERSION};
"""
_INSERT = f"INSERT OR REPLACE INTO requests ({_COLUMNS}) VALUES ({', '.join('?' * 19)})"


def _row(r: Record) -> tuple[object, ...]:
    evicted = json.dumps(r.evicted) if r.evicted else None
    return (
        int(r.id), r.arrived, r.model, r.endpoint, int(r.stream), r.client, r.status, r.error_type,
        r.error_message, r.finish_reason, r.prompt_tokens, r.completion_tokens, r.queue_wait_s,
        r.load_wait_s, int(r.triggered_load), evicted, r.ttft_s, r.duration_s,
        r.tokens_per_second,
    )  # fmt: skip


def _record(row: tuple[Any, ...]) -> Record:
    """A record from a row in _COLUMNS order."""
    evicted = row[15]
    return Record(
        id=str(row[0]),
        arrived=row[1],
        model=row[2],
        endpoint=row[3],
        stream=bool(row[4]),
        client=row[5],
        state=DONE,
        status=row[6],
        error_type=row[7],
        error_message=row[8],
        finish_reason=row[9],
        prompt_tokens=row[10],
        completion_tokens=row[11],
        queue_wait_s=row[12],
        load_wait_s=row[13],
        triggered_load=bool(row[14]),
        evicted=json.loads(evicted) if isinstance(evicted, str) else [],
        ttft_s=row[16],
        duration_s=row[17],
        tokens_per_second=row[18],
    )


def where_clause(f: Filter, cursor: int | None) -> tuple[str, list[object]]:
    """The SQL condition and its parameters for a filter and a cursor (newest first)."""
    terms: list[str] = []
    params: list[object] = []
    if f.model is not None:
        terms.append("model = ?")
        params.append(f.model)
    if f.status_min is not None:
        # status / 100 as in the index (a filter is one class, or one code in it).
        terms.append("status / 100 = ? AND status BETWEEN ? AND ?")
        high = f.status_max if f.status_max is not None else f.status_min
        params += [f.status_min // 100, f.status_min, high]
    if f.since is not None:  # as id ranges: the key, or the end of every index
        terms.append("id >= ?")
        params.append(id_at(f.since))
    if f.until is not None:
        terms.append("id < ?")
        params.append(id_at(f.until + 1e-6))
    if cursor is not None:
        terms.append("id < ?")
        params.append(cursor)
    return (" WHERE " + " AND ".join(terms)) if terms else "", params


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


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
        sql = f"SELECT {_COLUMNS} FROM requests{where} ORDER BY id DESC LIMIT ?"
        return [_record(row) for row in self._read(sql, [*params, q.limit])]

    def iter_all(self, q: Query, batch: int = 1000) -> Iterator[list[Record]]:
        """Every stored record matching q's filter, newest first, in batches (for export)."""
        cursor = q.cursor.id if q.cursor else None
        if q.filter.in_flight:
            return
        while True:
            where, params = where_clause(q.filter, cursor)
            sql = f"SELECT {_COLUMNS} FROM requests{where} ORDER BY id DESC LIMIT ?"
            rows = [_record(row) for row in self._read(sql, [*params, batch])]
            if not rows:
                return
            yield rows
            cursor = int(rows[-1].id)

    def get(self, rid: str) -> Record | None:
        """One stored record by id, with its captured bodies."""
        number = id_number(rid)
        if number is None:
            return None
        rows = self._read(f"SELECT {_COLUMNS} FROM requests WHERE id = ?", [number])
        if not rows:
            return None
        record = _record(rows[0])
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
            with closing(_connect(self.path)) as conn:
                conn.execute("PRAGMA query_only = 1")
                return conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):  # being replaced, or not created yet
                return []
            log.warning("request log: reading %s failed: %s", self.path, exc)
            if self._damaged(exc):
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
                if attempt or not self._damaged(exc):
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
            conn.executemany(_INSERT, [_row(r) for r in batch])
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
                conn = _connect(self.path)
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
                    conn.executescript(_SCHEMA)
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

    def _damaged(self, exc: sqlite3.DatabaseError) -> bool:
        """Is this the database file's fault (corrupt, not a database, gone read-only)?"""
        if type(exc) is sqlite3.DatabaseError:  # "file is not a database", "malformed"
            return True
        text = str(exc)
        return any(s in text for s in ("malformed", "readonly", "no such table", "disk I/O"))

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
