"""Semantic checks and image checks: files, folders, globs, Kontext pairs, URLs, endpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.images import make_bomb_png, make_image, truncate

from runner.manifest import image_paths, images
from runner.manifest.read import load_manifest
from runner.manifest.values import endpoint_problem, parse_duration, url_problem


def _errors(path: Path) -> list[str]:
    _, diags = load_manifest(path, environ={})
    return [d.format() for d in diags if d.severity == "error"]


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\njobs:\n" + body)
    return path


# -- image files --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_real_images_pass(tmp_path: Path, fmt: str, suffix: str) -> None:
    """A whole PNG, JPEG or WebP file passes the check."""
    assert images.check_file(make_image(tmp_path / f"a.{suffix}", fmt=fmt)) is None


def test_non_image_file(tmp_path: Path) -> None:
    """Text named .jpg is not an image."""
    path = tmp_path / "a.jpg"
    path.write_text("hello")
    assert images.check_file(path) == "not a JPEG, PNG or WebP image"


def test_gif_refused(tmp_path: Path) -> None:
    """A GIF renamed .png is refused: only JPEG, PNG and WebP decoders run on user files."""
    assert images.check_file(make_image(tmp_path / "a.png", fmt="GIF")) == "not a JPEG, PNG or WebP image"


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_truncated_images(tmp_path: Path, fmt: str, suffix: str) -> None:
    """A file cut short is reported, for each supported format."""
    path = make_image(tmp_path / f"a.{suffix}", size=(96, 96), fmt=fmt)
    truncate(path, 0.6)
    assert images.check_file(path) == "truncated image"


def test_jpeg_with_trailer_passes(tmp_path: Path) -> None:
    """Bytes after a JPEG's end marker (camera trailers) do not make it 'truncated'."""
    path = make_image(tmp_path / "a.jpg", fmt="JPEG")
    path.write_bytes(path.read_bytes() + b"TRAILER" * 10)
    assert images.check_file(path) is None


def test_decompression_bomb(tmp_path: Path) -> None:
    """A tiny PNG claiming 40000x40000 pixels is refused by its header, without decoding."""
    problem = images.check_file(make_bomb_png(tmp_path / "bomb.png"))
    assert problem is not None and "decompression bomb" in problem


def test_empty_file(tmp_path: Path) -> None:
    """A zero-byte image is an error."""
    path = tmp_path / "a.png"
    path.touch()
    assert images.check_file(path) == "empty file"


def test_symlink_loop(tmp_path: Path) -> None:
    """A symlink loop is reported as such, not followed forever."""
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    assert images.check_file(tmp_path / "a.png") == "symlink loop"


