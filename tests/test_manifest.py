"""load_manifest / load_or_raise: the values plan and apply receive, and ${VAR} expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support.images import make_image
from support.manifests import write_manifest

from runner.errors import InputError
from runner.manifest.read import expand_string, load_manifest, load_or_raise
from runner.models import ApiSettings


def test_quickstart_loads(repo_root: Path) -> None:
    """The shipped quickstart is valid, warning-free, with all three options."""
    manifest, diags = load_manifest(repo_root / "examples" / "quickstart.yaml")
    assert diags == []
    assert manifest is not None
    assert {j.option for j in manifest.jobs} == {"FluxFinetune", "FluxProFinetune", "FluxKontextFinetune"}
    assert all(p.is_absolute() and p.is_file() for j in manifest.jobs for p in j.images)


def test_defaults_merge_and_job_values(tmp_path: Path) -> None:
    """defaults fill what a job leaves out; a job's own value wins; images are absolute, sorted."""
    path = write_manifest(
        tmp_path,
        jobs=[{"name": "a"}, {"name": "b", "lora_prefix": "BEE", "num_iterations": 7}],
        defaults={"option": "FluxProFinetune", "lora_prefix": "DEF", "finetune_type": "Style", "webhook_url": "https://hook.example/x"},
        images_per_job=3,
    )
    manifest = load_or_raise(path)
    a, b = manifest.jobs
    assert (a.option, a.lora_prefix, a.finetune_type, a.num_iterations) == ("FluxProFinetune", "DEF", "Style", 0)
    assert (b.lora_prefix, b.num_iterations, b.webhook_url) == ("BEE", 7, "https://hook.example/x")
    assert [p.name for p in a.images] == ["000.png", "001.png", "002.png"]
    assert all(p.is_absolute() for p in a.images)
    assert a.line == 10 and b.line > a.line
    assert manifest.path == path.absolute()


def test_builtin_defaults(manifest_path: Path) -> None:
    """Without defaults, jobs get the API's defaults (FluxFinetune, Auto, MYLORA... as in models)."""
    job = load_or_raise(manifest_path).jobs[0]
    assert (job.option, job.finetune_type, job.num_iterations, job.prompt) == ("FluxFinetune", "Auto", 0, None)


def test_api_settings_and_durations(tmp_path: Path) -> None:
    """api values are typed; durations become float seconds; absent ones keep defaults."""
    path = write_manifest(
        tmp_path,
        api={"endpoint": "https://api.vimmerse.net", "poll_interval": "500ms", "job_timeout": "2h", "requests_per_second": 3, "max_submissions": 0},
    )
    api = load_or_raise(path).api
    assert api == ApiSettings(endpoint="https://api.vimmerse.net", poll_interval=0.5, job_timeout=7200.0, requests_per_second=3.0, max_submissions=0)
    assert isinstance(api.requests_per_second, float)


def test_prompt_from_defaults_only_for_kontext(tmp_path: Path) -> None:
    """A default prompt reaches Kontext jobs; other jobs get None (the API ignores it)."""
    make_image(tmp_path / "s.png")
    make_image(tmp_path / "e.png")
    path = write_manifest(
        tmp_path,
        jobs=[{"name": "plain"}, {"name": "k", "option": "FluxKontextFinetune", "pairs": [{"start": "s.png", "end": "e.png"}]}],
        defaults={"prompt": "make it red"},
    )
    plain, kontext = load_or_raise(path).jobs
    assert plain.prompt is None
    assert kontext.prompt == "make it red"
    assert [p.name for p in kontext.images] == ["s.png", "e.png"]


def _declaring(path: Path, *names: str) -> Path:
    """The manifest at ``path`` with a top-level ``variables`` list."""
    text = path.read_text()
    path.write_text(text.replace("version: 1\n", f"version: 1\nvariables: [{', '.join(names)}]\n", 1))
    return path


def test_env_expansion(tmp_path: Path) -> None:
    """${VAR} of a declared variable comes from the given environ; $${ is a literal ${."""
    path = write_manifest(tmp_path, jobs=[{"name": "a", "webhook_url": "https://${HOST}/x?q=$${raw}"}])
    job = load_or_raise(_declaring(path, "HOST"), environ={"HOST": "hooks.example"}).jobs[0]
    assert job.webhook_url == "https://hooks.example/x?q=${raw}"
    assert job.webhook_source == "https://${HOST}/x?q=$${raw}"  # what every view shows


