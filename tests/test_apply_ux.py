"""What a person (or a CI log shipper) sees of ``runner apply`` (issue 13, DESIGN section 2).

- streams: the plan and the summary on stdout; with ``--log-format json`` every stderr line of
  apply, plan and status is one JSON object;
- after it runs: the lockfile's path and the reminder to commit it; "No changes" for a no-op
  (with ``--target`` too); ``--prune`` reported as pruned;
- while it runs: a heartbeat line (RUNNER_HEARTBEAT_SECONDS shortens its minute);
- Ctrl-C: what was saved, what still trains on the service, the command that resumes;
- at a terminal (a real pseudo-terminal): the ``yes`` question before paid trainings, and
  ``--auto-approve``.

Every run is a real subprocess against a real sandbox served on loopback.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from support.apply import SECRET, ledger, runner, sandbox
from support.manifests import write_manifest

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed as one JSON object (the test fails on any other line)."""
    events = []
    for line in stderr.splitlines():
        doc = json.loads(line)  # raises on plan text, tables or plain "error:" lines
        assert isinstance(doc, dict), line
        events.append(doc)
    return events


def submissions(url: str) -> int:
    return int(ledger(url)["trainings"])


def test_json_logs_every_stderr_line_and_results_on_stdout(tmp_path: Path) -> None:
    with sandbox(tmp_path / "state", train_seconds=1.2) as url:
        manifest = write_manifest(tmp_path, n_jobs=3, url=url, filename="m.yaml")
        env = {"RUNNER_HEARTBEAT_SECONDS": "0.3"}
        applied = runner("--log-format", "json", "apply", manifest.name, cwd=tmp_path, env=env)
        assert applied.code == 0, applied.stderr
        events = json_lines(applied.stderr)
        # The result is on stdout: the plan, the summary, the lockfile and the reminder.
        assert "Plan: 3 create" in applied.stdout
        assert "Apply: 3 succeeded" in applied.stdout
        assert "Lockfile: m.lock.yaml saved. Commit it (git add m.lock.yaml)" in applied.stdout
        assert "Plan:" not in applied.stderr and "Apply:" not in applied.stderr
        # The heartbeat: how many run, wait and are done, and the longest-running job.
        beats = [e for e in events if e["event"] == "apply.heartbeat"]
        assert beats, events
        assert {"running", "queued", "done", "longest", "longest_elapsed"} <= set(beats[0])
        assert beats[0]["running"] + beats[0]["queued"] + beats[0]["done"] == 3
        assert beats[0]["longest"].startswith("job-")
        assert {e.get("job") for e in events if e["event"] == "job.succeeded"} == {"job-000", "job-001", "job-002"}

        for args in (["plan", manifest.name], ["status", manifest.name], ["plan", manifest.name, "--refresh"]):
            shown = runner("--log-format", "json", *args, cwd=tmp_path)
            assert shown.code == 0, shown.stderr
            json_lines(shown.stderr)
            assert shown.stdout.strip()

        # -v adds each poll's answer, still one JSON object a line.
        write_manifest(tmp_path, n_jobs=4, url=url, filename="m.yaml")
        verbose = runner("--log-format", "json", "-v", "apply", manifest.name, cwd=tmp_path)
        assert verbose.code == 0, verbose.stderr
        polls = [e for e in json_lines(verbose.stderr) if e["event"] == "job.poll"]
        assert polls and {"job", "state", "elapsed"} <= set(polls[-1]), verbose.stderr
        assert polls[-1]["job"] == "job-003" and polls[-1]["state"] == "succeeded"
        assert "Apply: 1 succeeded, 3 unchanged" in verbose.stdout

        again = runner("--log-format", "json", "apply", manifest.name, cwd=tmp_path)
        assert again.code == 0, again.stderr
        json_lines(again.stderr)
        assert "No changes: 4 jobs unchanged; nothing was sent." in again.stdout
        assert "succeeded" not in again.stdout
        assert "Lockfile: m.lock.yaml (unchanged)" in again.stdout


def test_target_noop_is_unchanged_and_prune_is_pruned(tmp_path: Path) -> None:
    with sandbox(tmp_path / "state") as url:
        manifest = write_manifest(tmp_path, n_jobs=3, url=url, filename="m.yaml")
        assert runner("apply", manifest.name, cwd=tmp_path).code == 0
        targeted = runner("apply", manifest.name, "--target", "job-001", cwd=tmp_path)
        assert targeted.code == 0, targeted.stderr
        assert "No changes: 1 job unchanged; nothing was sent." in targeted.stdout
        assert "succeeded" not in targeted.stdout

        doc = yaml.safe_load(manifest.read_text())
        doc["jobs"] = doc["jobs"][:2]
        manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
        pruned = runner("apply", manifest.name, "--prune", cwd=tmp_path)
        assert pruned.code == 0, pruned.stderr
        assert "Apply: 1 pruned, 2 unchanged" in pruned.stdout
        assert re.search(r"job-002\s+orphan\s+pruned", pruned.stdout)
        assert "succeeded" not in pruned.stdout
        assert "Lockfile: m.lock.yaml saved. Commit it" in pruned.stdout


