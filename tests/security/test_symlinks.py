"""Symlinks that leave the manifest's folder are refused unless ``--allow-outside-links``
(issue 12, item 9; DESIGN section 3: nothing is read through a symlink that leaves it).

A pull request can commit symlinks: an "image" pointing at ``/etc/passwd`` or at a file
elsewhere on the CI machine would be uploaded to the API by the reviewed apply (its lexical
path stays inside the folder, so the old ``..`` check let it through). Each attack is a
commit in a temporary git repository, run through the real CLI: exit 1 with the error at
the manifest's file:line:col, naming the key path and where the link leads, and nothing
read from the target. With the flag, links to shared mounts work as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from statesupport import git, make_repo, pr_commit, run
from support.images import make_image

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix", reason="POSIX symlinks")

HINT = "--allow-outside-links"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "home-cache"


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A folder outside the repository holding real images (a dataset mount, or a victim)."""
    folder = tmp_path / "shared"
    make_image(folder / "s1.png", (16, 16), (1, 2, 3))
    make_image(folder / "s2.png", (16, 16), (4, 5, 6))
    return folder


def _manifest(jobs: str) -> str:
    return "version: 1\napi: {endpoint: sandbox}\njobs:\n" + jobs


def _pr(repo: Path, jobs: str, *paths: str) -> None:
    (repo / "runner.yaml").write_text(_manifest(jobs), encoding="utf-8")
    pr_commit(repo, "runner.yaml", *paths)


def test_image_symlink_to_etc_passwd(tmp_path: Path, cache: Path) -> None:
    """``data/hero/zz.png -> /etc/passwd`` inside a job's folder: validate, plan and apply
    refuse it at the job's ``images`` key; nothing is uploaded (no sandbox state made)."""
    repo = make_repo(tmp_path)
    os.symlink("/etc/passwd", repo / "data" / "hero" / "zz.png")
    pr_commit(repo, "data/hero/zz.png")
    for command in ("validate", "plan", "apply", "status"):
        result = run(command, "runner.yaml", cwd=repo, cache=cache)
        assert result.code == 1, (command, result.text)
        out = result.text
        assert (
            "runner.yaml:6:13: jobs[0].images: symlink leaves the manifest's folder: "
            "data/hero/zz.png -> /etc/passwd" in out
        ), (command, out)
        assert HINT in out
        assert "root:" not in out  # the target is never read
    assert not (repo / ".runner" / "sandbox").exists()
    assert not (repo / "runner.lock.yaml").exists()


def test_every_kind_of_image_reference(tmp_path: Path, cache: Path, shared: Path) -> None:
    """A listed file, a folder, a glob, a file under a symlinked folder, Kontext pair files
    and pair folders: each refused at its own key path, naming where it leads."""
    repo = make_repo(tmp_path)
    os.symlink(shared / "s1.png", repo / "data" / "link.png")
    os.symlink(shared, repo / "mount")
    os.symlink(os.path.relpath(shared / "s2.png", repo / "data"), repo / "data" / "rel.png")
    for stem in ("s1", "s2"):  # ends for the pair folder job, so the flag makes it valid
        make_image(repo / "data" / "ends" / f"{stem}.png", (16, 16), (7, 8, 9))
    jobs = (
        "  - name: listed\n"                                         # line 4
        "    images: [data/hero/a.png, data/link.png]\n"             # 5
        "  - name: folder\n"                                         # 6
        "    images: mount\n"                                        # 7
        "  - name: glob\n"                                           # 8
        "    images: 'mount/*.png'\n"                                # 9
        "  - name: under\n"                                          # 10
        "    images: [mount/s2.png]\n"                               # 11
        "  - name: pairs\n"                                          # 12
        "    option: FluxKontextFinetune\n"                          # 13
        "    prompt: p\n"                                            # 14
        "    pairs: [{start: data/hero/a.png, end: data/rel.png}]\n"  # 15
        "  - name: pairdirs\n"                                       # 16
        "    option: FluxKontextFinetune\n"                          # 17
        "    prompt: p\n"                                            # 18
        "    pairs: {start_dir: mount, end_dir: data/ends}\n"        # 19
    )
    _pr(repo, jobs, "data/link.png", "mount", "data/rel.png", "data/ends")
    real = os.path.realpath(shared)
    expected = [
        f"runner.yaml:5:31: jobs[0].images[1]: symlink leaves the manifest's folder: data/link.png -> {real}/s1.png",
        f"runner.yaml:7:13: jobs[1].images: symlink leaves the manifest's folder: mount -> {real}",
        f"runner.yaml:9:13: jobs[2].images: symlink leaves the manifest's folder: mount/*.png -> {real}",
        f"runner.yaml:11:14: jobs[3].images[0]: symlink leaves the manifest's folder: mount/s2.png -> {real}/s2.png",
        f"runner.yaml:15:43: jobs[4].pairs[0].end: symlink leaves the manifest's folder: data/rel.png -> {real}/s2.png",
        f"runner.yaml:19:24: jobs[5].pairs.start_dir: symlink leaves the manifest's folder: mount -> {real}",
    ]
    for command in ("validate", "plan"):
        result = run(command, "runner.yaml", cwd=repo, cache=cache)
        assert result.code == 1, result.text
        for line in expected:
            assert line in result.text, (command, line, result.text)
    # JSON diagnostics carry the same place and key path.
    doc = json.loads(run("validate", "runner.yaml", "--format", "json", cwd=repo, cache=cache).stdout)
    paths = {d["path"] for d in doc["diagnostics"] if "symlink leaves" in d["message"]}
    assert paths == {"jobs[0].images[1]", "jobs[1].images", "jobs[2].images", "jobs[3].images[0]",
                     "jobs[4].pairs[0].end", "jobs[5].pairs.start_dir"}
    # With the flag, the same manifest is valid and plans (the old behaviour, for mounts).
    for command in ("validate", "plan"):
        allowed = run(command, "runner.yaml", HINT, cwd=repo, cache=cache)
        assert allowed.code == 0, allowed.text


