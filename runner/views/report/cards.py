"""The report's cards: what the page shows of each job, a pure function of lockfile and manifest.

A card shows what was trained, so its request values (``lora_prefix``, iterations, the
Kontext prompt) come from the lock entry's ``inputs``, the values that were sent; a job never
applied, or an entry written before ``inputs`` existed, shows the manifest's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.engine.plan import natural_key
from runner.models import Job, LockEntry


@dataclass
class Sample:
    """One result image as the page shows it: a data URI, or why there is none."""

    url: str
    data_uri: str | None = None
    width: int = 0
    height: int = 0
    source: str = ""  # "http", "sandbox state", or "" when unavailable
    problem: str = ""


@dataclass
class Card:
    """One job on the page: its state, the trigger word, what was trained, its samples."""

    manifest: str
    name: str
    status: str
    trigger_word: str | None = None
    samples: list[Sample] = field(default_factory=list)
    error: dict[str, Any] | None = None
    # What was trained, as sent (the entry's inputs; the manifest's for a job never applied).
    option: str | None = None
    finetune_type: str | None = None
    lora_prefix: str | None = None
    num_iterations: int | None = None
    prompt: str | None = None
    images: int | None = None
    submitted_at: str | None = None
    finished_at: str | None = None


@dataclass
class Section:
    """One manifest's cards, or the error that kept it from being read."""

    manifest: str
    cards: list[Card] = field(default_factory=list)
    error: str | None = None


def _request_values(entry: LockEntry | None, job: Job | None) -> dict[str, Any]:
    inputs = entry.inputs if entry is not None else {}
    if inputs:
        return {
            "lora_prefix": inputs.get("lora_prefix"),
            "num_iterations": inputs.get("num_iterations"),
            "prompt": inputs.get("prompt"),
        }
    if job is None:
        return {}
    return {
        "lora_prefix": None if job.is_kontext else job.lora_prefix,
        "num_iterations": job.num_iterations,
        "prompt": job.prompt if job.is_kontext else None,
    }


def cards_for(
    manifest: str,
    names: Iterable[str],
    entries: Mapping[str, LockEntry],
    jobs: Mapping[str, Job] | None = None,
) -> list[Card]:
    """One card per name, in natural order (``a2`` before ``a10``, as plans list them)."""
    jobs = jobs or {}
    cards = []
    for name in sorted(names, key=natural_key):
        entry = entries.get(name)
        values = _request_values(entry, jobs.get(name))
        if entry is None:
            job = jobs.get(name)
            cards.append(
                Card(
                    manifest,
                    name,
                    "absent",
                    option=job.option if job else None,
                    **values,
                )
            )
            continue
        cards.append(
            Card(
                manifest,
                name,
                entry.status,
                entry.trigger_word,
                [Sample(str(url)) for url in entry.results],
                entry.error,
                option=entry.option,
                finetune_type=entry.finetune_type,
                images=entry.images,
                submitted_at=entry.submitted_at,
                finished_at=entry.finished_at,
                **values,
            )
        )
    return cards
