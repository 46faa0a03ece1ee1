"""The one outer handler maps errors to DESIGN section 2's exit codes."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
from support.cli import log_events

from runner import cli, logsetup


def test_a_bug_exits_70_with_its_traceback_and_no_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unexpected exception is a bug: exit 70, traceback shown, registered secrets redacted."""
    secret = "sk-bug-Qw8Zx0Lm3Vt"
    logsetup.register_secret(secret)

    def boom(_args: object) -> int:
        raise RuntimeError(f"something broke near {secret}")

    monkeypatch.setattr(importlib, "import_module", lambda _name: SimpleNamespace(run=boom))
    # Keep the process's logging as it is: configured onto capsys's stream, which closes
    # after this test, it would break every later in-process log call.
    monkeypatch.setattr(logsetup, "configure", lambda *_a, **_k: "console")
    monkeypatch.setattr(logsetup, "current_format", "console")
    code = cli.main(["validate", "whatever.yaml"])
    err = capsys.readouterr().err
    assert code == 70
    assert err.startswith("internal error") and "RuntimeError" in err and "Traceback" in err
    assert secret not in err

    # Under JSON logs: one JSON object, the traceback as its exception, still no secret.
    monkeypatch.setattr(logsetup, "current_format", "json")
    code = cli.main(["validate", "whatever.yaml"])
    err = capsys.readouterr().err
    (event,) = log_events(err)
    assert code == 70 and event["level"] == "error" and event["exit_code"] == 70
    assert event["event"].startswith("internal error") and "RuntimeError" in event["exception"]
    assert secret not in err


def test_usage_and_input_errors_are_json_lines_under_json_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13, item 2: an error that stops a command before (argparse) or as it starts is
    one JSON object per line under ``--log-format json``; on a console, the familiar text."""

    def configure(fmt: str = "auto", *_a: object, **_k: object) -> str:  # not onto capsys's stream
        logsetup.current_format = fmt
        return fmt

    monkeypatch.setattr(logsetup, "configure", configure)
    monkeypatch.setattr(logsetup, "current_format", "console")
    for argv, says in (
        (["--log-format", "json", "plan", "--bogus"], "runner: unrecognized arguments: --bogus"),
        (["--log-format=json", "status", "--format", "yaml"], "runner status: argument --format: invalid choice"),
        (["--log-format", "json", "apply", "/nonexistent/m.yaml"], "/nonexistent/m.yaml: file not found"),
    ):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        events = log_events(err)
        assert len(events) == 1 and events[0]["level"] == "error" and says in events[0]["event"], err
    assert cli.main(["--log-format", "console", "plan", "--bogus"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("usage: runner") and "runner: error: unrecognized arguments: --bogus" in err
