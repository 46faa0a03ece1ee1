"""Downscaling (runner.manifest.resize) and what it does to fingerprints, on real images and files."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from runner import cache as usercache
from runner.manifest.resize import (
    ResizeCache,
    Setting,
    StaleResize,
    downscale,
    open_verified,
    sent_id,
)
from runner.models import ImageInfo, Job
from runner.state.fingerprint import DigestCache, fingerprint_jobs


def photo(path: Path, size: tuple[int, int], fmt: str = "JPEG", *, orientation: int | None = None,
          icc: bool = False) -> Path:
    """A real image with a gradient (so it is not flat), camera EXIF (GPS, serial) and
    optionally an orientation tag and an sRGB ICC profile."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    exif = Image.Exif()
    exif[0x0110] = "TestCam"  # Model
    exif[0xA431] = "SERIAL-123"  # BodySerialNumber
    if orientation:
        exif[0x0112] = orientation
    options: dict[str, object] = {"exif": exif.tobytes()}
    if icc:
        options["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **options)
    return path


def test_orientation_applied_format_kept_icc_kept_and_exif_dropped(tmp_path: Path) -> None:
    """A 1200x800 JPEG tagged 'rotate 90' becomes an upright 341x512 JPEG at max_side 512,
    with its ICC profile and without its EXIF (model, serial, orientation)."""
    source = photo(tmp_path / "a.jpg", (1200, 800), orientation=6, icc=True)
    data, width, height = downscale(source, Setting(512))
    with Image.open(io.BytesIO(data)) as out:
        assert (out.format, out.size, (width, height)) == ("JPEG", (341, 512), (341, 512))
        assert out.info.get("icc_profile") == Image.open(source).info["icc_profile"]
        assert "exif" not in out.info and not out.getexif()


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", "png"), ("WEBP", "webp")])
def test_png_and_webp_stay_what_they_are(tmp_path: Path, fmt: str, suffix: str) -> None:
    """PNG stays PNG and WebP stays WebP, at the exact size, aspect kept."""
    source = photo(tmp_path / f"a.{suffix}", (900, 300), fmt)
    data, width, height = downscale(source, Setting(300))
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == fmt and out.size == (300, 100) == (width, height)


def test_a_damaged_image_is_an_oserror(tmp_path: Path) -> None:
    """A truncated JPEG cannot be downscaled: an OSError (the job fails, no traceback)."""
    source = photo(tmp_path / "a.jpg", (1200, 800))
    source.write_bytes(source.read_bytes()[:400])
    with pytest.raises(OSError):
        downscale(source, Setting(512))


def test_the_cache_is_made_once_checked_before_sending_and_never_followed(tmp_path: Path) -> None:
    """A second get reuses the file; a changed file (same size) fails the check before it is
    sent; a symlink in its place is not used; a changed sidecar is a miss."""
    source = photo(tmp_path / "a.jpg", (1200, 800))
    cache = ResizeCache(tmp_path / "cache")
    info = ImageInfo(1200, 800, "JPEG")
    first = cache.get(source, "d" * 64, info, Setting(512))
    again = cache.get(source, "d" * 64, info, Setting(512))
    assert (cache.made, cache.reused, again) == (1, 1, first)
    with open_verified(first) as fh:
        assert fh.read() == first.path.read_bytes()
    data = bytearray(first.path.read_bytes())
    data[-10] ^= 0xFF
    first.path.write_bytes(bytes(data))
    with pytest.raises(StaleResize):
        open_verified(first)
    assert cache.refresh(source, "d" * 64, info, Setting(512)).sha256 == first.sha256
    other = tmp_path / "other.jpg"
    other.write_bytes(first.path.read_bytes())
    first.path.unlink()
    first.path.symlink_to(other)
    assert cache.lookup(first.path.stem, "JPEG") is None
    with pytest.raises(StaleResize):
        open_verified(first)


def test_sidecars_are_sealed_in_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the per-user cache the sidecar is sealed: one written by anything else (a file
    copied in, or edited to claim another size) is a miss, never an answer."""
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "user-cache"))
    usercache.reset()
    project = tmp_path / "project"
    source = photo(project / "a.jpg", (1200, 800))
    cache = ResizeCache.for_manifest(project)
    made = cache.get(source, "e" * 64, ImageInfo(1200, 800, "JPEG"), Setting(512))
    assert str(made.path).startswith(str(tmp_path / "user-cache"))
    assert cache.lookup(made.path.stem, "JPEG") == made
    sidecar = made.path.with_suffix(".json")
    sidecar.write_text(sidecar.read_text().replace(str(made.size), str(made.size + 1)))
    assert cache.lookup(made.path.stem, "JPEG") is None


def test_caches_off_still_work_in_a_private_folder_removed_at_close(tmp_path: Path) -> None:
    """With no cache folder the copies go to a private temporary folder, gone at close."""
    cache = ResizeCache(None)
    made = cache.get(photo(tmp_path / "a.jpg", (1200, 800)), "f" * 64, ImageInfo(1200, 800, "JPEG"), Setting(512))
    assert made.path.exists() and os.stat(cache.folder).st_mode & 0o077 == 0
    cache.close()
    assert not cache.folder.exists()


def test_sent_id_names_the_setting_only_for_what_it_changes() -> None:
    """An image that fits is its digest; a downscaled one carries the setting, the quality
    only for lossy formats."""
    assert sent_id("abc", ImageInfo(1000, 800, "JPEG"), Setting(1024)) == "abc"
    assert sent_id("abc", ImageInfo(2000, 800, "JPEG"), Setting(1024, 90)) == "abc@1024q90"
    assert sent_id("abc", ImageInfo(2000, 800, "PNG"), Setting(1024, 90)) == "abc@1024"
    assert sent_id("abc", ImageInfo(2000, 800, "JPEG"), None) == "abc"


def test_fingerprints_keep_old_values_unless_an_image_is_downscaled(tmp_path: Path) -> None:
    """max_side larger than every image leaves the fingerprint as without it; smaller
    changes it and records max_side (and jpeg_quality) in the inputs; the quality matters
    only when a downscaled image is lossy; the second run reads headers from the cache."""
    big = photo(tmp_path / "big.jpg", (1600, 1200))
    small = photo(tmp_path / "small.png", (400, 300), "PNG")
    cache = DigestCache(None)

    def fp(images: tuple[Path, ...], **upload: int | None) -> tuple[str, dict[str, object]]:
        out = fingerprint_jobs([Job(name="a", images=images, **upload)], cache)[0]  # type: ignore[arg-type]
        return out.fingerprint, out.inputs

    plain, inputs = fp((big, small))
    assert fp((big, small), max_side=2048)[0] == plain and "max_side" not in inputs
    smaller, changed = fp((big, small), max_side=1024)
    assert smaller != plain and (changed["max_side"], changed["jpeg_quality"]) == (1024, 95)
    assert changed["images"] == inputs["images"]  # the originals did not change
    assert fp((big, small), max_side=1024, jpeg_quality=90)[0] != smaller
    png_only = fp((small,), max_side=256)
    assert png_only[0] == fp((small,), max_side=256, jpeg_quality=50)[0]
    assert "jpeg_quality" not in png_only[1]
    opened: list[str] = []

    def audit(event: str, args: tuple[object, ...]) -> None:
        if event == "open" and args and str(args[0]).startswith(str(tmp_path)) and watching:
            opened.append(str(args[0]))

    watching = True
    sys.addaudithook(audit)
    try:
        assert fp((big, small), max_side=1024)[0] == smaller
    finally:
        watching = False
    assert opened == []  # digests and headers both from the stat cache: no image read
