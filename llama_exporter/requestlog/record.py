"""Pure: one gateway request's record, the query filter, the paging cursor, CSV/JSON rows.

The JSON shape is the contract in docs/REQUESTS_API.md (shared with the page).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

IN_FLIGHT = "in_flight"
DONE = "done"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

# The order of the columns in the table, the CSV header and the JSON object.
FIELDS = (
    "id",
    "arrived",
    "model",
    "endpoint",
    "stream",
    "client",
    "state",
    "status",
    "error_type",
    "error_message",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "queue_wait_s",
    "load_wait_s",
    "triggered_load",
    "evicted",
    "ttft_s",
    "duration_s",
    "tokens_per_second",
)


_ID_SHIFT = 8  # ids are the arrival in microseconds, shifted, plus a counter
_last_id = [0]


MAX_ID = 2**63 - 1  # SQLite's largest integer


def id_at(arrived: float) -> int:
    """The smallest id a request arriving at unix time arrived can have (0..MAX_ID)."""
    seconds = min(max(0.0, arrived), 3e10)  # (the year 2920: ids stay below MAX_ID)
    return min(MAX_ID, int(seconds * 1_000_000) << _ID_SHIFT)


def new_id(arrived: float) -> str:
    """A request id: its arrival in microseconds and a counter, increasing in this process.

    Ids sort as arrivals do, so the table's key is the log's order (newest first needs
    no index of its own) and a time range is an id range.
    """
    number = max(_last_id[0] + 1, id_at(arrived))
    _last_id[0] = number
    return str(number)


@dataclass(slots=True)
class Record:
    """One gateway request; mutable while in flight, handed to the store when done."""

    id: str
    arrived: float  # unix seconds
    model: str
    endpoint: str
    stream: bool = False
    client: str = ""
    state: str = IN_FLIGHT
    status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queue_wait_s: float | None = None
    load_wait_s: float | None = None
    triggered_load: bool = False
    evicted: list[str] = field(default_factory=list)
    ttft_s: float | None = None
    duration_s: float | None = None
    tokens_per_second: float | None = None
    # Captured bodies (request_log.capture): never in the list views, only by id.
    request_body: bytes | None = None
    response_body: bytes | None = None

    def to_json(self, *, bodies: bool = False) -> dict[str, Any]:
        """The record as the API shows it; with bodies, the captured bodies as text."""
        out = {name: getattr(self, name) for name in FIELDS}
        out["evicted"] = list(self.evicted)
        if bodies:
            out["request_body"] = _text(self.request_body)
            out["response_body"] = _text(self.response_body)
        return out


def _text(body: bytes | None) -> str | None:
    return None if body is None else body.decode("utf-8", errors="replace")


def tokens_per_second(completion: int | None, seconds: float | None) -> float | None:
    """Completion tokens over the seconds spent generating them (None when unknown)."""
    if completion is None or seconds is None or seconds <= 0:
        return None
    return completion / seconds


# -- captured bodies -------------------------------------------------------------------


_SECRET_KEY = re.compile(r"api[_-]?key|authorization|token|secret|password", re.IGNORECASE)
_TOKEN_KEYS = frozenset({"max_tokens", "max_completion_tokens", "n_tokens", "tokens"})


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if _is_secret_key(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key not in _TOKEN_KEYS and bool(_SECRET_KEY.search(key))


def captured(body: bytes, max_bytes: int) -> bytes:
    """A body as the log keeps it: keys naming a secret masked (JSON), cut at max_bytes."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict | list):
        scrubbed = _scrub(data)
        if scrubbed != data:
            body = json.dumps(scrubbed, ensure_ascii=False).encode()
    return body[:max_bytes]


# -- queries ---------------------------------------------------------------------------


