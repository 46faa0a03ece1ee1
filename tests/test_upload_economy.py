"""Issue 15 end to end: ``api.max_upload_mb`` refuses before sending, ``upload.max_side``
sends downscaled photos, a 413 fails only its job, against ``runner sandbox serve`` run as
a real process on loopback, with real JPEGs and ``runner`` as a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.apply import SECRET, ledger, runner
from support.images import make_image
from support.manifests import lock_doc
from support.paths import REPO_ROOT

N_PHOTOS = 40
PHOTO_SIZE = (1480, 1110)  # 40 of them as noisy JPEGs: about 30 MB, over a 20 MB limit


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 distinct noisy JPEGs of 1480x1110 (about 0.75 MB each), made once per session:
    one noise field, shifted differently for each (a new field each costs 10x more)."""
    from PIL import Image, ImageChops

    folder = tmp_path_factory.mktemp("photos") / "photos"
    folder.mkdir()
    noise = Image.effect_noise(PHOTO_SIZE, 24)
    field = Image.merge("RGB", (noise, Image.linear_gradient("L").resize(PHOTO_SIZE), noise))
    for i in range(N_PHOTOS):
        ImageChops.offset(field, i * 37, i * 11).save(folder / f"p{i:02d}.jpg", quality=95)
    assert sum(p.stat().st_size for p in folder.iterdir()) > 25 * 1024 * 1024
    return folder


