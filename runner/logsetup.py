"""structlog configuration: console on a terminal, JSON lines in CI, and secret redaction.

Redaction is a processor at the end of the chain, so nothing a caller logs (event text,
values, formatted exceptions) can carry a registered secret to stderr.

structlog is imported only by code that logs: importing it costs about 85 ms (its console
renderer pulls in rich and pygments), more than all of ``runner validate`` on a small
manifest, which never logs. ``configure`` therefore applies its settings at once when
structlog is already imported, and otherwise the moment something imports it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

_SECRETS: set[str] = set()
# The resolved output format ("console" or "json"), for views that draw on a terminal.
current_format = "json"
REDACTED = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret so every later log line and error message has it masked."""
    if value and len(value) >= 4:
        _SECRETS.add(value)
        # Also as it appears inside JSON text (quotes, backslashes, non-ASCII escaped).
        escaped = json.dumps(value)[1:-1]
        if escaped != value:
            _SECRETS.add(escaped)


def redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(value)
    return event_dict


def _redact_rendered(_logger: Any, _name: str, rendered: str) -> str:
    # Runs after rendering, so tracebacks formatted by the renderer are covered too.
    return redact(rendered)


def resolve_format(fmt: str, stream: TextIO) -> str:
    if fmt != "auto":
        return fmt
    if os.environ.get("CI") or not stream.isatty():
        return "json"
    return "console"


def configure(log_format: str = "auto", verbosity: int = 0, stream: TextIO | None = None) -> str:
    """Configure structlog once per process; returns the resolved format."""
    global current_format
    stream = stream or sys.stderr
    fmt = resolve_format(log_format, stream)
    current_format = fmt
    level = logging.INFO
    if verbosity > 0:
        level = logging.DEBUG
    elif verbosity < 0:
        level = logging.WARNING
    # Libraries below us log through stdlib logging; keep them quiet unless -v.
    for name in ("httpx", "httpcore", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
    global _pending
    if "structlog" in sys.modules:
        _pending = None
        _configure_structlog(fmt, level, stream)
    else:
        # Importing structlog pulls in rich (its console renderer): defer it until
        # something logs, so validate and plan start fast. get_logger applies it.
        _pending = (fmt, level, stream)
    return fmt


_pending: tuple[str, int, TextIO] | None = None


def get_logger(name: str) -> Any:
    """structlog's logger for ``name``, with a deferred configuration applied first."""
    global _pending
    import structlog

    if _pending is not None:
        settings, _pending = _pending, None
        _configure_structlog(*settings)
    return structlog.get_logger(name)


def _configure_structlog(fmt: str, level: int, stream: TextIO) -> None:
    import structlog

    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
    ]
    if fmt == "json":
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    processors.append(_redact_rendered)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