def test_broken_symlink(tmp_path: Path) -> None:
    """A dangling symlink says so."""
    (tmp_path / "a.png").symlink_to(tmp_path / "gone.png")
    assert images.check_file(tmp_path / "a.png") == "broken symlink"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_not_opened(tmp_path: Path) -> None:
    """A FIFO named .png is refused at once instead of blocking on open."""
    os.mkfifo(tmp_path / "a.png")
    assert "not a regular file" in (images.check_file(tmp_path / "a.png") or "")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the user may not read is 'permission denied' (simulated: tests may run as root)."""
    path = make_image(tmp_path / "a.png")
    real_open = os.open

    def deny(p: object, flags: int, *args: object) -> int:
        if str(p) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(p, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(images.os, "open", deny)
    assert images.check_file(path) == "permission denied"


def test_folder_as_image(tmp_path: Path) -> None:
    """A folder where a file is expected is named as such."""
    (tmp_path / "d.png").mkdir()
    assert images.check_file(tmp_path / "d.png") == "is a folder, not an image"


def test_check_files_threaded_matches_sequential(tmp_path: Path) -> None:
    """The thread pool gives the same answers as one-by-one checks, once per file."""
    paths = [make_image(tmp_path / f"{i:03d}.png") for i in range(80)]
    (tmp_path / "bad.png").write_text("x")
    paths += [tmp_path / "bad.png", tmp_path / "missing.png", paths[0]]
    results = images.check_files(paths, workers=4)
    assert len(results) == 82
    assert results[tmp_path / "bad.png"] == "not a JPEG, PNG or WebP image"
    assert results[tmp_path / "missing.png"] == "file not found"
    assert sum(r is None for r in results.values()) == 80


# -- resolution ---------------------------------------------------------------------------


def test_folder_sorted_skips_hidden_and_other_types(tmp_path: Path) -> None:
    """A folder lists supported images only, hidden files skipped, in sorted order."""
    for name in ("b.png", "a.JPG", "c.webp"):
        make_image(tmp_path / "d" / name)
    (tmp_path / "d" / ".hidden.png").write_text("x")
    (tmp_path / "d" / "notes.txt").write_text("x")
    resolved = image_paths.resolve(tmp_path, "d")
    assert [p.name for p in resolved.paths] == ["a.JPG", "b.png", "c.webp"]


def test_glob_sorted_and_recursive(tmp_path: Path) -> None:
    """Globs are sorted and ``**`` reaches sub-folders."""
    for rel in ("x/2.png", "x/1.png", "x/sub/0.png"):
        make_image(tmp_path / rel)
    assert [p.name for p in image_paths.resolve(tmp_path, "x/*.png").paths] == ["1.png", "2.png"]
    assert len(image_paths.resolve(tmp_path, "x/**/*.png").paths) == 3


def test_empty_glob_and_folder(tmp_path: Path) -> None:
    """A glob or folder with no images is an error, not an empty job."""
    (tmp_path / "empty").mkdir()
    assert image_paths.resolve(tmp_path, "empty").error
    assert image_paths.resolve(tmp_path, "empty/*.png").error


def test_unsupported_extension(tmp_path: Path) -> None:
    """An explicitly listed .gif is refused by its extension."""
    (tmp_path / "a.gif").write_text("x")
    assert "unsupported file type" in (image_paths.resolve(tmp_path, "a.gif").error or "")


# -- semantic checks through load_manifest -------------------------------------------------


def test_missing_image_positioned(tmp_path: Path) -> None:
    """A missing listed file is reported at its list index with the path as written."""
    make_image(tmp_path / "a.png")
    path = _write(tmp_path, "  - name: a\n    images:\n      - a.png\n      - nope.png\n")
    assert _errors(path) == [f"{path}:6:9: jobs[0].images[1]: file not found: nope.png"]


def test_bad_image_in_folder_named_relative(tmp_path: Path) -> None:
    """A bad file found through a folder is named relative to the manifest."""
    make_image(tmp_path / "d" / "a.png")
    (tmp_path / "d" / "b.png").write_text("nope")
    path = _write(tmp_path, "  - name: a\n    images: d\n")
    assert _errors(path) == [f"{path}:4:13: jobs[0].images: not a JPEG, PNG or WebP image: d/b.png"]


def test_kontext_explicit_pair_missing_end(tmp_path: Path) -> None:
    """A pair whose end file is missing is reported at ``pairs[i].end``."""
    make_image(tmp_path / "pairs" / "car1.jpg", fmt="JPEG")
    path = _write(
        tmp_path,
        "  - name: k\n    option: FluxKontextFinetune\n    prompt: p\n    pairs:\n"
        "      - start: pairs/car1.jpg\n        end: pairs/car1_red.jpg\n",
    )
    assert _errors(path) == [f"{path}:8:14: jobs[0].pairs[0].end: file not found: pairs/car1_red.jpg"]


def test_kontext_dirs_odd_pairs(tmp_path: Path) -> None:
    """A start with no matching end (and an end with no start) are both errors."""
    make_image(tmp_path / "s" / "a.png")
    make_image(tmp_path / "s" / "b.png")
    make_image(tmp_path / "e" / "a.png")
    make_image(tmp_path / "e" / "z.png")
    path = _write(
        tmp_path,
        "  - name: k\n    option: FluxKontextFinetune\n    prompt: p\n"
        "    pairs: {start_dir: s, end_dir: e}\n",
    )
    errors = _errors(path)
    assert len(errors) == 2
    assert any("jobs[0].pairs.end_dir: no end image for start s/b.png" in e for e in errors)
    assert any("jobs[0].pairs.start_dir: no start image for end e/z.png" in e for e in errors)


def test_kontext_dirs_order_and_ambiguous_stems(tmp_path: Path) -> None:
    """Pairs from folders go start, end, start, end by stem; two files sharing a stem are an error."""
    for stem in ("b", "a"):
        make_image(tmp_path / "s" / f"{stem}.png")
        make_image(tmp_path / "e" / f"{stem}.jpg", fmt="JPEG")
    path = _write(
        tmp_path,
        "  - name: k\n    option: FluxKontextFinetune\n    prompt: p\n"
        "    pairs: {start_dir: s, end_dir: e}\n",
    )
    manifest, _ = load_manifest(path)
    assert manifest is not None
    assert [p.relative_to(tmp_path).as_posix() for p in manifest.jobs[0].images] == ["s/a.png", "e/a.jpg", "s/b.png", "e/b.jpg"]
    make_image(tmp_path / "s" / "a.webp", fmt="WEBP")
    assert any("share the stem 'a'" in e for e in _errors(path))


def test_kontext_option_from_defaults(tmp_path: Path) -> None:
    """With option Kontext inherited from defaults, images and a missing prompt are errors."""
    make_image(tmp_path / "a.png")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\ndefaults: {option: FluxKontextFinetune}\njobs:\n  - name: k\n    images: a.png\n")
    errors = _errors(path)
    assert any("jobs[0].images: not allowed for FluxKontextFinetune jobs (option from defaults)" in e for e in errors)
    assert any("missing required key 'pairs'" in e for e in errors)
    assert any("missing required key 'prompt'" in e for e in errors)


def test_pairs_without_kontext_inherited(tmp_path: Path) -> None:
    """pairs on a job whose (default) option is not Kontext are refused."""
    path = _write(tmp_path, "  - name: a\n    pairs: [{start: a.png, end: b.png}]\n")
    assert any("jobs[0].pairs: pairs are only for FluxKontextFinetune" in e for e in _errors(path))


def test_finetune_type_on_kontext_is_warning(tmp_path: Path) -> None:
    """finetune_type set on a Kontext job is a warning; the manifest is still valid."""
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    path = _write(
        tmp_path,
        "  - name: k\n    option: FluxKontextFinetune\n    finetune_type: Style\n    prompt: p\n"
        "    pairs: [{start: a.png, end: b.png}]\n",
    )
    manifest, diags = load_manifest(path)
    assert manifest is not None
    assert [(d.severity, d.path) for d in diags] == [("warning", "jobs[0].finetune_type")]


def test_no_images_at_all(tmp_path: Path) -> None:
    """A job with neither images, image_urls nor pairs is an error on the job."""
    path = _write(tmp_path, "  - name: a\n")
    assert _errors(path) == [f"{path}:3:5: jobs[0]: no training images: set images, image_urls or pairs"]


def test_duplicate_names(tmp_path: Path) -> None:
    """A repeated job name is reported at the second one, naming the first's line."""
    path = _write(tmp_path, "  - {name: a, image_urls: ['https://x.example/1']}\n  - {name: a, image_urls: ['https://x.example/2']}\n")
    assert _errors(path) == [f"{path}:4:12: jobs[1].name: duplicate job name 'a' (first used at line 3)"]