def test_links_inside_the_folder_are_fine(tmp_path: Path, cache: Path) -> None:
    """A symlink to another file or folder of the repository, even through a chain of links,
    is not leaving: accepted without the flag."""
    repo = make_repo(tmp_path)
    os.symlink("hero", repo / "data" / "alias")
    os.symlink("alias/a.png", repo / "data" / "chain.png")
    _pr(repo, "  - name: a\n    images: [data/chain.png, data/alias/b.png]\n  - name: b\n    images: data/alias\n",
        "data/alias", "data/chain.png")
    result = run("validate", "runner.yaml", cwd=repo, cache=cache)
    assert result.code == 0, result.text


def test_chain_that_ends_outside(tmp_path: Path, cache: Path, shared: Path) -> None:
    """An inside link to an inside link to an outside file leaves, and is refused; a
    dangling link to outside is refused as leaving too (whether the target exists or not)."""
    repo = make_repo(tmp_path)
    os.symlink(shared / "s1.png", repo / "data" / "hop2.png")
    os.symlink("hop2.png", repo / "data" / "hop1.png")
    os.symlink(tmp_path / "nowhere.png", repo / "data" / "gone.png")
    _pr(repo, "  - name: a\n    images: [data/hop1.png, data/gone.png]\n",
        "data/hop1.png", "data/hop2.png", "data/gone.png")
    result = run("plan", "runner.yaml", cwd=repo, cache=cache)
    assert result.code == 1
    real = os.path.realpath(shared)
    assert f"jobs[0].images[0]: symlink leaves the manifest's folder: data/hop1.png -> {real}/s1.png" in result.stderr
    assert "jobs[0].images[1]: symlink leaves the manifest's folder: data/gone.png -> " in result.stderr


def test_apply_with_the_flag_uploads_through_the_link(tmp_path: Path, cache: Path, shared: Path) -> None:
    """``--allow-outside-links`` is the way to use a dataset mount: apply trains from it, and a
    later plan without the flag refuses it again (the flag is per command, not remembered)."""
    repo = make_repo(tmp_path)
    os.symlink(shared, repo / "mount")
    _pr(repo, "  - name: m\n    lora_prefix: MNT\n    images: mount\n", "mount")
    applied = run("apply", "runner.yaml", HINT, cwd=repo, cache=cache)
    assert applied.code == 0, applied.text
    assert run("plan", "runner.yaml", "--detailed-exitcode", HINT, cwd=repo, cache=cache).code == 0
    assert run("status", "runner.yaml", HINT, cwd=repo, cache=cache).code == 0
    assert run("plan", "runner.yaml", cwd=repo, cache=cache).code == 1
    git(repo, "status", "--porcelain")
