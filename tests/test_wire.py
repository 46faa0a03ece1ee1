"""The wire format: reading rules of DESIGN section 1 as tables of literal answers, and the
form built from a job. Traced answers of the sandbox's dialects are replayed through the
same functions in tests/test_wire_replay.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.api import wire
from runner.models import Job


def _body(value: object) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


TRIGGER_CASES = [
    ({"data": {"id": "a1", "trigger_word": "SNKR_k2x9"}}, "SNKR_k2x9", "data.trigger_word"),
    ({"data": {"id": "a1", "args": {"trigger_word": "SNKR_ab"}}}, "SNKR_ab", "data.args.trigger_word"),
    ({"trigger_word": "SNKR_top", "data": {"id": "a1"}}, "SNKR_top", "trigger_word"),
    ("SNKR_bare1", "SNKR_bare1", "body"),
    ({"data": "SNKR_instr"}, "SNKR_instr", "data"),
    # The documented order: data.trigger_word wins over the others.
    ({"data": {"trigger_word": "SNKR_1", "args": {"trigger_word": "SNKR_2"}}}, "SNKR_1", "data.trigger_word"),
    # Nowhere known, but exactly one string starting with the prefix and "_".
    ({"data": {"id": "a1", "results": [{"name": "SNKR_found"}]}}, "SNKR_found",
     "the one string starting with the lora_prefix"),
    (b"SNKR_plain", "SNKR_plain", "the one string starting with the lora_prefix"),
]


@pytest.mark.parametrize(("answer", "word", "place"), TRIGGER_CASES)
def test_trigger_word_search_order(answer: object, word: str, place: str) -> None:
    """Each documented place yields the trigger word, and says where it was found."""
    got = wire.read_submit(_body(answer), "SNKR")
    assert (got.trigger_word, got.found_at) == (word, place)


NO_TRIGGER = [
    # The published example: an asset with no trigger word anywhere.
    {"data": {"id": "ASSET_ID", "args": {}, "results": ["result_url1"], "status": "success",
              "app_name": "FUNCTION_NAME"}},
    # Two different strings with the prefix: which one is ours cannot be known.
    {"data": {"id": "a", "x": "SNKR_one", "y": "SNKR_two"}},
    # The prefix alone, or the prefix of another job, is not a trigger word.
    {"data": {"id": "a", "args": {"lora_prefix": "SNKR"}, "other": "SNKRX_1"}},
    {"data": {"trigger_word": ""}},
    # Upload names echoed back are not trigger words, even with the prefix.
    {"data": {"id": "a", "args": {"image_files": ["SNKR_001.jpg"]}}},
    {"data": {"id": "a", "note": "SNKR_ is a prefix"}},
    {"data": {"trigger_word": 12}},
    {"data": {"trigger_word": "has/slash"}},
    b"<html>Bad gateway</html>",
    b"",
]


@pytest.mark.parametrize("answer", NO_TRIGGER)
def test_no_trigger_word_is_none_and_the_answer_is_kept(answer: object) -> None:
    """No readable trigger word: None, never a guess; the raw answer is kept for the lockfile."""
    body = _body(answer)
    got = wire.read_submit(body, "SNKR")
    assert got.trigger_word is None
    assert got.raw == body.decode("utf-8", "replace")


def test_submit_reads_asset_id_and_app_name() -> None:
    """The asset id and app_name (how a sandbox is recognised) come from data."""
    got = wire.read_submit(_body({"data": {"id": "as1", "app_name": "sandbox"}}), "X")
    assert (got.asset_id, got.app_name) == ("as1", "sandbox")


def test_kept_answer_is_capped_at_16_kib() -> None:
    """A huge answer keeps only its first 16 KiB for the lockfile."""
    got = wire.read_submit(_body({"data": {"blob": "x" * 100_000}}), "SNKR")
    assert len(got.raw) == wire.KEEP_ANSWER_CHARS


STATUS_CASES = [
    # documented completed answer
    ({"data": [{"URL": "https://x/o.png"}]}, "succeeded", ("https://x/o.png",)),
    ({"data": ["https://x/a.png", "https://x/b.png"]}, "succeeded", ("https://x/a.png", "https://x/b.png")),
    # empty list: still running
    ({"data": []}, "running", ()),
    # envelope
    ({"data": {"status": "success", "results": ["u1"]}}, "succeeded", ("u1",)),
    ({"data": {"status": "SUCCESS", "results": []}}, "succeeded", ()),
    ({"data": {"status": "queue_bullet", "results": []}}, "running", ()),
    ({"data": {"status": "fail"}}, "failed", ()),
    ({"data": {"status": "cancel"}}, "failed", ()),
    # the media routes' shape
    ({"data": {"processing_status": "processing_bullet", "progress_percentage": 40}}, "running", ()),
    ({"data": {"processing_status": "queue_bullet"}}, "running", ()),
    ({"data": {"processing_status": "fail", "message": "bad images"}}, "failed", ()),
    ({"data": {"state": "Running"}}, "running", ()),
    # progress below 100 with no status word: running
    ({"data": {"progress_percentage": 99.5}}, "running", ()),
    ({"data": {"progress_percentage": "12"}}, "running", ()),
]


@pytest.mark.parametrize(("answer", "state", "results"), STATUS_CASES)
def test_status_reading(answer: object, state: str, results: tuple[str, ...]) -> None:
    """Status words of every known shape, case-insensitive; lists of samples are success."""
    got = wire.read_status(_body(answer))
    assert isinstance(got, wire.Status), got
    assert (got.state, got.results) == (state, results)


def test_failure_message_is_read() -> None:
    """A failure's message reaches the lockfile."""
    got = wire.read_status(_body({"data": {"processing_status": "fail", "message": "bad images"}}))
    assert isinstance(got, wire.Status) and got.message == "bad images"


