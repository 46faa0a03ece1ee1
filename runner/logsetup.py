"""structlog configuration: console on a terminal, JSON lines in CI, and secret redaction;
and how text from outside (manifests, lockfiles, file names, API answers) is made safe to print.

Redaction is a processor at the end of the chain, so nothing a caller logs (event text,
values, formatted exceptions) can carry a registered secret to stderr.

Outside text is data (STYLE habit 13). A terminal obeys escape sequences and a CI runner
obeys commands in its log (GitHub's ``::error ::...`` at the start of a line and its legacy
``##[error]`` anywhere in one, Azure's ``##vso[``, TeamCity's ``##teamcity[``, GitLab's
``section_start:`` behind CR and ESC), so every view passes outside strings through
``clean`` (control characters shown escaped: ``\x1b``, ``\n``, ``\u202e``) and its whole
output through ``guard`` (no line can be taken for a CI command). ``json_safe`` does the
same for JSON text without changing the data it decodes to.

structlog is imported only by code that logs: importing it costs about 85 ms (its console
renderer pulls in rich and pygments), more than all of ``runner validate`` on a small
manifest, which never logs. ``configure`` therefore applies its settings at once when
structlog is already imported, and otherwise the moment something imports it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import unicodedata
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


# -- outside text -----------------------------------------------------------------------------

# Escaped: C0 and C1 controls (ESC, CR, newline...), format characters (bidi overrides
# such as U+202E, zero-width spaces, BOM), line and paragraph separators, lone surrogates
# (undecodable file names; printing one raises). Kept: ZWNJ and ZWJ, which scripts and emoji
# sequences need and no terminal or CI parser obeys.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_KEEP = frozenset("\u200c\u200d")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# CI commands a line can carry anywhere: GitHub's legacy ``##[cmd]`` (still parsed, including
# ``##[stop-commands]``), Azure's ``##vso[``, TeamCity's ``##teamcity[``.
_HASH_COMMAND = re.compile(r"##(?=[A-Za-z]*\[)")
# At the start of a line (after any whitespace, which GitHub trims): GitHub's ``::cmd::``,
# and Buildkite's ``--- ``/``+++ ``/``~~~ ``/``^^^ `` group markers.
_LINE_COMMAND = re.compile(r"^(\s*)(::|---|\+\+\+|~~~|\^\^\^)", re.MULTILINE)


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES and ch not in _KEEP


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clean(text: str) -> str:
    """``text`` on one line, every control character shown escaped (``\\x1b``, ``\\n``,
    ``\\u202e``): what a view prints of a string that came from outside."""
    if text.isprintable():  # the common case, and fast: nothing to escape
        return text
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in text)


def clean_lines(text: str) -> str:
    """Like ``clean``, but line breaks stay: for a multi-line message shown as such."""
    return "\n".join(clean(line) for line in text.split("\n"))


def guard(text: str) -> str:
    """``text`` with no line a CI runner takes for a command: ``##[``, ``##vso[`` and the
    like anywhere become ``#\\x23[``; a line starting with ``::`` (or a Buildkite group
    marker) gets its first character escaped (``\\x3a:error ::...``). Applied to a
    view's whole output, after ``clean`` put each outside string on one line."""
    if "##" in text:
        text = _HASH_COMMAND.sub(r"#\\x23", text)
    return _LINE_COMMAND.sub(lambda m: m.group(1) + _escape_visible(m.group(2)), text)


def _escape_visible(marker: str) -> str:
    return f"\\x{ord(marker[0]):02x}" + marker[1:]


def error_text(message: str) -> str:
    """``error: ...`` for stderr: the message redacted, each of its lines cleaned, and no
    line a CI runner takes for a command (messages quote servers and file names)."""
    return guard("error: " + clean_lines(redact(message)))


def safe(text: str) -> str:
    """One outside string, safe wherever a view puts it (a rich cell may start a line)."""
    return guard(clean(text))


_NOT_PRINTABLE_ASCII = re.compile("[^\x00-\x7e]+")  # DEL and every non-ASCII run


def _json_escape_run(match: re.Match[str]) -> str:
    run = match.group()
    if run.isprintable():
        return run
    return "".join(_json_escape(ch) if _unsafe(ch) else ch for ch in run)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON writes a character beyond the BMP as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_safe(text: str) -> str:
    """JSON text (from ``json.dumps``, ``ensure_ascii`` or not) that decodes to the same data
    but carries no raw control character (C1, DEL, bidi override, separator) and no ``##[``
    a CI runner would obey: those are written as ``\\uXXXX`` escapes (``#\\u0023[``)."""
    if "##" in text:
        text = _HASH_COMMAND.sub(r"#\\u0023", text)
    if text.isascii() and "\x7f" not in text:
        return text
    return _NOT_PRINTABLE_ASCII.sub(_json_escape_run, text)


def _clean_for_console(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # structlog's console renderer prints string values as they are (others by repr, which
    # escapes): put each on one line with its controls escaped, as every text view does.
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = clean(value)
    return event_dict


def _guard_rendered(_logger: Any, _name: str, rendered: str) -> str:
    return guard(rendered)


def _json_safe_rendered(_logger: Any, _name: str, rendered: str) -> str:
    return json_safe(rendered)


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
            _json_safe_rendered,
        ]
    else:
        processors += [
            _clean_for_console,
            structlog.dev.ConsoleRenderer(colors=stream.isatty()),
            _guard_rendered,
        ]
    processors.append(_redact_rendered)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
