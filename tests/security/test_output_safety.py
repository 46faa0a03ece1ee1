"""Outside text is data in every view (issue 12, items 5 and 9; STYLE habit 13).

As an attacker would: a pull request adds manifests whose file names carry Markdown, HTML,
@mentions, ESC sequences, newlines and GitHub workflow commands, and a lockfile whose error
messages do; ``runner plan --format markdown`` (the PR comment), ``plan`` and ``status`` (the
CI log) run on it as real subprocesses. The Markdown is rendered (markdown-it) and split
into table cells the way GitHub's cmark-gfm does; the text is searched for raw control
characters and lines a CI runner would obey. Then the views that need a terminal or a
logger (rich tables, the live apply view, structlog's console renderer), ``output``'s
refusals, and ``is_loopback``, in-process.
"""

from __future__ import annotations

import io
import json
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from support.apply import runner
from support.manifests import write_manifest

from runner import logsetup
from runner.api.endpoint import check_endpoint_url, inferred_api
from runner.diagnostics import Diagnostic
from runner.errors import InputError, UsageError
from runner.manifest.values import is_loopback
from runner.models import LockEntry
from runner.views.plan import md_code
from runner.views.status import status_table

# What a pull request writes: Markdown, HTML, links, images, mentions, a table row break,
# terminal escapes, bidi, CI commands (GitHub's both syntaxes, Azure's), rich markup.
HOSTILE = (
    "bad | cell\n## Heading <img src=x onerror=alert(1)> @octocat [l](https://evil.example) "
    "![i](https://evil.example/p.png) ```x``` \\| *b* _i_ &#64;team\r::error ::pwned\x1b[31m "
    "##[error]x ##vso[task.setvariable variable=a]b [link=https://evil.example]click[/link] "
    "[bold red]RED[/] \u202eevil\x9b2J"
)
HOSTILE_NAMES = [
    "pr ` <img src=x onerror=alert(1)> @octocat [l](javascript:alert(1)) ` | x \\| end.yaml",
    "::error ::pwned.yaml",
    "m\n::warning ::x\x1b[31m.yaml",
    "##[error]named.yaml",
]
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def assert_printable(text: str) -> None:
    """No raw control character (bar newline) and no line a CI runner takes for a command."""
    assert not CONTROL.search(text), repr(text)
    for line in text.splitlines():
        assert not line.lstrip().startswith("::"), line
        assert "##[" not in line and "##vso[" not in line, line


# ----- Markdown as GitHub reads it ---------------------------------------------------------


def gfm_cells(row: str) -> list[str]:
    """A table row split as cmark-gfm does: ``\\`` plus any ASCII punctuation is one escaped
    pair (so ``\\\\|`` ends a cell), any other ``|`` separates cells."""
    text = row.strip()
    text = text[1:] if text.startswith("|") else text
    cells: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in string.punctuation:
            current += text[i : i + 2]
            i += 2
        elif text[i] == "|":
            cells.append(current)
            current = ""
            i += 1
        else:
            current += text[i]
            i += 1
    if current.strip():
        cells.append(current)
    return cells


def assert_tables_hold(markdown: str) -> None:
    """Every row of every table has exactly as many cells as the table's header."""
    lines = markdown.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(-+:?\|)+", lines[i + 1]):
            width = len(gfm_cells(line))
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                assert len(gfm_cells(row)) == width, row


def outside_code(markdown: str) -> str:
    """The rendered HTML with every code span and code block taken out."""
    html = MarkdownIt("commonmark").enable("table").render(markdown)
    return re.sub(r"<(code|pre)[^>]*>.*?</\1>", "", html, flags=re.S)


def assert_markdown_inert(markdown: str) -> None:
    """Nothing outside code renders as HTML, a link, an image, emphasis, a heading or a
    mention; the tables keep their shape; the text is printable."""
    assert_printable(markdown)
    assert_tables_hold(markdown)
    rest = outside_code(markdown)
    for needle in ("<img", "<a ", "<em>", "Heading", "@octocat", "evil.example", "javascript:", "&#64;", "@team"):
        assert needle not in rest, (needle, rest)


