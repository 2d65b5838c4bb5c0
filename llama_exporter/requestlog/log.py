"""The live request log: requests in flight in memory, finished ones to the store.

begin() and end() run on the event loop and only touch memory (end() hands the record
to the store's writer thread); queries run in a thread and merge the requests in
flight and the records not yet written with the stored ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from llama_exporter.config.settings import RequestLogConfig
from llama_exporter.requestlog.record import DONE, Cursor, Query, Record, merge_page, new_id
from llama_exporter.requestlog.store import RequestStore

log = logging.getLogger(__name__)

DB_NAME = "requests.db"

Listener = Callable[[Record], None]


class RequestLog:
    """Every gateway request: begin() at arrival, end() when answered; pages by query."""

    def __init__(self, config: RequestLogConfig, state_dir: Path) -> None:
        self.config = config
        self.store = RequestStore(
            state_dir / DB_NAME, retention=config.retention, max_rows=config.max_rows
        )
        self._live: dict[str, Record] = {}
        self._listeners: list[Listener] = []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the store's writer thread."""
        self.store.start()

    async def close(self) -> None:
        """Write what is left and stop the writer (in a thread)."""
        await asyncio.to_thread(self.store.close)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call listener(record) at every begin and end (on the loop; it must not block)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- recording (event loop) ----------------------------------------------------------

    def capture_limit(self, model: str) -> int:
        """Bytes of each body to keep for model's requests (0: none)."""
        return self.config.capture_max_bytes if self.config.captures(model) else 0

    def begin(
        self, model: str, endpoint: str, *, arrived: float, stream: bool, client: str
    ) -> Record:
        """A request came in: visible in flight from now on."""
        record = Record(new_id(arrived), arrived, model, endpoint, stream=stream, client=client)
        self._live[record.id] = record
        self._publish(record)
        return record

    def end(self, record: Record) -> None:
        """The request is answered (record filled in): to the store, out of flight."""
        record.state = DONE
        self._live.pop(record.id, None)
        self.store.put(record)
        self._publish(record)

    def in_flight(self) -> list[Record]:
        """The requests running now."""
        return list(self._live.values())

    def _publish(self, record: Record) -> None:
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                log.exception("request log: a listener failed")

    # -- queries (threads) -------------------------------------------------------------

    async def page(self, query: Query) -> tuple[list[Record], Cursor | None]:
        """One page newest first, with the cursor of the next (None: the last page)."""
        live = self.in_flight()  # taken on the loop; the pending ones in the thread
        return await asyncio.to_thread(self._page, query, live)

    def _page(self, query: Query, live: list[Record]) -> tuple[list[Record], Cursor | None]:
        # Pending first, then the table: a record written in between is in both, not lost.
        unwritten = self.store.pending()
        stored = self.store.query(query)
        return merge_page(stored, [*live, *unwritten], query)

    async def get(self, rid: str) -> Record | None:
        """One record by id (in flight, unwritten or stored), with captured bodies."""
        live = self._live.get(rid)
        if live is not None:
            return live
        return await asyncio.to_thread(self._get, rid)

    def _get(self, rid: str) -> Record | None:
        return self.store.pending_get(rid) or self.store.get(rid)

    async def export(self, query: Query) -> AsyncIterator[list[Record]]:
        """Every record matching query's filter, newest first, in batches read in a thread."""
        first, _ = await self.page(Query(query.filter, 1000, query.cursor))
        if not first:
            return
        yield first
        after = Cursor(int(first[-1].id))
        rows = self.store.iter_all(Query(query.filter, 1000, after))
        while True:
            batch = await asyncio.to_thread(next, rows, None)
            if batch is None:
                return
            yield batch