def test_undeclared_variable_positioned_at_dollar(tmp_path: Path) -> None:
    """A variable missing from ``variables`` is one error at the column of its ``${``,
    with no cascade, even when the environment has it."""
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\njobs:\n  - name: a\n    image_urls: ['https://x.example/a']\n    webhook_url: https://${NOPE}/x\n")
    manifest, diags = load_manifest(path, environ={"NOPE": "hooks.example"})
    assert manifest is None
    assert [d.format() for d in diags] == [
        f"{path}:5:26: jobs[0].webhook_url: ${{NOPE}}: NOPE is not declared in variables "
        "(the top-level list of the variables ${...} may expand)"
    ]


def test_unset_declared_variable_warns_and_apply_would_refuse(tmp_path: Path) -> None:
    """validate and plan never need the value: a declared variable that is not set is a
    warning at its ``${``, and ``Manifest.unset`` holds the error apply raises."""
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nvariables: [NOPE]\njobs:\n  - name: a\n    image_urls: ['https://x.example/a']\n    webhook_url: https://${NOPE}/x\n")
    manifest, diags = load_manifest(path, environ={})
    assert manifest is not None
    assert [d.format() for d in diags] == [
        f"{path}:6:26: warning: jobs[0].webhook_url: ${{NOPE}}: environment variable NOPE is not set; "
        "apply needs it (validate and plan do not)"
    ]
    assert [d.format() for d in manifest.unset] == [
        f"{path}:6:26: jobs[0].webhook_url: ${{NOPE}}: environment variable NOPE is not set"
    ]
    assert manifest.jobs[0].webhook_url is None  # never the source text sent as a URL


@pytest.mark.parametrize(
    "text, expected, problems",
    [
        ("plain", "plain", []),
        ("${A}-${B}", "1-2", []),
        ("$${A}", "${A}", []),
        ("$A", "$A", []),
        ("x${A", "x${A", ["unterminated"]),
        ("${1A}", "${1A}", ["invalid variable name"]),
        ("${NOPE}", "${NOPE}", ["not set"]),
    ],
)
def test_expand_string(text: str, expected: str, problems: list[str]) -> None:
    """Expansion rules: braces only, escapes, bad names and unterminated references."""
    out, found = expand_string(text, {"A": "1", "B": "2"})
    assert out == expected
    assert len(found) == len(problems)
    assert all(p in msg for p, (_, msg) in zip(problems, found, strict=True))


def test_load_or_raise_raises_with_all_errors(tmp_path: Path) -> None:
    """load_or_raise raises InputError carrying every error, sorted by position."""
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\njobs:\n  - name: A\n    image_urls: ['ftp://x']\n  - name: b\n")
    with pytest.raises(InputError) as info:
        load_or_raise(path)
    lines = [d.line for d in info.value.diagnostics]
    assert len(lines) == 3 and lines == sorted(lines)
    assert str(path) in str(info.value)


def test_warnings_logged_and_strict(tmp_path: Path) -> None:
    """Warnings are logged and collected; strict turns them into errors."""
    make_image(tmp_path / "s.png")
    make_image(tmp_path / "e.png")
    path = write_manifest(
        tmp_path,
        jobs=[{"name": "k", "option": "FluxKontextFinetune", "finetune_type": "Style", "prompt": "p", "pairs": [{"start": "s.png", "end": "e.png"}]}],
    )
    collected: list[object] = []
    with capture_logs() as logs:
        load_or_raise(path, warnings=collected)  # type: ignore[arg-type]
    assert len(collected) == 1
    assert logs and logs[0]["log_level"] == "warning" and "finetune_type" in logs[0]["diagnostic"]
    with pytest.raises(InputError):
        load_or_raise(path, strict=True)


def test_display_name_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages name the file as the caller gave it (relative stays relative)."""
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text("version: 1\njobs: []\n")
    _, diags = load_manifest(Path("m.yaml"))
    assert diags[0].format().startswith("m.yaml:2:7: jobs: ")


def test_yaml_error_becomes_diagnostic(tmp_path: Path) -> None:
    """A file that is not YAML gives one positioned diagnostic, not an exception."""
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\njobs: [\n")
    manifest, diags = load_manifest(path)
    assert manifest is None and len(diags) == 1 and diags[0].line >= 2