def _until(proc: subprocess.Popen[str], lines: list[str], predicate: Any, timeout: float = 60) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if predicate(json.loads(line)):
            return
    raise AssertionError("never seen:\n" + "".join(lines))


def test_ctrl_c_says_what_is_saved_still_training_and_how_to_resume(tmp_path: Path) -> None:
    """One Ctrl-C, and two in a row: the same notice both times, then a resume."""
    with sandbox(tmp_path / "state", train_seconds=3.0) as url:
        env = {**os.environ, "VIMMERSE_API_KEY": SECRET, "CI": "true"}
        for second in (False, True):
            folder = tmp_path / f"run{int(second)}"
            manifest = write_manifest(folder, n_jobs=2, url=url, filename="m.yaml")
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "--log-format", "json", "apply", manifest.name],
                cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            lines: list[str] = []
            training: set[str] = set()

            def both_training(event: dict[str, Any], training: set[str] = training) -> bool:
                if event["event"] == "job.training":
                    training.add(event["job"])
                return training == {"job-000", "job-001"}

            _until(proc, lines, both_training)
            proc.send_signal(signal.SIGINT)
            if second:
                time.sleep(0.05)
                proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
            # A second Ctrl-C that lands while the interpreter exits (after the save and the
            # notice) ends it by SIGINT, which a shell also shows as 130.
            assert proc.returncode in ((130, -signal.SIGINT) if second else (130,)), err
            events = json_lines("".join(lines) + err)
            notice = [e for e in events if e["event"] == "apply.interrupted"]
            assert notice and notice[-1]["saved"] == "m.lock.yaml", events
            assert notice[-1]["resume"] == "runner apply m.yaml"
            assert notice[-1]["still_training"] == ["job-000", "job-001"], out
            assert "Interrupted: every change so far is saved in m.lock.yaml." in out
            assert "Lockfile: m.lock.yaml saved. Commit it" in out
            assert "Still training on the service (paid; they keep running): job-000, job-001" in out
            assert "Resume following them (nothing is submitted twice): runner apply m.yaml" in out
            resumed = runner("apply", manifest.name, cwd=folder)
            assert resumed.code == 0, resumed.stderr
            assert re.search(r"job-000\s+resume\s+succeeded", resumed.stdout), resumed.stdout
            assert "Apply: 2 succeeded" in resumed.stdout
        assert ledger(url)["duplicate_trainings"] == 0


# ----- at a terminal -------------------------------------------------------------------------


