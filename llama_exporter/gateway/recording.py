"""What a gateway request's record holds when it ends: filled from what the path measured.

Nothing is measured twice: the waits come from admission (scheduler.Admission), the
first token and the gaps from the stream's watch (sse.StreamWatch), the tokens, finish
reason and error from the proxy's outcome.
"""

from __future__ import annotations

import json

from llama_exporter.gateway import proxy
from llama_exporter.gateway.scheduler import Admission, GatewayError
from llama_exporter.gateway.sse import StreamWatch
from llama_exporter.requestlog.record import Record, tokens_per_second


def wants_stream(body: bytes) -> bool:
    """Does the JSON body ask for a streamed answer ("stream": true)?"""
    if b'"stream"' not in body:  # most bodies: no second parse
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("stream") is True


def admitted(record: Record, admission: Admission) -> None:
    """The request got its model: what admission did shows while it runs."""
    record.queue_wait_s, record.load_wait_s = admission.queue_wait, admission.load_wait
    record.triggered_load, record.evicted = admission.triggered_load, admission.evicted


def fill(
    record: Record,
    code: int,
    duration: float,
    admission: Admission,
    watch: StreamWatch,
    outcome: proxy.Outcome | None,
    failure: GatewayError | None,
) -> None:
    """Fill in the record of a request that ended with code after duration seconds."""
    record.status = code
    record.duration_s = duration
    admitted(record, admission)
    record.ttft_s = watch.ttft
    if failure is not None:
        record.error_type, record.error_message = failure.kind, failure.message
    elif code == proxy.CLIENT_CLOSED:
        record.error_type = "client_closed"
        record.error_message = "the client closed the connection before the answer ended"
    usage = watch.usage
    if outcome is not None:
        record.stream = outcome.streamed
        record.finish_reason = outcome.finish_reason
        if record.error_type is None and record.error_message is None:
            record.error_type, record.error_message = outcome.error_type, outcome.error_message
        usage = outcome.usage or usage
        if outcome.body is not None:
            record.response_body = outcome.body
    elif watch.finish_reason is not None:  # a stream cut short by cancellation
        record.finish_reason = watch.finish_reason
    if usage is not None:
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
    elif watch.text_events:
        # A stream without usage (no stream_options.include_usage): llama-server sends
        # one token per event, so the events with text are the completion tokens.
        record.completion_tokens = watch.text_events
    # Generation time: first to last text event (streams), else everything after admission.
    if watch.first_text_at is not None and watch.last_text_at is not None:
        generating = watch.last_text_at - watch.first_text_at
    else:
        generating = duration - admission.queue_wait - admission.load_wait
    record.tokens_per_second = tokens_per_second(record.completion_tokens, generating)