@pytest.fixture
def pr_folder(tmp_path: Path) -> Path:
    """Manifests with hostile names, one whose lockfile holds a hostile error message (its
    job is retried), and one that cannot be planned because of hostile YAML."""
    for name in HOSTILE_NAMES:
        write_manifest(tmp_path, jobs=[{"name": "job", "lora_prefix": "J"}], filename=name, images_per_job=1)
    failed = write_manifest(tmp_path, jobs=[{"name": "failed-job", "lora_prefix": "F"}], filename="failed.yaml",
                            images_per_job=1)
    plan = runner("plan", failed.name, "--format", "json", cwd=tmp_path)
    assert plan.code == 0, plan.stderr
    fingerprint = json.loads(plan.stdout)["jobs"][0]["fingerprint"]
    lock = {"version": 1, "jobs": {"failed-job": {
        "fingerprint": fingerprint, "status": "failed", "error": {"status": 422, "message": HOSTILE},
        "api": "sandbox", "option": "FluxFinetune", "images": 1,
    }}}
    (tmp_path / "failed.lock.yaml").write_text(yaml.safe_dump(lock, sort_keys=False))
    bad = {"version": 1, "jobs": [{"name": HOSTILE, "images": HOSTILE}]}
    (tmp_path / "unplannable.yaml").write_text(yaml.safe_dump(bad))
    return tmp_path


def test_plan_markdown_of_a_hostile_pull_request_stays_inert(pr_folder: Path) -> None:
    """Every manifest's plan in one PR comment: names, a lockfile message and a YAML error
    full of Markdown and HTML render as code; no table cell breaks; exit 1 (one cannot plan)."""
    result = runner("plan", "*.yaml", "--format", "markdown", cwd=pr_folder)
    assert result.code == 1, result.stderr
    md = result.stdout
    assert "could not be planned" in md and "| retry |" in md
    assert_markdown_inert(md)
    assert md.count("| retry | `failed-job` |") == 1
    # The escaped forms are shown, so a reviewer sees what the attacker wrote.
    assert "\\x1b[31m" in md and "\\n" in md and "\\u202e" in md


@pytest.mark.parametrize("name", [*HOSTILE_NAMES, "failed.yaml"])
def test_plan_markdown_of_one_hostile_manifest_stays_inert(pr_folder: Path, name: str) -> None:
    """One manifest at a time: its heading and its table are inert too."""
    result = runner("plan", name, "--format", "markdown", cwd=pr_folder)
    assert result.code == 0, result.stderr
    assert_markdown_inert(result.stdout)


