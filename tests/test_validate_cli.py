"""``runner validate`` through a real subprocess: exit codes, positions, JSON, strictness."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import run_runner
from support.images import make_bomb_png, make_image, truncate
from support.manifests import write_manifest
from support.paths import DATA

# (file under tests/data, the "line:col: key.path: message" it must print)
DATA_CASES = [
    ("duplicate_keys.yaml", "6:5: jobs[0].lora_prefix: duplicate key 'lora_prefix' (first defined at line 5)"),
    ("alias_bomb.yaml", "7:32: the document expands to more than"),
    ("tabs.yaml", "4:1: invalid YAML: a tab character"),
    ("unknown_key.yaml", "5:5: jobs[0].lora_prefx: unknown key 'lora_prefx'; did you mean 'lora_prefix'?"),
    ("wrong_enum.yaml", "4:13: jobs[0].option: 'FluxFinetuneX' is not one of"),
    ("both_sources.yaml", "3:5: jobs[0]: give images or image_urls, not both"),
    ("non_http_url.yaml", "6:9: jobs[0].image_urls[1]: must be an http:// or https:// URL"),
    ("undeclared_var.yaml", "3:42: defaults.webhook_url: ${RUNNER_TEST_SURELY_UNSET_VAR}: RUNNER_TEST_SURELY_UNSET_VAR is not declared in variables"),
    ("duplicate_names.yaml", "5:11: jobs[1].name: duplicate job name 'same' (first used at line 3)"),
    ("kontext_no_prompt.yaml", "3:5: jobs[0]: missing required key 'prompt'"),
    ("http_endpoint.yaml", "3:13: api.endpoint: http:// is only allowed to this machine"),
]


@pytest.mark.parametrize("name, expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_files(name: str, expected: str) -> None:
    """Each bad manifest under tests/data exits 1 naming file, line, column and key path."""
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_TEST_SURELY_UNSET_VAR"}
    result = run_runner("validate", f"data/{name}", cwd=DATA.parent, env=env)
    assert result.code == 1, result.stdout + result.stderr
    assert f"data/{name}:{expected}" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def _manifest_with(tmp_path: Path, images: str, extra: str = "") -> None:
    (tmp_path / "m.yaml").write_text(f"version: 1\njobs:\n  - name: a\n    images: {images}\n{extra}")


def _missing(tmp_path: Path) -> str:
    make_image(tmp_path / "ok.png")
    _manifest_with(tmp_path, "[ok.png, gone.png]")
    return "m.yaml:4:22: jobs[0].images[1]: file not found: gone.png"


def _non_image(tmp_path: Path) -> str:
    (tmp_path / "notes.jpg").write_text("just text")
    _manifest_with(tmp_path, "notes.jpg")
    return "m.yaml:4:13: jobs[0].images: not a JPEG, PNG or WebP image: notes.jpg"


def _truncated(tmp_path: Path) -> str:
    truncate(make_image(tmp_path / "d" / "cut.jpg", size=(64, 64), fmt="JPEG"))
    _manifest_with(tmp_path, "d")
    return "m.yaml:4:13: jobs[0].images: truncated image: d/cut.jpg"


def _bomb(tmp_path: Path) -> str:
    make_bomb_png(tmp_path / "bomb.png")
    _manifest_with(tmp_path, "'*.png'")
    return "m.yaml:4:13: jobs[0].images: image has too many pixels (over 89478485; refused as a decompression bomb): bomb.png"


def _symlink_loop(tmp_path: Path) -> str:
    (tmp_path / "a.png").symlink_to("b.png")
    (tmp_path / "b.png").symlink_to("a.png")
    _manifest_with(tmp_path, "[a.png]")
    return "m.yaml:4:14: jobs[0].images[0]: symlink loop: a.png"


def _fifo(tmp_path: Path) -> str:
    os.mkfifo(tmp_path / "pipe.png")
    _manifest_with(tmp_path, "pipe.png")
    return "m.yaml:4:13: jobs[0].images: not a regular file"


def _empty_folder(tmp_path: Path) -> str:
    (tmp_path / "empty").mkdir()
    _manifest_with(tmp_path, "empty")
    return "m.yaml:4:13: jobs[0].images: no images in folder"


def _kontext_odd(tmp_path: Path) -> str:
    for rel in ("s/a.png", "s/b.png", "e/a.png"):
        make_image(tmp_path / rel)
    (tmp_path / "m.yaml").write_text(
        "version: 1\njobs:\n  - name: k\n    option: FluxKontextFinetune\n    prompt: p\n"
        "    pairs:\n      start_dir: s\n      end_dir: e\n"
    )
    return "m.yaml:8:16: jobs[0].pairs.end_dir: no end image for start s/b.png"


def _kontext_missing_end(tmp_path: Path) -> str:
    make_image(tmp_path / "car1.jpg", fmt="JPEG")
    (tmp_path / "m.yaml").write_text(
        "version: 1\njobs:\n  - name: k\n    option: FluxKontextFinetune\n    prompt: p\n"
        "    pairs:\n      - {start: car1.jpg, end: car1_red.jpg}\n"
    )
    return "m.yaml:7:32: jobs[0].pairs[0].end: file not found: car1_red.jpg"


def _oversize(tmp_path: Path) -> str:
    with (tmp_path / "m.yaml").open("w") as fh:
        fh.write("version: 1\njobs:\n")
        fh.write("# padding\n" * 600_000)
    return "m.yaml:524289:4: file is too large"  # the line that crosses the 5 MB limit


TMP_CASES: list[Callable[[Path], str]] = [
    _missing, _non_image, _truncated, _bomb, _symlink_loop, _fifo, _empty_folder,
    _kontext_odd, _kontext_missing_end, _oversize,
]


@pytest.mark.parametrize("make", TMP_CASES, ids=[f.__name__.strip("_") for f in TMP_CASES])
def test_bad_inputs_on_disk(tmp_path: Path, make: Callable[[Path], str]) -> None:
    """Bad files on disk exit 1 with the manifest's line:col, key path and the file as written."""
    expected = make(tmp_path)
    result = run_runner("validate", "m.yaml", cwd=tmp_path, timeout=30)
    assert result.code == 1, result.stdout + result.stderr
    assert expected in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_image(tmp_path: Path) -> None:
    """An image without read permission is 'permission denied' at its place."""
    image = make_image(tmp_path / "a.png")
    image.chmod(0)
    _manifest_with(tmp_path, "a.png")
    result = run_runner("validate", "m.yaml", cwd=tmp_path)
    assert result.code == 1
    assert "m.yaml:4:13: jobs[0].images: permission denied: a.png" in result.stdout


