"""Pure reading of llama-server's server-sent events: when text arrives, and the usage.

The proxy forwards bytes untouched; this watcher only looks at them. Time is passed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DONE = b"[DONE]"


@dataclass(frozen=True)
class Usage:
    """Prompt and completion tokens of one request (from `usage`, else `timings`)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _delta_text(delta: dict[str, Any]) -> str | None:
    """Generated output in a chat delta: content, reasoning, or a tool call's name/arguments."""
    for key in ("content", "reasoning_content"):  # a reasoning model thinks first
        text = delta.get(key)
        if isinstance(text, str) and text:
            return text
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        parts = []
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                parts += [v for v in (function.get("name"), function.get("arguments")) if v]
        text = "".join(p for p in parts if isinstance(p, str))
        return text or None
    return None


def event_text(event: Any) -> str | None:
    """The generated text an event carries: chat delta content (or reasoning, or a tool
    call), completion text, or llama-server's own content.

    The first chat event carries only the role with `content: null`: that is no text.
    """
    if not isinstance(event, dict):
        return None
    choices = event.get("choices")
    if isinstance(choices, list) and choices:
        choice = choices[0]
        if isinstance(choice, dict):
            delta = choice.get("delta")
            if isinstance(delta, dict):
                return _delta_text(delta)
            text = choice.get("text")
            return text if isinstance(text, str) and text else None
        return None
    text = event.get("content")  # llama-server's own /completion stream
    return text if isinstance(text, str) and text else None


def usage_of(body: Any) -> Usage | None:
    """Token counts of a response body or final event, or None when it has none."""
    if not isinstance(body, dict):
        return None
    usage = body.get("usage")
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) or isinstance(completion, int):
            return Usage(
                prompt if isinstance(prompt, int) else None,
                completion if isinstance(completion, int) else None,
            )
    timings = body.get("timings")
    if isinstance(timings, dict):
        prompt, predicted = timings.get("prompt_n"), timings.get("predicted_n")
        cache = timings.get("cache_n")
        if isinstance(prompt, int) or isinstance(predicted, int):
            total_prompt = (
                prompt + cache if isinstance(prompt, int) and isinstance(cache, int) else prompt
            )
            return Usage(
                total_prompt if isinstance(total_prompt, int) else None,
                predicted if isinstance(predicted, int) else None,
            )
    return None


def finish_reason_of(body: Any) -> str | None:
    """choices[0].finish_reason of a response body or stream event (None when absent)."""
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    stop = body.get("stop_type")  # llama-server's own /completion
    return stop if isinstance(stop, str) and body.get("stop") is True else None


def error_of(body: Any) -> tuple[str | None, str | None]:
    """(type, message) of an error body {"error": {"type", "message"}} or {"error": "..."}."""
    if not isinstance(body, dict) or "error" not in body:
        return None, None
    detail = body["error"]
    if isinstance(detail, dict):
        kind, message = detail.get("type"), detail.get("message")
        return (
            kind if isinstance(kind, str) else None,
            message if isinstance(message, str) else None,
        )
    return None, detail if isinstance(detail, str) else None


@dataclass
class StreamWatch:
    """Follows an SSE byte stream: first text time, gaps between text events, usage."""

    started: float
    first_text_at: float | None = None
    last_text_at: float | None = None
    text_events: int = 0
    gaps: list[float] = field(default_factory=list)  # taken by the caller as it goes
    usage: Usage | None = None
    error: bool = False  # an event carried {"error": ...}
    error_code: int | None = None  # its HTTP-like code (llama-server's "code"), if it had one
    error_type: str | None = None  # and its type and message, for the request log
    error_message: str | None = None
    finish_reason: str | None = None  # the last one an event carried
    _pending: bytes = b""

    def feed(self, chunk: bytes, now: float) -> None:
        """Read the complete lines of chunk (the rest waits for the next chunk)."""
        data = self._pending + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._pending = data
            return
        self._pending = data[cut + 1 :]
        for line in data[:cut].split(b"\n"):
            if line.startswith(b"data:"):
                self._event(line[5:].strip(), now)

    def _event(self, payload: bytes, now: float) -> None:
        if not payload or payload == DONE:
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if isinstance(event, dict) and "error" in event:
            self.error = True
            detail = event["error"]
            code = detail.get("code") if isinstance(detail, dict) else None
            if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
                self.error_code = code
            self.error_type, self.error_message = error_of(event)
        reason = finish_reason_of(event)
        if reason is not None:
            self.finish_reason = reason
        if event_text(event) is not None:
            if self.last_text_at is None:
                self.first_text_at = now
            else:
                self.gaps.append(now - self.last_text_at)
            self.last_text_at = now
            self.text_events += 1
        usage = usage_of(event)
        if usage is not None:
            self.usage = usage

    @property
    def ttft(self) -> float | None:
        """Seconds from the request's arrival to the first event with text."""
        return None if self.first_text_at is None else self.first_text_at - self.started
