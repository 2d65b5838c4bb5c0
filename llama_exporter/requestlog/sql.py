"""The request log's SQLite layout: the tables, a record as a row and back, a filter as SQL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from llama_exporter.requestlog.record import DONE, Filter, Record, id_at

SCHEMA_VERSION = 2  # 1: text ids (a day of development; dropped, not converted)
COLUMNS = (
    "id, arrived, model, endpoint, stream, client, status, error_type, error_message, "
    "finish_reason, prompt_tokens, completion_tokens, queue_wait_s, load_wait_s, "
    "triggered_load, evicted, ttft_s, duration_s, tokens_per_second"
)
# The id is the table's key and sorts as arrivals do (record.new_id): newest first is the
# table's own order, a time range an id range; the indexes end with it for the same.
SCHEMA = f"""
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
INSERT = f"INSERT OR REPLACE INTO requests ({COLUMNS}) VALUES ({', '.join('?' * 19)})"


def row_of(r: Record) -> tuple[object, ...]:
    """A record as a row for INSERT, in COLUMNS order."""
    evicted = json.dumps(r.evicted) if r.evicted else None
    return (
        int(r.id), r.arrived, r.model, r.endpoint, int(r.stream), r.client, r.status, r.error_type,
        r.error_message, r.finish_reason, r.prompt_tokens, r.completion_tokens, r.queue_wait_s,
        r.load_wait_s, int(r.triggered_load), evicted, r.ttft_s, r.duration_s,
        r.tokens_per_second,
    )  # fmt: skip


def record_of(row: tuple[Any, ...]) -> Record:
    """A record from a row in COLUMNS order."""
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


def connect(path: Path) -> sqlite3.Connection:
    """A connection for any thread, in autocommit, waiting up to 10 s on a lock."""
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def damaged(exc: sqlite3.DatabaseError) -> bool:
    """Is this the database file's fault (corrupt, not a database, gone read-only)?"""
    if type(exc) is sqlite3.DatabaseError:  # "file is not a database", "malformed"
        return True
    text = str(exc)
    return any(s in text for s in ("malformed", "readonly", "no such table", "disk I/O"))