def test_check_images_false_skips_decoding(tmp_path: Path) -> None:
    """check_images=False still requires files to exist but does not decode them."""
    (tmp_path / "a.png").write_text("not an image")
    path = _write(tmp_path, "  - name: a\n    images: [a.png, b.png]\n")
    _, diags = load_manifest(path, check_images=False)
    assert [d.message for d in diags] == ["file not found: b.png"]


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [(10, 10.0), (1.5, 1.5), ("10s", 10.0), ("500ms", 0.5), ("5m", 300.0), ("2h", 7200.0), ("1h30m", 5400.0), ("soon", None), (True, None), (-1, None), ("10 s", 10.0), ("10x", None)],
)
def test_parse_duration(value: object, seconds: float | None) -> None:
    """Durations in seconds, ms, minutes, hours or combined; junk gives None."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "endpoint, ok",
    [
        ("sandbox", True),
        ("https://api.vimmerse.net", True),
        ("http://127.0.0.1:8000", True),
        ("http://127.9.9.9", True),
        ("http://localhost:9000/x", True),
        ("http://[::1]:8000", True),
        ("http://api.example.com", False),
        ("http://10.0.0.1", False),
        ("http://localhost.evil.com", False),
        ("ftp://localhost", False),
        ("http://[::1", False),
    ],
)
def test_endpoint_rules(endpoint: str, ok: bool) -> None:
    """https anywhere, http only to loopback, 'sandbox' by name."""
    assert (endpoint_problem(endpoint) is None) is ok


def test_url_problem() -> None:
    """URLs need an http(s) scheme and a host."""
    assert url_problem("https://example.com/a.jpg") is None
    assert url_problem("https:///a.jpg") == "URL has no host"
    assert url_problem("file:///etc/passwd") is not None


def test_invalid_option_does_not_cascade(tmp_path: Path) -> None:
    """A misspelt option is one enum error; pairs are not called 'non-Kontext' but still checked."""
    make_image(tmp_path / "a.png")
    path = _write(
        tmp_path,
        "  - name: k\n    option: FluxKontext\n    prompt: p\n    pairs: [{start: a.png, end: b.png}]\n",
    )
    errors = _errors(path)
    assert len(errors) == 2
    assert "jobs[0].option: 'FluxKontext' is not one of" in errors[0]
    assert errors[1].endswith("jobs[0].pairs[0].end: file not found: b.png")
