"""The request log's pure parts (filter, cursor, merge, capture) and its SQLite store:
batches, paging, retention by age and rows, restart, a corrupt file moved aside."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.config.loader import parse_config
from llama_exporter.config.settings import ConfigError, RequestLogConfig
from llama_exporter.requestlog.record import (
    DONE,
    IN_FLIGHT,
    BadQuery,
    Cursor,
    Filter,
    Query,
    Record,
    captured,
    id_at,
    merge_page,
    new_id,
    parse_query,
)
from llama_exporter.requestlog.store import RequestStore


def rid(i: int) -> str:
    """The id of rec(i)."""
    return str(id_at(1000.0 + i))


def rec(i: int, *, model: str = "m0", status: int | None = 200, state: str = DONE) -> Record:
    return Record(
        id=rid(i),
        arrived=1000.0 + i,
        model=model,
        endpoint="/v1/chat/completions",
        state=state,
        status=status,
        evicted=["other"] if i % 3 == 0 else [],
        completion_tokens=i,
    )


# -- pure -------------------------------------------------------------------------------


@given(st.integers(0, 2**62))
def test_cursor_round_trips(number: int) -> None:
    assert Cursor.decode(Cursor(number).encode()) == Cursor(number)


@given(st.floats(0, 2e9), st.floats(0, 2e9))
def test_ids_sort_as_arrivals_do(a: float, b: float) -> None:
    first, second = int(new_id(a)), int(new_id(b))
    assert second > first  # in one process, whatever the clock did
    if b > a + 1e-5:
        assert id_at(a) < id_at(b)


@pytest.mark.parametrize("text", ["x", "", "e30", "LTE", "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMg"])
def test_a_foreign_cursor_is_refused_by_name(text: str) -> None:
    with pytest.raises(BadQuery) as info:
        Cursor.decode(text)
    assert info.value.param == "cursor"


def test_query_parameters() -> None:
    q = parse_query({"status": "5xx", "model": "m1", "since": "10", "limit": "7"})
    assert q.filter == Filter(model="m1", status_min=500, status_max=599, since=10.0)
    assert q.limit == 7
    assert parse_query({"status": "404"}).filter.status_min == 404
    assert parse_query({"status": "in_flight"}).filter.in_flight
    for bad, param in [
        ({"status": "6xx"}, "status"),
        ({"status": "abc"}, "status"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"since": "nan"}, "since"),
        ({"until": "soon"}, "until"),
    ]:
        with pytest.raises(BadQuery) as info:
            parse_query(bad)
        assert info.value.param == param


@given(
    st.lists(st.integers(0, 50), unique=True),
    st.lists(st.integers(0, 50), unique=True),
    st.integers(1, 10),
)
def test_paging_through_merged_pages_sees_each_record_once_newest_first(
    stored_ids: list[int], live_ids: list[int], limit: int
) -> None:
    stored = sorted((rec(i) for i in stored_ids), key=lambda r: int(r.id), reverse=True)
    live = [rec(i, state=IN_FLIGHT, status=None) for i in live_ids]
    seen: list[Record] = []
    cursor = None
    for _ in range(200):
        q = Query(Filter(), limit, cursor)
        page_of_store = [r for r in stored if cursor is None or cursor.before(r.id)]
        page, cursor = merge_page(page_of_store[:limit], live, q)
        seen += page
        if cursor is None:
            break
    ids = [r.id for r in seen]
    assert ids == [rid(i) for i in sorted(set(stored_ids + live_ids), reverse=True)]
    stored_set = {rid(i) for i in stored_ids}
    for r in seen:  # a request both stored and live is shown finished
        assert (r.state == DONE) == (r.id in stored_set)


def test_capture_masks_secret_keys_and_cuts_the_body() -> None:
    body = json.dumps(
        {"model": "m", "api_key": "sk-1", "max_tokens": 5, "extra": {"Authorization": "x"}}
    ).encode()
    kept = json.loads(captured(body, 10_000))
    assert kept == {
        "model": "m",
        "api_key": "***",
        "max_tokens": 5,
        "extra": {"Authorization": "***"},
    }
    assert captured(b"not json at all", 3) == b"not"
    assert len(captured(b'{"a": "' + b"x" * 100 + b'"}', 20)) == 20


# -- the store ------------------------------------------------------------------------------


def open_store(
    path: Path,
    *,
    retention: float = 3600.0,
    max_rows: int = 1000,
    clock: Callable[[], float] = time.time,
) -> RequestStore:
    store = RequestStore(path, retention=retention, max_rows=max_rows, clock=clock)
    store.start()
    return store


def test_records_are_written_paged_and_kept_over_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    store = open_store(path, clock=lambda: 1100.0)
    for i in range(30):
        store.put(rec(i, model=f"m{i % 2}", status=200 if i % 5 else 503))
    assert store.flush()
    assert store.pending() == [] and store.written == 30
    assert [r.id for r in store.query(Query(Filter(), 3))] == [rid(29), rid(28), rid(27)]
    fives = store.query(Query(Filter(status_min=500, status_max=599), 100))
    assert [r.id for r in fives] == [rid(i) for i in (25, 20, 15, 10, 5, 0)]
    ones = store.query(Query(Filter(model="m1", since=1020.0), 100))
    assert [r.id for r in ones] == [rid(i) for i in (29, 27, 25, 23, 21)]
    got = store.get(rid(3))
    assert got is not None and got.evicted == ["other"] and got.completion_tokens == 3
    store.close()
    again = open_store(path, clock=lambda: 1100.0)
    assert again.count() == 30
    assert [r.id for r in again.query(Query(Filter(), 1))] == [rid(29)]
    again.close()


def test_retention_trims_by_age_and_by_rows(tmp_path: Path) -> None:
    now = [1100.0]
    store = open_store(tmp_path / "r.db", retention=50.0, max_rows=20, clock=lambda: now[0])
    for i in range(30):
        store.put(rec(i))
    assert store.flush()
    assert store.count() == 20  # the oldest 10 went for max_rows
    assert store.query(Query(Filter(), 100))[-1].id == rid(10)
    store.close()
    now[0] = 1000.0 + 25 + 50  # rows older than 1025 are past the retention
    store = open_store(tmp_path / "r.db", retention=50.0, max_rows=20, clock=lambda: now[0])
    store.put(rec(31))
    assert store.flush()
    assert [r.id for r in store.query(Query(Filter(), 100))][-1] == rid(25)
    assert store.count() == 6
    store.close()


def test_a_corrupt_database_is_moved_aside_and_logging_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "requests.db"
    path.write_bytes(b"this is not a database" * 100)
    store = open_store(path)
    store.put(rec(1))
    assert store.flush()
    assert [r.id for r in store.query(Query(Filter(), 10))] == [rid(1)]
    [aside] = store.moved_aside
    assert aside.name.startswith("requests.db.corrupt-") and aside.exists()
    assert str(aside) in caplog.text and str(path) in caplog.text
    # Corrupted while running: the next batch replaces it too.
    store.close()
    store = open_store(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as f:  # overwrite the header and the first pages
        f.write(b"\xff" * 8192)
    store.put(rec(2))
    assert store.flush()
    assert [r.id for r in store.query(Query(Filter(), 10))] == [rid(2)]
    assert len(store.moved_aside) == 1
    store.close()


def test_bodies_are_kept_only_when_captured(tmp_path: Path) -> None:
    store = open_store(tmp_path / "b.db")
    with_body = rec(1)
    with_body.request_body, with_body.response_body = b"{}", b'{"ok": 1}'
    store.put(with_body)
    store.put(rec(2))
    assert store.flush()
    one, two = store.get(rid(1)), store.get(rid(2))
    assert one is not None and one.response_body == b'{"ok": 1}'
    assert two is not None and two.request_body is None and two.response_body is None
    with sqlite3.connect(tmp_path / "b.db") as conn:
        assert conn.execute("SELECT count(*) FROM bodies").fetchone()[0] == 1
    store.close()


# -- config -------------------------------------------------------------------------------


def test_request_log_config_defaults_lists_and_errors_naming_the_key() -> None:
    def parse(section: object) -> RequestLogConfig:
        cfg = parse_config({"request_log": section}, file=None, env={}, check_files=False)
        return cfg.request_log

    default = parse(None)
    assert default == RequestLogConfig()
    assert default.enabled and default.retention == 7 * 86400 and default.max_rows == 1_000_000
    assert not default.captures("any")
    some = parse({"capture": ["gemma"], "capture_max_bytes": 100, "retention": 60})
    assert some.captures("gemma") and not some.captures("other") and some.retention == 60
    assert parse({"capture": True}).captures("other")
    assert not parse({"enabled": False}).enabled
    for section, key in [
        ({"max_rows": 0}, "request_log.max_rows"),
        ({"retention": -1}, "request_log.retention"),
        ({"capture": "yes"}, "request_log.capture"),
        ({"enabled": 1}, "request_log.enabled"),
        ({"capture_max_byte": 5}, "request_log.capture_max_byte"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse(section)
        assert key in str(info.value)