def test_plan_and_status_text_of_a_hostile_pull_request_are_printable(pr_folder: Path) -> None:
    """The CI log: plan and status (one manifest, every manifest, text and JSON) carry no raw
    control character and no workflow command; JSON still decodes to exactly what was written."""
    for args in (("plan", "*.yaml"), ("plan", "failed.yaml"), ("status", "*.yaml"), ("status", "failed.yaml"),
                 ("plan", "failed.yaml", "--format", "json"), ("status", "failed.yaml", "--format", "json")):
        result = runner(*args, cwd=pr_folder)
        assert result.code in (0, 1), (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert_printable(result.stdout)
        if "json" not in args:
            assert_printable(result.stderr)
    status = json.loads(runner("status", "failed.yaml", "--format", "json", cwd=pr_folder).stdout)
    assert status["jobs"][0]["error"]["message"] == HOSTILE
    plan = json.loads(runner("plan", "failed.yaml", "--format", "json", cwd=pr_folder).stdout)
    assert plan["jobs"][0]["reasons"] == [f"previous attempt failed: {HOSTILE}"]
    text = runner("status", "failed.yaml", cwd=pr_folder).stdout
    assert "bad | cell\\n## Heading" in text  # shown escaped, on its line


def test_validate_and_plan_errors_name_hostile_files_printably(pr_folder: Path) -> None:
    """A hostile file name in validate's summary and in plan's per-manifest error line."""
    (pr_folder / "bad\n::error ::x.yaml").write_text("version: 1\njobs: []\n")
    for args in (("validate", "*.yaml"), ("plan", "*.yaml")):
        result = runner(*args, cwd=pr_folder)
        assert_printable(result.stdout + result.stderr)


def test_a_hostile_api_error_message_is_printable(tmp_path: Path) -> None:
    """A 401 whose message carries a workflow command and ESC: apply's error line is printable."""
    from support.manifests import write_manifest as write_api_manifest

    from runner.sandbox.config import SandboxConfig
    from runner.sandbox.serve import start_server

    async def refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        body = json.dumps({"message": "bad key\n::error ::pwned\x1b[31m ##[error]x"}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    with start_server(SandboxConfig(state_dir=tmp_path / "unused"), app=refuse) as server:
        write_api_manifest(tmp_path, n_jobs=1, url=server.url, images_per_job=1, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
    assert result.code == 1 and "401" in result.stderr
    assert_printable(result.stderr)


def test_diagnostics_escape_file_path_and_message() -> None:
    """A diagnostic about a hostile file, key and value is one printable line per diagnostic."""
    d = Diagnostic("m\n::error ::x\x1b[2J.yaml", 3, 5, "jobs[0].\u202ename", f"'{HOSTILE}' is not valid")
    line = d.format()
    assert "\n" not in line
    assert_printable(line)
    assert line.startswith("m\\n::error ::x\\x1b[2J.yaml:3:5: jobs[0].\\u202ename: ")
    start = Diagnostic("::error ::pwned.yaml", 1, 1, "", "bad").format()
    assert start == "\\x3a:error ::pwned.yaml:1:1: bad"


# ----- rich views: outside text is never markup ----------------------------------------------


def _render_rich(renderable: Any) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=400, record=True)
    console.print(renderable)
    raw = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b]8;" not in raw  # no OSC 8 hyperlink: [link=...] was not read as markup
    return console.export_text()


def test_status_table_shows_markup_as_text() -> None:
    """rich's status table: [link=...] and [bold red] in a message are shown, not obeyed."""
    rows = [{"name": "job", "status": "failed", "trigger_word": None,
             "error": {"status": 422, "message": HOSTILE}, "made_elsewhere": False}]
    text = _render_rich(status_table(rows, title="[link=https://evil.example]m.yaml[/link]"))
    assert "[link=https://evil.example]click[/link]" in text and "[bold red]RED[/]" in text
    assert "[link=https://evil.example]m.yaml[/link]" in text
    assert "\\x1b[31m" in text and "\\u202e" in text
    assert_printable(text)


def test_live_apply_view_shows_markup_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    """The apply progress line and summary table print messages as text, escaped."""
    from runner.models import ApplyResult, Outcome
    from runner.views.progress import RichReporter, print_summary_table

    entry = LockEntry("sha256:" + "0" * 64, "failed", error={"status": 422, "message": HOSTILE})
    RichReporter().job_changed("job", "create", entry, HOSTILE)
    print_summary_table(ApplyResult(outcomes=[Outcome("job", "create", "failed", None, HOSTILE)]))
    err = capsys.readouterr().err
    assert err.count("[link=https://evil.example]click[/link]") >= 1
    assert "[bold red]RED[/]" in err
    assert_printable(err)


# ----- logs ----------------------------------------------------------------------------------


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    import structlog

    stream = io.StringIO()
    yield stream
    structlog.reset_defaults()
    logsetup._pending = None


def test_console_logs_escape_values(log_stream: io.StringIO) -> None:
    """structlog's console renderer: a hostile value stays on its line, escaped; the event's
    line starts no workflow command."""
    logsetup.configure("console", 0, stream=log_stream)
    logsetup.get_logger("t").warning("job failed", job="job", message=HOSTILE)
    logsetup.get_logger("t").warning("::error ::pwned\nsecond line", word="##[error]x")
    lines = log_stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert_printable(log_stream.getvalue())
    assert "\\x1b[31m" in lines[0]


def test_json_logs_decode_to_the_same_values(log_stream: io.StringIO) -> None:
    """JSON lines: each decodes to exactly what was logged, and carries no ``##[`` a GitHub
    runner would obey (written ``#\\u0023[``) nor a raw C1 or bidi control."""
    logsetup.configure("json", 0, stream=log_stream)
    logsetup.get_logger("t").warning("job failed", message=HOSTILE)
    (line,) = log_stream.getvalue().splitlines()
    assert json.loads(line)["message"] == HOSTILE
    assert_printable(line)


# ----- output --------------------------------------------------------------------------------
# The lockfile schema refuses such words (tests/security/test_trigger_words.py); should one get
# past it, output still refuses or escapes it.


@pytest.mark.parametrize("word", ["SNKR_x\nBASH_ENV=/tmp/x", "SNKR_\x1b[2J", "::error ::pwned", "../../v1/admin"])
def test_output_refuses_or_escapes_an_unsafe_word(word: str) -> None:
    """env and the single word refuse it naming the job (exit 1); JSON is valid and exact;
    the table escapes it."""
    from runner.commands.output import render

    words = {"red-sneaker": word}
    for fmt, single in (("env", False), ("text", True)):
        with pytest.raises(InputError) as refused:
            render(words, fmt, single=single)
        assert "red-sneaker" in str(refused.value) and refused.value.exit_code == 1
        assert_printable(str(refused.value))
    doc = render(words, "json")
    assert json.loads(doc) == words
    assert_printable(doc)
    table = render(words, "text")
    assert_printable(table) and "\n" not in table.rstrip("\n")


def test_output_env_keeps_plain_words_as_they_are() -> None:
    """Plain words are written bare, as before."""
    from runner.commands.output import render

    assert render({"red-sneaker": "SNKR_k2x9", "mug": "MUG.v2-a_1"}, "env") == "RED_SNEAKER=SNKR_k2x9\nMUG=MUG.v2-a_1\n"


def test_output_env_collision_message_is_printable() -> None:
    """Two jobs that become one variable: the usage error is printable too."""
    from runner.commands.output import render

    with pytest.raises(UsageError):
        render({"a-b": "A_1", "a.b": "A_2"}, "env")


# ----- the primitives, for any text ---------------------------------------------------------

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ud800-\udfff]")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_safe_text_is_one_printable_line(text: str) -> None:
    """``safe`` of any string: no newline, no control or bidi character, no CI command."""
    shown = logsetup.safe(text)
    assert not UNSAFE.search(shown)
    assert not shown.lstrip().startswith("::") and "##[" not in shown


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_md_code_never_leaves_its_cell(text: str) -> None:
    """``md_code`` of any string: one GFM table cell, rendered as at most one code span and
    nothing else."""
    cell = md_code(text)
    row = f"| a | {cell} |"
    assert len(gfm_cells(row)) == 2, row
    html = MarkdownIt("commonmark").enable("table").render(f"| h | v |\n|---|---|\n{row}\n")
    assert html.count("<td>") == 2 and html.count("<code>") <= 1
    assert outside_code(f"| h | v |\n|---|---|\n{row}\n").count("<td>") == 2


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=12))
def test_json_safe_is_the_same_data(value: Any) -> None:
    """``json_safe`` keeps the data exactly; its text has no raw C1/bidi control or ``##[``."""
    text = logsetup.json_safe(json.dumps(value, ensure_ascii=False, indent=2))
    assert json.loads(text) == value
    assert "##[" not in text
    assert not re.search("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]", text)