def at_terminal(
    args: list[str], cwd: Path, answer: str | None = None, timeout: float = 90,
    interrupt_when: str | None = None,
) -> tuple[int, str]:
    """``runner ARGS`` with stdin, stdout and stderr on a pseudo-terminal; ``answer`` typed
    at the ``yes`` question; Ctrl-C (SIGINT to the process group, as a terminal sends it)
    once the screen matches the regular expression ``interrupt_when``. Returns the exit
    code and the screen's text (escapes removed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NO_COLOR")}
    env.update(VIMMERSE_API_KEY=SECRET, TERM="xterm-256color", COLUMNS="140", LINES="50")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=env,
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )
    os.close(slave)
    screen = b""
    asked = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                screen += data
                if answer is not None and not asked and b"Enter a value:" in screen:
                    os.write(master, answer.encode() + b"\r")
                    asked = True
                if interrupt_when and re.search(interrupt_when, ANSI.sub("", screen.decode(errors="replace"))):
                    os.killpg(proc.pid, signal.SIGINT)
                    interrupt_when = None
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError("timed out:\n" + screen.decode(errors="replace"))
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    return code, ANSI.sub("", screen.decode(errors="replace"))


def test_terminal_asks_yes_before_paid_trainings(tmp_path: Path) -> None:
    with sandbox(tmp_path / "state") as url:
        manifest = write_manifest(tmp_path, n_jobs=2, url=url, filename="m.yaml")
        for answer in ("no", "", "y", "YES please"):
            code, screen = at_terminal(["apply", manifest.name], tmp_path, answer)
            assert code == 1, screen
            assert "Do you want to start 2 trainings on" in screen and "Only 'yes' will be accepted" in screen
            assert "apply cancelled (the answer was not 'yes'); nothing was sent" in screen
            assert "Plan: 2 create" in screen  # the plan is shown before the question
        assert submissions(url) == 0
        assert not (tmp_path / "m.lock.yaml").exists() or "job-000" not in (tmp_path / "m.lock.yaml").read_text()

        code, screen = at_terminal(["apply", manifest.name], tmp_path, "yes")
        assert code == 0, screen
        assert "Traceback" not in screen and "internal error" not in screen
        assert "Apply: 2 succeeded" in screen and "Commit it (git add m.lock.yaml)" in screen

        # Nothing to start: no question.
        code, screen = at_terminal(["apply", manifest.name], tmp_path)
        assert code == 0 and "Do you want" not in screen and "No changes" in screen, screen


def test_auto_approve_and_embedded_sandbox_skip_the_question(tmp_path: Path) -> None:
    with sandbox(tmp_path / "state") as url:
        manifest = write_manifest(tmp_path, n_jobs=1, url=url, filename="m.yaml")
        code, screen = at_terminal(["apply", manifest.name, "--auto-approve"], tmp_path)
        assert code == 0, screen
        assert "Do you want" not in screen and "Apply: 1 succeeded" in screen
    embedded = tmp_path / "emb"
    manifest = write_manifest(embedded, n_jobs=1, url="sandbox", filename="m.yaml")
    code, screen = at_terminal(["apply", manifest.name], embedded)
    assert code == 0, screen
    assert "Do you want" not in screen and "Apply: 1 succeeded" in screen


MARKUP = "[/] [bold red]boom[/bold [link=http://evil.example]x[/link] [red"


def test_terminal_view_shows_a_failure_full_of_markup_as_text(tmp_path: Path, monkeypatch: Any) -> None:
    """Issue 13, item 1, through the real terminal view: a server's failure message full of
    rich markup is shown as text, in the live view and the summary; the apply does not crash."""
    from runner.sandbox import dialects

    monkeypatch.setattr(dialects, "_fail_message", lambda asset: MARKUP)
    # Served in this process, so the patch applies; "args" answers a failure with its message.
    with sandbox(tmp_path / "state", dialect="args") as url:
        manifest = write_manifest(tmp_path, n_jobs=1, url=url, jobs=[
            {"name": "bad", "lora_prefix": "FAILS", "images": "data/job000"},
        ], filename="m.yaml")
        code, screen = at_terminal(["apply", manifest.name, "--auto-approve"], tmp_path)
    assert code == 3, screen
    assert "internal error" not in screen and "Traceback" not in screen and "MarkupError" not in screen
    assert screen.count(MARKUP) >= 2, screen  # the live view's line and the summary's cell
    assert "Apply: 1 failed, 1 succeeded" in screen


def test_terminal_view_estimates_the_time_left_once_a_shape_has_ended(tmp_path: Path) -> None:
    """Issue 13, item 3: three trainings of one shape, one at a time; after the first ends,
    the live view says about how long is left (and not before: no guessed number)."""
    with sandbox(tmp_path / "state", train_seconds=1.5) as url:
        manifest = write_manifest(tmp_path, n_jobs=3, url=url, api={"max_in_flight": 1}, filename="m.yaml")
        code, screen = at_terminal(["apply", manifest.name, "--auto-approve"], tmp_path)
    assert code == 0, screen
    assert "Apply: 3 succeeded" in screen
    first_done = screen.index("1/3 jobs finished")
    assert " left" not in screen[:first_done], screen[:first_done]
    estimates = [int(s) for s in re.findall(r"about (\d+)s left", screen)]
    assert estimates, screen
    assert all(e <= 4 for e in estimates), estimates  # at most two trainings of ~1.5 s remain


def test_terminal_ctrl_c_then_a_resumed_apply(tmp_path: Path) -> None:
    """Issue 13, items 3 and 4, on a real terminal: Ctrl-C while both jobs train says what
    was saved, what still trains and how to resume; the resumed apply shows a row for each
    resumed job and finishes them without a second submission."""
    with sandbox(tmp_path / "state", train_seconds=3.0) as url:
        manifest = write_manifest(tmp_path, n_jobs=2, url=url, filename="m.yaml")
        code, screen = at_terminal(
            ["apply", manifest.name, "--auto-approve"], tmp_path,
            interrupt_when=r"(?s)job-00[01]\s+create\s+training.*job-00[01]\s+create\s+training",
        )
        assert code == 130, screen
        assert "Traceback" not in screen and "internal error" not in screen
        assert "Interrupted: every change so far is saved in m.lock.yaml." in screen
        assert "Still training on the service (paid; they keep running): job-000, job-001" in screen
        assert "Resume following them (nothing is submitted twice): runner apply m.yaml" in screen

        code, screen = at_terminal(["apply", manifest.name], tmp_path)
        assert code == 0, screen
        assert re.search(r"job-000\s+resume\s+training", screen) and re.search(r"job-001\s+resume\s+training", screen)
        assert re.search(r"job-000\s+│?\s*resume\s+│?\s*succeeded", screen), screen  # the summary table
        assert "Apply: 2 succeeded" in screen and "Do you want" not in screen  # nothing new to pay for
        assert ledger(url)["trainings"] == 2 and ledger(url)["duplicate_trainings"] == 0