def test_quickstart_is_valid(repo_root: Path) -> None:
    """The README's first command exits 0."""
    result = run_runner("validate", "examples/quickstart.yaml", cwd=repo_root)
    assert result.code == 0, result.stdout + result.stderr
    assert "examples/quickstart.yaml: valid (5 jobs" in result.stdout


def test_json_format_and_worst_exit(tmp_path: Path) -> None:
    """--format json prints one document covering every manifest; exit is the worst."""
    good = write_manifest(tmp_path, filename="good.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\njobs: []\n")
    result = run_runner("validate", "--format", "json", "good.yaml", "bad.yaml", cwd=tmp_path)
    assert result.code == 1
    doc = json.loads(result.stdout)
    assert doc["version"] == 1 and doc["valid"] is False
    first, second = doc["manifests"]
    assert (first["file"], first["valid"], first["jobs"], first["images"]) == ("good.yaml", True, 1, 2)
    assert (second["file"], second["valid"], second["jobs"], second["errors"]) == ("bad.yaml", False, None, 1)
    assert doc["diagnostics"] == [
        {"file": "bad.yaml", "line": 2, "col": 7, "path": "jobs", "message": "needs at least 1 item", "severity": "error"}
    ]
    assert good.exists()


def test_warning_exit_zero_strict_exit_one(tmp_path: Path) -> None:
    """A warning leaves exit 0; --strict makes it an error and exit 1."""
    make_image(tmp_path / "s.png")
    make_image(tmp_path / "e.png")
    write_manifest(
        tmp_path,
        jobs=[{"name": "k", "option": "FluxKontextFinetune", "finetune_type": "Style", "prompt": "p", "pairs": [{"start": "s.png", "end": "e.png"}]}],
    )
    relaxed = run_runner("validate", "manifest.yaml", cwd=tmp_path)
    assert relaxed.code == 0
    assert "warning: jobs[0].finetune_type" in relaxed.stdout
    strict = run_runner("validate", "--strict", "--format", "json", "manifest.yaml", cwd=tmp_path)
    assert strict.code == 1
    assert json.loads(strict.stdout)["diagnostics"][0]["severity"] == "error"