class BadQuery(ValueError):
    """A query parameter the log cannot use; names the parameter."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def id_number(rid: str) -> int | None:
    """The number of an id this log handed out, None for anything else."""
    return int(rid) if rid.isdigit() and len(rid) < 20 else None


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last record's id (the next page is older)."""

    id: int

    def encode(self) -> str:
        """The opaque text handed to clients."""
        return base64.urlsafe_b64encode(str(self.id).encode()).decode().rstrip("=")

    @staticmethod
    def decode(text: str) -> Cursor:
        """Back from encode(); BadQuery when it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        except (ValueError, binascii.Error):
            raw = ""
        number = id_number(raw)
        if number is None:
            raise BadQuery("cursor", "cursor is not one this service handed out")
        return Cursor(number)

    def before(self, rid: str) -> bool:
        """Does the record with id rid come after the cursor in newest-first order?"""
        return int(rid) < self.id


@dataclass(frozen=True)
class Filter:
    """Which records a query wants: model, status (code, class or in flight), time range."""

    model: str | None = None
    status_min: int | None = None  # inclusive code range, None: any
    status_max: int | None = None
    in_flight: bool = False  # only requests still running
    since: float | None = None
    until: float | None = None

    def matches(self, record: Record) -> bool:
        """Does record pass the filter?"""
        if self.model is not None and record.model != self.model:
            return False
        if self.since is not None and record.arrived < self.since:
            return False
        if self.until is not None and record.arrived > self.until:
            return False
        if self.in_flight:
            return record.state == IN_FLIGHT
        if self.status_min is not None:
            code = record.status
            return code is not None and self.status_min <= code <= (self.status_max or code)
        return True


_STATUS_CLASS = re.compile(r"([1-5])xx", re.IGNORECASE)


def parse_status(text: str) -> tuple[int | None, int | None, bool]:
    """ "200", "5xx" or "in_flight" -> (min, max, in_flight); BadQuery otherwise."""
    if text == IN_FLIGHT:
        return None, None, True
    match = _STATUS_CLASS.fullmatch(text)
    if match:
        base = int(match.group(1)) * 100
        return base, base + 99, False
    if text.isdigit() and 100 <= int(text) <= 599:
        return int(text), int(text), False
    raise BadQuery(
        "status", f"status must be a code (200), a class (2xx..5xx) or in_flight, got {text!r}"
    )


def _float(query: Mapping[str, str], name: str) -> float | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise BadQuery(name, f"{name} must be unix seconds (a number), got {text!r}")
    return value


@dataclass(frozen=True)
class Query:
    """A parsed list query: the filter, the page size and where the page starts."""

    filter: Filter
    limit: int = DEFAULT_LIMIT
    cursor: Cursor | None = None


def parse_query(query: Mapping[str, str]) -> Query:
    """The list query's parameters, checked; BadQuery names the one that is wrong."""
    status = query.get("status") or None
    low, high, in_flight = parse_status(status) if status else (None, None, False)
    raw_limit = query.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise BadQuery("limit", f"limit must be an integer 1..{MAX_LIMIT}, got {raw_limit!r}")
        limit = int(raw_limit)
    cursor_text = query.get("cursor")
    return Query(
        Filter(
            model=query.get("model") or None,
            status_min=low,
            status_max=high,
            in_flight=in_flight,
            since=_float(query, "since"),
            until=_float(query, "until"),
        ),
        limit,
        Cursor.decode(cursor_text) if cursor_text else None,
    )


def newest_first(records: Iterable[Record]) -> list[Record]:
    """Records sorted newest first (by id, which is by arrival), as every page is."""
    return sorted(records, key=lambda r: int(r.id), reverse=True)


def merge_page(
    stored: list[Record], live: Iterable[Record], query: Query
) -> tuple[list[Record], Cursor | None]:
    """One page from the stored rows (already a page) and the live ones; done ones win.

    stored holds up to limit rows from the store, newest first; live holds the requests
    in flight and the finished ones not written yet. A record in both (it ended or was
    written during the query) is kept once, its finished version.
    """
    by_id: dict[str, Record] = {}
    for record in live:
        if query.filter.matches(record) and (
            query.cursor is None or query.cursor.before(record.id)
        ):
            known = by_id.get(record.id)
            if known is None or known.state == IN_FLIGHT:
                by_id[record.id] = record
    for record in stored:
        by_id[record.id] = record
    page = newest_first(by_id.values())
    more = len(page) > query.limit or len(stored) >= query.limit
    page = page[: query.limit]
    cursor = Cursor(int(page[-1].id)) if more and page else None
    return page, cursor


CSV_FIELDS = FIELDS


def csv_row(record: Record) -> list[str]:
    """The record's CSV cells in CSV_FIELDS order (evicted joined by spaces, None empty)."""
    out: list[str] = []
    for name in CSV_FIELDS:
        value = getattr(record, name)
        if value is None:
            out.append("")
        elif isinstance(value, bool):
            out.append("true" if value else "false")
        elif isinstance(value, list):
            out.append(" ".join(value))
        else:
            out.append(str(value))
    return out