# ----- loopback is a literal address or localhost ------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True), ("LOCALHOST", True), ("127.0.0.1", True), ("127.8.9.10", True),
        ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True),
        ("evil.localhost", False), ("api.localhost", False), ("localhost.", False),
        ("localhost.evil.example", False), ("127.1", False), ("0.0.0.0", False), ("10.0.0.1", False),
        ("127.0.0.1.nip.io", False), ("", False),
    ],
)
def test_only_literal_loopback_addresses_and_localhost_are_loopback(host: str, loopback: bool) -> None:
    """``*.localhost`` goes to the system resolver, which may send it anywhere."""
    assert is_loopback(host) is loopback


def test_plain_http_to_a_localhost_subdomain_is_refused(tmp_path: Path) -> None:
    """A PR pointing the endpoint at ``http://evil.localhost`` gets no plan (exit 1), so the
    key is never sent in clear text to wherever that name resolves."""
    write_manifest(tmp_path, api={"endpoint": "http://evil.localhost:8000"}, images_per_job=1)
    result = runner("plan", "manifest.yaml", cwd=tmp_path)
    assert result.code == 1
    assert "http:// is only allowed to this machine" in result.stderr
    with pytest.raises(UsageError):
        check_endpoint_url("http://x.localhost", "api.endpoint")
    assert check_endpoint_url("http://localhost:9", "api.endpoint") == "http://localhost:9"


def test_samples_on_a_localhost_subdomain_do_not_make_an_entry_the_sandbox_s() -> None:
    """An old entry whose samples sit on ``*.localhost`` is not taken for a sandbox entry."""
    entry = LockEntry("sha256:" + "0" * 64, "succeeded", results=["http://cdn.localhost/x.png"])
    assert inferred_api(entry, "https://api.vimmerse.net") == "https://api.vimmerse.net"
    local = LockEntry("sha256:" + "0" * 64, "succeeded", results=["http://127.0.0.1:9/x.png"])
    assert inferred_api(local, "https://api.vimmerse.net") == "sandbox"