def test_all_errors_sorted(tmp_path: Path) -> None:
    """Schema and semantic errors come together, sorted by line."""
    (tmp_path / "m.yaml").write_text(
        "version: 1\njobs:\n  - name: a\n    images: nope.png\n  - name: B\n    images: x.png\n    extra: 1\n"
    )
    result = run_runner("validate", "m.yaml", cwd=tmp_path)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("m.yaml:") and ln[7].isdigit()]
    assert len(lines) == 4
    assert [int(ln.split(":")[1]) for ln in lines] == [4, 5, 6, 7]


def test_missing_manifest_and_usage(tmp_path: Path) -> None:
    """A missing manifest exits 1 with its name; no argument at all is a usage error, exit 1."""
    result = run_runner("validate", "nope.yaml", cwd=tmp_path)
    assert result.code == 1 and "nope.yaml: file not found" in result.stdout
    assert run_runner("validate", cwd=tmp_path).code == 1


def test_shared_lora_prefix_warns_and_fails_strict(tmp_path: Path) -> None:
    """Two jobs with one lora_prefix: a warning at the second's key path (and one inheriting
    it from defaults at the job); --strict makes them errors."""
    for n in ("a", "b", "c"):
        make_image(tmp_path / f"{n}.png")
    (tmp_path / "m.yaml").write_text(
        "version: 1\ndefaults:\n  lora_prefix: STYLE\njobs:\n"
        "  - name: a\n    images: a.png\n"
        "  - name: b\n    lora_prefix: STYLE\n    images: b.png\n"
        "  - name: c\n    lora_prefix: OTHER\n    images: c.png\n"
    )
    relaxed = run_runner("validate", "m.yaml", cwd=tmp_path)
    assert relaxed.code == 0, relaxed.stdout
    assert "m.yaml:8:18: warning: jobs[1].lora_prefix: lora_prefix 'STYLE' is also job 'a''s (line 5)" in relaxed.stdout
    assert "valid (3 jobs, 3 images, 1 warning)" in relaxed.stdout
    strict = run_runner("validate", "--strict", "m.yaml", cwd=tmp_path)
    assert strict.code == 1
    (tmp_path / "m.yaml").write_text(
        "version: 1\ndefaults:\n  lora_prefix: STYLE\njobs:\n"
        "  - name: a\n    lora_prefix: STYLE\n    images: a.png\n"
        "  - name: b\n    images: b.png\n"
    )
    inherited = run_runner("validate", "m.yaml", cwd=tmp_path)
    assert "m.yaml:8:5: warning: jobs[1]: lora_prefix 'STYLE' (from defaults) is also job 'a''s (line 5)" in inherited.stdout


def test_init_placeholder_prompt_fails_until_edited(tmp_path: Path) -> None:
    """The TODO: prompt init writes is an error naming its place; an edited prompt validates."""
    make_image(tmp_path / "s.png")
    make_image(tmp_path / "e.png")
    text = (
        "version: 1\njobs:\n  - name: k\n    option: FluxKontextFinetune\n    lora_prefix: K\n"
        '    prompt: "TODO: describe the edit"\n    pairs: [{start: s.png, end: e.png}]\n'
    )
    (tmp_path / "m.yaml").write_text(text)
    result = run_runner("validate", "m.yaml", cwd=tmp_path)
    assert result.code == 1
    assert "m.yaml:6:13: jobs[0].prompt: placeholder prompt from runner init" in result.stdout
    (tmp_path / "m.yaml").write_text(text.replace("TODO: describe the edit", "turn it red"))
    assert run_runner("validate", "m.yaml", cwd=tmp_path).code == 0
