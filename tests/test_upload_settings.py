"""Bad values of the upload settings (``upload.max_side``, ``upload.jpeg_quality``,
``api.max_upload_mb``): exit 1 at file:line:col with the key path, nothing written."""

from __future__ import annotations

import re
from pathlib import Path

from support.cli import run_runner
from support.manifests import write_manifest


def test_bad_upload_settings_are_errors_at_their_keys(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path,
        jobs=[{"name": "a", "lora_prefix": "AAA", "upload": {"max_side": 100, "jpeg_quality": 0}}],
        api={"endpoint": "sandbox", "max_upload_mb": 0},
        defaults={"upload": {"max_side": "big"}},
    )
    for command in ("validate", "plan"):
        result = run_runner(command, str(manifest))
        assert result.code == 1, result.text
        for key in ("jobs[0].upload.max_side", "jobs[0].upload.jpeg_quality", "api.max_upload_mb",
                    "defaults.upload.max_side"):
            pattern = rf"manifest\.yaml:\d+:\d+: {re.escape(key)}: "
            assert re.search(pattern, result.text), (key, result.text)
        assert "Traceback" not in result.text
    assert not (tmp_path / "manifest.lock.yaml").exists()
