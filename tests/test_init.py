"""``runner init``: a valid manifest scaffolded from folders of images."""

from __future__ import annotations

from pathlib import Path

import yaml
from support.cli import run_runner
from support.images import make_image

from runner.commands.init import job_name, lora_prefix


def _tree(root: Path) -> Path:
    data = root / "data"
    make_image(data / "Red Sneaker" / "a.jpg", fmt="JPEG")
    make_image(data / "Red Sneaker" / "b.png")
    make_image(data / "red_sneaker" / "c.png")  # same name and prefix once normalized
    make_image(data / "cars" / "start" / "car1.jpg", fmt="JPEG")
    make_image(data / "cars" / "end" / "car1.png")
    (data / "notes").mkdir()
    (data / "notes" / "readme.txt").write_text("not an image")
    return data


def test_one_job_per_subfolder_with_kontext_pairs_and_unique_names(tmp_path: Path) -> None:
    """A collection folder gives one job per image sub-folder; start/+end/ becomes Kontext."""
    _tree(tmp_path)
    result = run_runner("init", "data", "-o", "runner.yaml", cwd=tmp_path)
    assert result.code == 0, result.stderr
    doc = yaml.safe_load((tmp_path / "runner.yaml").read_text())
    jobs = {j["name"]: j for j in doc["jobs"]}
    assert sorted(jobs) == ["cars", "red-sneaker", "red_sneaker"]
    assert jobs["red-sneaker"] == {"name": "red-sneaker", "lora_prefix": "RED_SNEAKER", "images": "data/Red Sneaker"}
    assert jobs["red_sneaker"]["lora_prefix"] == "RED_SNEAKER_2"
    cars = jobs["cars"]
    assert cars["option"] == "FluxKontextFinetune" and cars["prompt"]
    assert cars["pairs"] == {"start_dir": "data/cars/start", "end_dir": "data/cars/end"}
    assert "edit the prompt" in result.stderr
    # The placeholder prompt fails validate, naming its place, until it is edited.
    assert cars["prompt"].startswith("TODO:")
    check = run_runner("validate", "runner.yaml", cwd=tmp_path)
    assert check.code == 1
    line = next(n for n, text in enumerate((tmp_path / "runner.yaml").read_text().splitlines(), 1) if "prompt:" in text)
    assert f"runner.yaml:{line}:13: jobs[1].prompt: placeholder prompt from runner init" in check.stdout
    edited = (tmp_path / "runner.yaml").read_text().replace(cars["prompt"], "turn the car red")
    (tmp_path / "runner.yaml").write_text(edited)
    check = run_runner("validate", "runner.yaml", cwd=tmp_path)
    assert check.code == 0, check.stdout + check.stderr


def test_init_says_what_each_job_skips(tmp_path: Path) -> None:
    """Sub-folders and files that are not images are named per job (hidden files are not)."""
    make_image(tmp_path / "data" / "style" / "a.png")
    make_image(tmp_path / "data" / "style" / "more" / "b.png")
    (tmp_path / "data" / "style" / "notes.txt").write_text("x")
    (tmp_path / "data" / "style" / ".DS_Store").write_text("x")
    make_image(tmp_path / "data" / "mug" / "m.png")
    make_image(tmp_path / "data" / "edit" / "start" / "one.png")
    make_image(tmp_path / "data" / "edit" / "end" / "one.png")
    (tmp_path / "data" / "edit" / "end" / "list.csv").write_text("x")
    result = run_runner("init", "data", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "note: style: skipped data/style/more/ (sub-folders are not read), data/style/notes.txt (not an image)\n" in result.stderr
    assert "note: edit: skipped data/edit/end/list.csv (not an image)\n" in result.stderr
    assert "mug: skipped" not in result.stderr and ".DS_Store" not in result.stderr


def test_a_folder_of_images_is_one_job(tmp_path: Path) -> None:
    """Naming image folders directly gives one job each, in the order given, repeats dropped."""
    _tree(tmp_path)
    result = run_runner("init", "data/cars", "data/Red Sneaker", "data/cars", "-o", "m.yaml", cwd=tmp_path)
    assert result.code == 0, result.stderr
    names = [j["name"] for j in yaml.safe_load((tmp_path / "m.yaml").read_text())["jobs"]]
    assert names == ["cars", "red-sneaker"]


def test_never_overwrites_without_force(tmp_path: Path) -> None:
    """An existing manifest is kept (exit 1) unless --force is given."""
    _tree(tmp_path)
    target = tmp_path / "runner.yaml"
    target.write_text("reviewed: true\n")
    refused = run_runner("init", "data", cwd=tmp_path)
    assert refused.code == 1 and "--force" in refused.stderr
    assert target.read_text() == "reviewed: true\n"
    forced = run_runner("init", "data", "--force", cwd=tmp_path)
    assert forced.code == 0, forced.stderr
    assert yaml.safe_load(target.read_text())["version"] == 1


def test_folder_without_images_or_outside_the_manifest_folder_is_refused(tmp_path: Path) -> None:
    """No images anywhere, or images outside the manifest's folder, exit 1 and write nothing."""
    _tree(tmp_path)
    empty = run_runner("init", "data/notes", cwd=tmp_path)
    assert empty.code == 1 and "no images" in empty.stderr
    (tmp_path / "sub").mkdir()
    outside = run_runner("init", "data/cars", "-o", "sub/m.yaml", cwd=tmp_path)
    assert outside.code == 1 and "outside" in outside.stderr
    assert not (tmp_path / "runner.yaml").exists() and not (tmp_path / "sub" / "m.yaml").exists()


def test_unmatched_kontext_pairs_fail_validation_and_write_nothing(tmp_path: Path) -> None:
    """A start/ image without its end/ twin is reported against the output file, which is not written."""
    make_image(tmp_path / "edit" / "start" / "one.png")
    make_image(tmp_path / "edit" / "start" / "two.png")
    make_image(tmp_path / "edit" / "end" / "one.png")
    result = run_runner("init", "edit", "-o", "m.yaml", cwd=tmp_path)
    assert result.code == 1
    assert "m.yaml (not written)" in result.stderr and "two" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit"]


def test_names_and_prefixes_are_schema_valid() -> None:
    """Derived names and prefixes match the schema's patterns and length limits."""
    assert job_name("Été 2024 / Summer!") == "t-2024-summer"
    assert job_name("___") == "job" and lora_prefix("___") == "LORA"
    assert lora_prefix("a" * 50) == "A" * 32
    assert lora_prefix("my-cool.set v2") == "MY_COOL_SET_V2"
