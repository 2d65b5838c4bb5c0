"""The request log: a record per gateway request, kept in SQLite, queried by the API.

Entry point: ``RequestLog`` (log.py). The record, the filter and paging are pure
(record.py); the SQLite file and its writer thread are store.py.
"""
