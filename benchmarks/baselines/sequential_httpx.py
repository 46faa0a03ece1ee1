"""What a user would write instead of runner: submit a job, poll it to the end, next job.

    python3 sequential_httpx.py URL KEY DATA JOBS POLL

DATA holds jNNNNN/000.png for job NNNNN. Prints each job's trigger word.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx


def main() -> int:
    url, key, data, jobs, poll = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    headers = {"X-Api-Key": key}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for i in range(jobs):
            with open(data / f"j{i:05d}" / "000.png", "rb") as fh:
                answer = client.post("/finetune", files=[("image_files", ("000.png", fh, "image/png"))],
                                     data={"lora_prefix": f"Q{i}"})
            answer.raise_for_status()
            word = answer.json()["data"]["trigger_word"]
            while True:
                status = client.get(f"/finetune/{word}").json()["data"]["status"]
                if status == "success":
                    break
                if status == "fail":
                    raise SystemExit(f"job {i} failed")
                time.sleep(poll)
            print(word)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