UNREADABLE = [
    {"data": {"status": "warming_up"}},  # unknown word: never success, never failure
    {"data": {"processing_status": "weird"}},
    {"data": {"progress_percentage": 100}},  # done? failed? nobody says
    {"data": {}},
    {"data": "text"},
    {"data": [{"name": "no url"}]},
    {"data": {"status": "success", "results": "not a list"}},
    {"message": "something"},
    ["https://x/o.png", 3],
    b"<html>oops</html>",
    b"",
]


@pytest.mark.parametrize("answer", UNREADABLE)
def test_unknown_status_answers_are_unreadable(answer: object) -> None:
    """Unknown shapes and words are Unreadable with the raw answer, not a guess."""
    body = _body(answer)
    got = wire.read_status(body)
    assert isinstance(got, wire.Unreadable), got
    assert got.raw == body.decode("utf-8", "replace") and got.reason


def test_an_answer_over_8_mib_is_unreadable() -> None:
    """Larger than 8 MiB: unreadable, whatever it says."""
    body = json.dumps({"data": [{"URL": "u"}], "pad": "x" * (wire.MAX_ANSWER_BYTES + 1)}).encode()
    assert isinstance(wire.read_status(body), wire.Unreadable)


ERRORS = [
    ({"message": "Insufficient credit"}, "Insufficient credit"),
    ({"detail": [{"loc": ["body", "option"], "msg": "bad option", "type": "x"}]}, "option: bad option"),
    ({"detail": "Not authenticated"}, "Not authenticated"),
    ({"error": {"message": "nested"}}, "nested"),
    (b"<html><body>502 Bad Gateway</body></html>", "<html><body>502 Bad Gateway</body></html>"),
    (b"", "HTTP 502"),
]


@pytest.mark.parametrize(("answer", "message"), ERRORS)
def test_error_bodies(answer: object, message: str) -> None:
    """Every error body shape becomes one line for the user."""
    assert wire.error_message(_body(answer), "HTTP 502") == message


def test_form_of_a_kontext_job_has_prompt_no_type_and_unique_file_names(tmp_path: Path) -> None:
    """Kontext: prompt sent, finetune_type not; start and end of a pair never share a name."""
    start, end = tmp_path / "start" / "car.jpg", tmp_path / "end" / "car.jpg"
    job = Job(name="k", option="FluxKontextFinetune", finetune_type="Style", prompt="turn it red",
              images=(start, end, start.with_name("b.png"), end.with_name("b.png")))
    fields = dict(wire.form_fields(job))
    assert fields["prompt"] == "turn it red" and "finetune_type" not in fields
    names = [p.filename for p in wire.file_parts(job)]
    assert names == ["pair000_start_car.jpg", "pair000_end_car.jpg",
                     "pair001_start_b.png", "pair001_end_b.png"]
    assert [p.mime for p in wire.file_parts(job)][:2] == ["image/jpeg", "image/jpeg"]