@contextlib.contextmanager
def served(state: Path, *extra: str) -> Iterator[str]:
    """``runner sandbox serve`` in its own process; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "sandbox", "serve", "--port", "0", "--state-dir", str(state),
         "--train-seconds", "0.2", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT,
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("sandbox listening on "), line
        yield line.rsplit(" ", 1)[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def manifest(folder: Path, url: str, jobs: list[dict[str, object]], **api: object) -> Path:
    doc = {
        "version": 1,
        "api": {"endpoint": url, "poll_interval": "100ms", "requests_per_second": 50, "burst": 10, **api},
        "jobs": jobs,
    }
    path = folder / "m.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def env(tmp_path: Path) -> dict[str, str]:
    """The per-user caches, outside the project (a cache inside it would be turned off)."""
    return {"RUNNER_CACHE_DIR": str(tmp_path.parent / f"{tmp_path.name}-cache")}


def test_over_the_limit_is_refused_before_anything_is_sent_and_max_side_makes_it_fit(
    tmp_path: Path, photos: Path
) -> None:
    """40 photos (36 MB) under api.max_upload_mb 20: validate, plan and apply exit 1 naming
    the job, its size, the limit and the fix at the job's place, and the sandbox sees no
    POST. With upload.max_side 1024 the job passes and applies against a sandbox started
    with --max-upload-mb 20, which receives images no larger than 1024 px."""
    shutil.copytree(photos, tmp_path / "photos")
    with served(tmp_path / "state", "--max-upload-mb", "20") as url:
        path = manifest(tmp_path, url, [{"name": "phone", "lora_prefix": "PH", "images": "photos"}],
                        max_upload_mb=20)
        for command in ("validate", "plan", "apply"):
            result = runner(command, "m.yaml", cwd=tmp_path, env=env(tmp_path))
            assert result.code == 1, (command, result.stdout, result.stderr)
            text = result.stdout + result.stderr
            assert "m.yaml:9:3: jobs[0]: job 'phone' would upload 3" in text, text
            assert "more than api.max_upload_mb (20 MB) allows; set upload.max_side (e.g. 1536" in text
            assert "Traceback" not in text and SECRET not in text
        assert ledger(url)["posts"] == 0
        assert not (tmp_path / "m.lock.yaml").exists()

        doc = yaml.safe_load(path.read_text())
        doc["jobs"][0]["upload"] = {"max_side": 1024}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        assert runner("validate", "m.yaml", cwd=tmp_path, env=env(tmp_path)).code == 0
        applied = runner("apply", "m.yaml", cwd=tmp_path, env=env(tmp_path))
        assert applied.code == 0, applied.stdout + applied.stderr
        counts = ledger(url)
        assert (counts["trainings"], counts["credits_charged"]) == (1, 1)
        assert 0 < counts["largest_image_side"] <= 1024
        assert counts["stored_bytes"] < 20 * 1024 * 1024
        stored = sorted((tmp_path / "state" / "uploads").glob("*/*.jpg"))
        assert len(stored) == N_PHOTOS
        from PIL import Image

        for file in stored[:5]:
            with Image.open(file) as im:
                assert max(im.size) == 1024 and im.format == "JPEG"
        entry = lock_doc(tmp_path / "m.lock.yaml")["jobs"]["phone"]
        assert entry["status"] == "succeeded" and entry["inputs"]["max_side"] == 1024


def test_changing_max_side_plans_a_replace_and_an_unchanged_one_a_noop(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an apply with max_side 1024 the plan is a no-op; 768 plans a replace whose
    reason is max_side; a max_side larger than every photo sends them as they are, so it
    is the fingerprint of a job without the key (old lock entries stay noop)."""
    from runner import cache as usercache
    from runner.engine.pipeline import prepare
    from runner.views.plan import plan_json

    shutil.copytree(photos, tmp_path / "photos", ignore=shutil.ignore_patterns("p1*", "p2*", "p3*"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNNER_CACHE_DIR", env(tmp_path)["RUNNER_CACHE_DIR"])
    usercache.reset()
    with served(tmp_path / "state") as url:
        job: dict[str, object] = {"name": "phone", "lora_prefix": "PH", "images": "photos"}
        path = manifest(tmp_path, url, [job])
        assert runner("apply", "m.yaml", cwd=tmp_path, env=env(tmp_path)).code == 0
        plain = lock_doc(tmp_path / "m.lock.yaml")["jobs"]["phone"]["fingerprint"]

        def plan(side: int | None) -> dict[str, object]:
            """The plan, in this process (as `runner plan --format json` makes it)."""
            doc = yaml.safe_load(path.read_text())
            doc["jobs"][0]["upload"] = {"max_side": side}
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            change: dict[str, object] = json.loads(plan_json(prepare("m.yaml", None, []).plan))["jobs"][0]
            return change

        assert plan(4096)["action"] == "noop"  # no photo is larger: sent as before
        assert plan(None)["action"] == "noop"
        replaced = plan(1024)
        assert replaced["action"] == "replace" and "max_side" in replaced["reasons"]  # type: ignore[operator]
        assert replaced["diff"]["max_side"] == {"old": None, "new": 1024}  # type: ignore[index]
        assert runner("apply", "m.yaml", cwd=tmp_path, env=env(tmp_path)).code == 0
        assert plan(1024)["action"] == "noop"
        moved = plan(768)
        assert moved["action"] == "replace"
        assert moved["diff"]["max_side"] == {"old": 1024, "new": 768}  # type: ignore[index]
        assert plan(4096)["fingerprint"] == plain


def test_a_413_fails_only_that_job_with_the_hint(tmp_path: Path, photos: Path) -> None:
    """Without api.max_upload_mb, a job larger than the sandbox's --max-upload-mb 2 gets a
    413 and fails with the upload.max_side hint; the small job beside it succeeds (exit 3)."""
    (tmp_path / "photos").mkdir()
    for name in ("p00.jpg", "p01.jpg", "p02.jpg"):
        shutil.copy(photos / name, tmp_path / "photos" / name)
    make_image(tmp_path / "small" / "a.png", (64, 64))
    with served(tmp_path / "state", "--max-upload-mb", "2") as url:
        manifest(tmp_path, url, [
            {"name": "big", "lora_prefix": "BIG", "images": "photos"},
            {"name": "small", "lora_prefix": "SMALL", "images": "small"},
        ])  # fmt: skip
        result = runner("apply", "m.yaml", cwd=tmp_path, env=env(tmp_path))
        assert result.code == 3, result.stdout + result.stderr
        jobs = lock_doc(tmp_path / "m.lock.yaml")["jobs"]
        assert jobs["small"]["status"] == "succeeded"
        assert jobs["big"]["status"] == "failed" and jobs["big"]["error"]["status"] == 413
        message = jobs["big"]["error"]["message"]
        assert "the request was 2." in message and "set upload.max_side (e.g. 1536)" in message
        assert "api.max_upload_mb" in message
        assert ledger(url)["trainings"] == 1


def test_init_sets_max_side_when_it_finds_large_photos(tmp_path: Path) -> None:
    """runner init writes upload.max_side 1536 for a folder holding a photo larger than
    that (and says so), and nothing for folders of small images; both validate."""
    make_image(tmp_path / "big" / "a.jpg", (1600, 1200), fmt="JPEG")
    make_image(tmp_path / "big" / "b.jpg", (64, 64), fmt="JPEG")
    make_image(tmp_path / "small" / "a.png", (640, 480))
    result = runner("init", "big", "-o", "big.yaml", cwd=tmp_path, env=env(tmp_path))
    assert result.code == 0, result.stderr
    assert yaml.safe_load((tmp_path / "big.yaml").read_text())["defaults"]["upload"] == {"max_side": 1536}
    assert "larger than 1536 px" in result.stderr
    result = runner("init", "small", "-o", "small.yaml", cwd=tmp_path, env=env(tmp_path))
    assert result.code == 0, result.stderr
    assert "upload" not in yaml.safe_load((tmp_path / "small.yaml").read_text())["defaults"]
    for name in ("big.yaml", "small.yaml"):
        assert runner("validate", name, cwd=tmp_path, env=env(tmp_path)).code == 0
