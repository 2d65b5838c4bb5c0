"""One place that hides secrets: flag and environment values, and the same values in text.

A value is secret when its flag or variable name contains key, token, secret
or password (any case), plus llama.cpp's ``-hft`` (short for --hf-token).
Used by the API (/models args, /status last_error, the log endpoint), the
instance log header and the captured llama-server output, so the CLI
(which shows what the API answers) and our own log lines never see them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

MASK = "***"
_SECRET_WORD = re.compile(r"key|token|secret|password", re.IGNORECASE)
_SECRET_ALIASES = frozenset({"-hft"})
# "--some-token VALUE", "--api-key=VALUE" and "SOME_TOKEN=VALUE" in free text.
_FLAG_IN_TEXT = re.compile(
    r"(?<!\S)(--?[A-Za-z0-9][\w.-]*(?:key|token|secret|password)[\w.-]*|-hft)(=|\s+)(?!-)(\S+)",
    re.IGNORECASE,
)
# Upper case only: llama-server's own lines say things like n_tokens=5.
_ENV_IN_TEXT = re.compile(r"\b([A-Z_][A-Z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD)[A-Z0-9_]*)=(\S+)")
# At -lv 4 llama-server logs the last 4 characters of its only API key: "api_keys: ****abcd".
_KEY_TAIL = re.compile(r"(api_keys: )\*{4}\S+")
_KEY_TAIL_BYTES = re.compile(rb"(api_keys: )\*{4}\S+")


def is_secret_name(name: str) -> bool:
    """True when a flag (with or without leading dashes) or variable name holds a secret."""
    return name in _SECRET_ALIASES or _SECRET_WORD.search(name.lstrip("-")) is not None


def redact_args(args: Sequence[str]) -> list[str]:
    """The argument list with the value of every secret flag replaced by ***."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if arg.startswith("-"):
            flag, eq, _ = arg.partition("=")
            if is_secret_name(flag):
                if eq:
                    out.append(f"{flag}={MASK}")
                    continue
                hide_next = True
        out.append(arg)
    return out


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment with the value of every secret variable replaced by ***."""
    return {k: MASK if is_secret_name(k) else v for k, v in env.items()}


def secret_values(
    args: Sequence[str], env: Mapping[str, str], extra: Iterable[str | None] = ()
) -> frozenset[str]:
    """Every value redact_args/redact_env would hide, plus extra (e.g. a model's api_key)."""
    found = {v for v in extra if v}
    for i, arg in enumerate(args):
        if not arg.startswith("-"):
            continue
        flag, eq, value = arg.partition("=")
        if is_secret_name(flag):
            if eq:
                found.add(value)
            elif i + 1 < len(args):
                found.add(args[i + 1])
    found.update(v for k, v in env.items() if is_secret_name(k))
    return frozenset(v for v in found if v)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Text with each known secret value and each secret-looking flag or NAME=value hidden."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    text = _FLAG_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _KEY_TAIL.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return _ENV_IN_TEXT.sub(lambda m: f"{m.group(1)}={MASK}", text)


def redact_output(raw: bytes, secrets: Iterable[bytes]) -> bytes:
    """One line of llama-server's output with each known secret and its key's tail hidden."""
    for secret in secrets:
        raw = raw.replace(secret, MASK.encode())
    return _KEY_TAIL_BYTES.sub(rb"\1" + MASK.encode(), raw)


def redact_lines(lines: Iterable[str], secrets: Iterable[str] = ()) -> list[str]:
    """redact_text over lines (the secrets are collected once)."""
    known = tuple(secrets)
    return [redact_text(line, known) for line in lines]