def test_form_of_other_jobs(tmp_path: Path) -> None:
    """Non-Kontext: finetune_type sent, prompt not; names kept unless two collide."""
    job = Job(name="a", finetune_type="Product", prompt="ignored", images=(tmp_path / "a.png", tmp_path / "b.png"))
    fields = dict(wire.form_fields(job))
    assert fields["finetune_type"] == "Product" and "prompt" not in fields
    assert [p.filename for p in wire.file_parts(job)] == ["a.png", "b.png"]
    clash = Job(name="c", images=(tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"))
    assert [p.filename for p in wire.file_parts(clash)] == ["000_a.png", "001_a.png"]


def test_url_jobs_send_every_url_and_count_them() -> None:
    """image_urls repeat in the form; the image count is the URLs' when there are no files."""
    job = Job(name="u", image_urls=("https://e/a.jpg", "https://e/b.jpg"))
    assert [v for k, v in wire.form_fields(job) if k == "image_urls"] == ["https://e/a.jpg", "https://e/b.jpg"]
    assert wire.image_count(job) == 2 and wire.file_parts(job) == []


def test_fingerprint_ignores_what_the_api_ignores() -> None:
    """finetune_type of a Kontext job and the prompt of another do not change the request."""
    pair = (Path("/s.png"), Path("/e.png"))
    digests = {"/s.png": "d1", "/e.png": "d2"}
    k1 = Job(name="k", option="FluxKontextFinetune", finetune_type="Style", prompt="p", images=pair)
    k2 = Job(name="k", option="FluxKontextFinetune", finetune_type="Auto", prompt="p", images=pair)
    assert wire.canonical_request(k1, digests) == wire.canonical_request(k2, digests)
    a1 = Job(name="a", prompt="x", images=pair)
    a2 = Job(name="a", prompt="y", images=pair)
    assert wire.canonical_request(a1, digests) == wire.canonical_request(a2, digests)
    assert wire.canonical_request(a1, digests) != wire.canonical_request(
        Job(name="a", finetune_type="Style", images=pair), digests)


def test_describe_shape_has_no_values() -> None:
    """doctor's sketch of an answer names keys and types, never values."""
    sketch = wire.describe_shape(_body({"data": {"id": "secret-id", "n": 3, "l": [{"URL": "u"}]}}))
    assert "secret-id" not in sketch and "id: str" in sketch and "n: int" in sketch


# ----- trigger words are plain words (issue 12, item 5) ---------------------------------------

STRICT_TRIGGER_CASES = [
    # An empty or null field is absent: the next place is read.
    ({"data": {"trigger_word": "", "args": {"trigger_word": "SNKR_2"}}}, "SNKR_2", "data.args.trigger_word"),
    ({"data": {"trigger_word": None}, "trigger_word": "SNKR_3"}, "SNKR_3", "trigger_word"),
    # The longest word accepted, and the pattern's punctuation.
    ({"data": {"trigger_word": "S" * wire.MAX_TRIGGER_WORD}}, "S" * wire.MAX_TRIGGER_WORD, "data.trigger_word"),
    ({"data": {"trigger_word": "SNKR_a.b-c_1"}}, "SNKR_a.b-c_1", "data.trigger_word"),
]


@pytest.mark.parametrize(("answer", "word", "place"), STRICT_TRIGGER_CASES)
def test_plain_trigger_words_are_read(answer: object, word: str, place: str) -> None:
    """Plain words are read where they are; empty fields are skipped."""
    got = wire.read_submit(_body(answer), "SNKR")
    assert (got.trigger_word, got.found_at) == (word, place)


UNSAFE_TRIGGER = [
    # A trigger-word field holding something else: unreadable, never searched past.
    {"data": {"id": "a", "trigger_word": "SNKR_x\n::set-output name=a::b"}},
    {"data": {"id": "a", "trigger_word": "../../v1/admin"}},
    {"data": {"id": "a", "args": {"trigger_word": "SNKR_\x1b[2J"}}},
    {"data": {"id": "a", "trigger_word": "SNKR_x\n"}},
    {"data": {"id": "a", "trigger_word": "SNKR_\u202eevil"}},
    {"data": {"id": "a", "trigger_word": "S" * (wire.MAX_TRIGGER_WORD + 1)}},
    {"data": {"id": "a", "trigger_word": "SNKR bad", "note": "SNKR_decoy"}},
    {"trigger_word": "-rf", "data": {"id": "a", "x": "SNKR_decoy"}},
    # A bare body or data string that is not a plain word.
    "SNKR_x\nBASH_ENV=/tmp/x",
    {"data": "../../x"},
    b"SNKR_x\x1b[31m",
    # The one string with the prefix is not a plain word; or two are there, one odd.
    {"data": {"id": "a", "results": [{"name": "SNKR_x:y"}]}},
    {"data": {"id": "a", "x": "SNKR_ok", "y": "SNKR_a/b"}},
]


@pytest.mark.parametrize("answer", UNSAFE_TRIGGER)
def test_unsafe_trigger_words_are_not_trigger_words(answer: object) -> None:
    """Anything outside the pattern is no trigger word (the job goes uncertain); the raw
    answer and the asset id are kept."""
    body = _body(answer)
    got = wire.read_submit(body, "SNKR")
    assert got.trigger_word is None and got.found_at is None
    assert got.raw == body.decode("utf-8", "replace")
    if isinstance(answer, dict) and isinstance(answer.get("data"), dict):
        assert got.asset_id == "a"
