"""The one outer handler maps errors to DESIGN section 2's exit codes."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

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
    code = cli.main(["validate", "whatever.yaml"])
    err = capsys.readouterr().err
    assert code == 70
    assert "internal error" in err and "RuntimeError" in err and "Traceback" in err
    assert secret not in err
