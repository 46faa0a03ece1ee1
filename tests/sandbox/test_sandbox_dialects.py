"""``--dialect`` answer shapes, the ``gateway_timeout`` fault and the 400 for an unknown
trigger word: in-process over ``httpx.ASGITransport`` with the fake clock, and over a
real loopback server where sockets matter."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from sandbox_support import HEADERS, image_parts
from support.clock import FakeClock

from runner.api.endpoint import connect
from runner.cli_args import build_parser
from runner.errors import UsageError
from runner.models import Manifest
from runner.sandbox.config import DIALECTS, SandboxConfig
from runner.sandbox.dialects import REDACTED
from runner.sandbox.serve import config_from_args

pytestmark = pytest.mark.anyio

WORD = re.compile(r"SNKR_[a-z0-9]{6}")
FAIL_WORD = re.compile(r"SNKR_FAIL_[a-z0-9]{6}")
# Every documented envelope field; `envelope` adds `trigger_word`.
DOCUMENTED = {
    "id",
    "customer_id",
    "primary_user_id",
    "args",
    "results",
    "thumbnails",
    "status",
    "mime_type",
    "app_name",
    "created_at",
    "updated_at",
    "history",
}
SAMPLES = re.compile(r"http://sandbox\.test/_sandbox/files/[0-9a-f]{24}/sample_[01]\.png")


async def post(
    client: httpx.AsyncClient,
    prefix: str = "SNKR",
    key: str | None = None,
    parts: list[Any] | None = None,
    **fields: Any,
) -> httpx.Response:
    headers = HEADERS | ({"Idempotency-Key": key} if key else {})
    files = parts if parts is not None else image_parts(3)  # 3 images on Auto: 1.0 s
    return await client.post(
        "/finetune", headers=headers, files=files, data={"lora_prefix": prefix, **fields}
    )


async def status(client: httpx.AsyncClient, ident: str) -> Any:
    response = await client.get(f"/finetune/{ident}", headers=HEADERS)
    assert response.status_code == 200, response.text
    return response.json()


async def ledger(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/_sandbox/ledger", headers=HEADERS)).json()
    return body


def assert_done_list(body: Any) -> None:
    """The documented completed answer: {"data": [{"URL": ...}, ...]}, the two samples."""
    assert set(body) == {"data"}
    assert [set(item) for item in body["data"]] == [{"URL"}, {"URL"}]
    assert all(SAMPLES.fullmatch(item["URL"]) for item in body["data"])


def assert_failed(body: Any) -> None:
    assert body == {
        "data": {
            "processing_status": "fail",
            "progress_percentage": 100,
            "message": "the lora_prefix asks the sandbox to fail",
        }
    }


# -- POST answers ---------------------------------------------------------------------------


async def test_envelope_post_has_the_trigger_word_in_data(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """envelope (the default): the documented envelope plus data.trigger_word."""
    async with asgi() as client:
        response = await post(client)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"data"} and set(body["data"]) == DOCUMENTED | {"trigger_word"}
        assert WORD.fullmatch(body["data"]["trigger_word"])
        assert body["data"]["args"]["trigger_word"] == body["data"]["trigger_word"]
        assert body["data"]["app_name"] == "sandbox"
        assert body["data"]["status"] == "queue_bullet"


async def test_args_post_has_the_trigger_word_only_in_args(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """args: the documented envelope, no data.trigger_word, the word only at data.args."""
    async with asgi(dialect="args") as client:
        response = await post(client)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"data"} and set(body["data"]) == DOCUMENTED
        word = body["data"]["args"]["trigger_word"]
        assert WORD.fullmatch(word)
        assert response.text.count(word) == 1
        assert body["data"]["app_name"] == "sandbox"


async def test_bare_post_is_the_trigger_word_as_a_json_string(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """bare: the 200's body is the trigger word as a JSON string, and nothing else."""
    async with asgi(dialect="bare") as client:
        response = await post(client)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        word = response.json()
        assert isinstance(word, str) and WORD.fullmatch(word)
        assert response.content == json.dumps(word).encode()


async def test_opaque_post_has_the_asset_id_and_no_trigger_word_anywhere(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """opaque: the documented envelope with the real asset id, app_name sandbox, and no
    string anywhere that holds the trigger word or starts with `SNKR_`."""
    async with asgi(dialect="opaque") as client:
        response = await post(client)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"data"} and set(body["data"]) == DOCUMENTED
        assert "trigger_word" not in body["data"]["args"]
        assert body["data"]["app_name"] == "sandbox"
        assert body["data"]["args"]["lora_prefix"] == "SNKR"
        assert "SNKR_" not in response.text.upper()
        # The id is real: the status route answers for it (in the args shapes).
        assert (await status(client, body["data"]["id"]))["data"]["processing_status"] == (
            "queue_bullet"
        )


@pytest.mark.parametrize(
    ("prefix", "fields", "file_name"),
    [
        ("sandbox", {}, "a.png"),  # customer_id is "sandbox_<hex>"
        ("queue", {}, "a.png"),  # the status is "queue_bullet"
        ("SNKR", {}, "snkr_portrait.png"),  # a file name that looks like a trigger word
        ("Car", {"option": "FluxKontextFinetune", "prompt": "paint CAR_x red"}, "a.png"),
    ],
)
async def test_opaque_post_redacts_every_string_that_could_pass_for_the_trigger_word(
    asgi: Callable[..., httpx.AsyncClient],
    prefix: str,
    fields: dict[str, str],
    file_name: str,
) -> None:
    """Whatever the prefix and inputs, no value of an opaque POST answer holds `<prefix>_`
    (any case): such values read "redacted" instead."""
    parts = [("image_files", (file_name, image_parts(1)[0][1][1], "image/png")), *image_parts(1)]
    async with asgi(dialect="opaque") as client:
        response = await post(client, prefix, parts=parts, **fields)
        assert response.status_code == 200, response.text
        needle = prefix.lower() + "_"
        values = _strings(response.json())
        assert not [v for v in values if needle in v.lower()]
        assert REDACTED in values
        assert response.json()["data"]["app_name"] == "sandbox"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_replay_returns_the_first_answer_byte_for_byte_in_every_dialect(
    asgi: Callable[..., httpx.AsyncClient], dialect: str
) -> None:
    """The idempotency store gives back the exact body of the first 200, in its dialect."""
    async with asgi(dialect=dialect) as client:
        first = await post(client, key="same")
        second = await post(client, key="same")
        assert first.status_code == second.status_code == 200
        assert second.content == first.content
        assert second.headers["idempotent-replayed"] == "true"
        counts = await ledger(client)
        assert (counts["trainings"], counts["credits_charged"], counts["replays"]) == (1, 1, 1)


# -- status answers ---------------------------------------------------------------------------


async def test_envelope_status_is_the_envelope_with_status_results_thumbnails(
    asgi: Callable[..., httpx.AsyncClient], clock: FakeClock
) -> None:
    """envelope: queue_bullet, processing_bullet, then success with results and thumbnails;
    a FAIL prefix ends in status fail, with no results."""
    async with asgi() as client:
        word = (await post(client)).json()["data"]["trigger_word"]
        failing = (await post(client, "SNKR_FAIL")).json()["data"]["trigger_word"]
        clock.advance(0.055)
        queued = (await status(client, word))["data"]
        assert set(queued) == DOCUMENTED | {"trigger_word"} and queued["status"] == "queue_bullet"
        clock.advance(0.45)
        assert (await status(client, word))["data"]["status"] == "processing_bullet"
        clock.advance(0.5)
        done = (await status(client, word))["data"]
        assert done["status"] == "success" and done["trigger_word"] == word
        assert len(done["results"]) == 2 and len(done["thumbnails"]) == 2
        failed = (await status(client, failing))["data"]
        assert failed["status"] == "fail" and failed["results"] == []


@pytest.mark.parametrize("dialect", ["args", "opaque"])
async def test_args_and_opaque_status_report_processing_status_and_progress(
    asgi: Callable[..., httpx.AsyncClient], clock: FakeClock, dialect: str
) -> None:
    """args and opaque (asked by asset id): {"data": {"processing_status", "progress_percentage"}}
    while training, the documented [{"URL"}] list when done, processing_status fail on failure."""
    async with asgi(dialect=dialect) as client:
        ident = (await post(client)).json()["data"]["id"]
        failing = (await post(client, "SNKR_FAIL")).json()["data"]["id"]
        assert await status(client, ident) == {
            "data": {"processing_status": "queue_bullet", "progress_percentage": 0}
        }
        clock.advance(0.055)
        assert await status(client, ident) == {
            "data": {"processing_status": "queue_bullet", "progress_percentage": 5}
        }
        clock.advance(0.45)
        assert await status(client, ident) == {
            "data": {"processing_status": "processing_bullet", "progress_percentage": 50}
        }
        clock.advance(0.44)
        assert await status(client, ident) == {
            "data": {"processing_status": "processing_bullet", "progress_percentage": 94}
        }
        clock.advance(0.06)
        assert_done_list(await status(client, ident))
        assert_failed(await status(client, failing))


async def test_args_status_answers_for_the_trigger_word_too(
    asgi: Callable[..., httpx.AsyncClient], clock: FakeClock
) -> None:
    """args: the status route takes the trigger word from data.args, as documented."""
    async with asgi(dialect="args") as client:
        word = (await post(client)).json()["data"]["args"]["trigger_word"]
        clock.advance(0.5)
        assert (await status(client, word))["data"]["processing_status"] == "processing_bullet"
        clock.advance(0.5)
        assert_done_list(await status(client, word))


async def test_bare_status_is_an_empty_list_until_done(
    asgi: Callable[..., httpx.AsyncClient], clock: FakeClock
) -> None:
    """bare: {"data": []} while training, [{"URL"}] when done, processing_status fail on failure."""
    async with asgi(dialect="bare") as client:
        word = (await post(client)).json()
        failing = (await post(client, "SNKR_FAIL")).json()
        assert FAIL_WORD.fullmatch(failing)
        assert await status(client, word) == {"data": []}
        clock.advance(0.5)
        assert await status(client, word) == {"data": []}
        clock.advance(0.5)
        assert_done_list(await status(client, word))
        assert_failed(await status(client, failing))
        assert (await ledger(client))["status_checks"] == 4


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_unknown_trigger_word_is_400_with_a_message_in_every_dialect(
    asgi: Callable[..., httpx.AsyncClient], dialect: str
) -> None:
    """The status route documents 400, not 404, for a trigger word or id it does not know."""
    async with asgi(dialect=dialect) as client:
        response = await client.get("/finetune/SNKR_nope00", headers=HEADERS)
        assert response.status_code == 400
        assert set(response.json()) == {"message"} and "SNKR_nope00" in response.json()["message"]


# -- gateway_timeout --------------------------------------------------------------------------


async def test_gateway_timeout_charges_once_and_a_replay_gets_the_stored_200(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """gateway_timeout: the training is created and charged, the answer is a 504 {"message"}
    echoing the key; a replay under the key (the fault drawn again) gets the stored 200."""
    async with asgi(fault_rate=1.0, fault_kinds=("gateway_timeout",), seed=1) as client:
        parts = image_parts(3)
        timed_out = await post(client, key="gw-1", parts=parts)
        assert timed_out.status_code == 504
        assert set(timed_out.json()) == {"message"} and "504" in timed_out.json()["message"]
        assert timed_out.headers["idempotency-key"] == "gw-1"
        counts = await ledger(client)
        assert (counts["trainings"], counts["credits_charged"], counts["posts"]) == (1, 1, 1)
        replay = await post(client, key="gw-1", parts=parts)
        assert replay.status_code == 200
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.headers["idempotency-key"] == "gw-1"
        word = replay.json()["data"]["trigger_word"]
        assert (await status(client, word))["data"]["trigger_word"] == word
        assert await ledger(client) == {
            "credits_charged": 1,
            "trainings": 1,
            "posts": 2,
            "replays": 1,
            "balance": None,
            "duplicate_trainings": 0,
            "status_checks": 1,
            "stored_bytes": sum(len(p[1][1]) for p in parts),
            "largest_image_side": 48,
        }


async def test_gateway_timeout_without_idempotency_has_no_echo_and_a_retry_pays_again(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """With --no-idempotency the 504 carries no Idempotency-Key, so nothing tells the client
    a retry is safe: a blind retry trains (and charges) a duplicate."""
    config = {"fault_rate": 1.0, "fault_kinds": ("gateway_timeout",), "idempotency": False}
    async with asgi(**config) as client:
        parts = image_parts(3)
        for _ in range(2):
            response = await post(client, key="gw-2", parts=parts)
            assert response.status_code == 504
            assert "idempotency-key" not in response.headers
        counts = await ledger(client)
        assert (counts["trainings"], counts["credits_charged"]) == (2, 2)
        assert counts["duplicate_trainings"] == 1


async def test_gateway_timeout_answers_a_refused_post_as_usual(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """A POST refused with a 4xx (here a 422, and a 402) is answered as such, nothing charged."""
    config = {"fault_rate": 1.0, "fault_kinds": ("gateway_timeout",), "credits": 0}
    async with asgi(**config) as client:
        invalid = await post(client, key="gw-3", num_iterations="many")
        assert invalid.status_code == 422 and invalid.headers["idempotency-key"] == "gw-3"
        assert (await post(client, key="gw-4")).status_code == 402
        counts = await ledger(client)
        assert (counts["trainings"], counts["credits_charged"], counts["posts"]) == (0, 0, 2)


async def test_gateway_timeout_never_hits_a_status_request(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """gateway_timeout is drawn by POST /finetune only: status requests answer normally."""
    async with asgi(fault_rate=1.0, fault_kinds=("gateway_timeout",)) as client:
        await post(client, key="gw-5")
        replay = await post(client, key="gw-5")
        word = replay.json()["data"]["trigger_word"]
        for _ in range(5):
            assert (await client.get(f"/finetune/{word}", headers=HEADERS)).status_code == 200


@pytest.mark.parametrize("dialect", ["bare", "opaque"])
async def test_gateway_timeout_replay_is_in_the_dialect_of_the_first_answer(
    asgi: Callable[..., httpx.AsyncClient], dialect: str
) -> None:
    """The stored answer behind a 504 is the dialect's 200 (a bare string, an opaque envelope)."""
    async with asgi(dialect=dialect, fault_rate=1.0, fault_kinds=("gateway_timeout",)) as client:
        assert (await post(client, key="gw-6")).status_code == 504
        replay = await post(client, key="gw-6")
        assert replay.status_code == 200
        if dialect == "bare":
            assert WORD.fullmatch(replay.json())
        else:
            assert "SNKR_" not in replay.text.upper() and replay.json()["data"]["id"]


# -- settings ---------------------------------------------------------------------------------


def test_config_rejects_an_unknown_dialect(tmp_path: Path) -> None:
    """SandboxConfig (so the CLI and the embedded sandbox too) refuses a dialect it lacks."""
    with pytest.raises(UsageError, match=r"unknown dialect 'xml'; choose from envelope, args"):
        SandboxConfig(state_dir=tmp_path, dialect="xml")
    assert SandboxConfig(state_dir=tmp_path).dialect == "envelope"


def test_cli_dialect_flag_reaches_the_config(tmp_path: Path) -> None:
    """`runner sandbox serve --dialect bare` configures bare; an unknown one is a UsageError."""
    parser = build_parser()
    base = ["sandbox", "serve", "--state-dir", str(tmp_path)]
    assert config_from_args(parser.parse_args(base)).dialect == "envelope"
    assert config_from_args(parser.parse_args([*base, "--dialect", "bare"])).dialect == "bare"
    with pytest.raises(UsageError, match="dialect"):
        config_from_args(parser.parse_args([*base, "--dialect", "soap"]))
    kinds = config_from_args(parser.parse_args([*base, "--fault-kinds", "gateway_timeout"]))
    assert kinds.fault_kinds == ("gateway_timeout",)


def test_embedded_sandbox_takes_its_dialect_from_the_environment(tmp_path: Path) -> None:
    """`api.endpoint: sandbox` runs the embedded sandbox in RUNNER_SANDBOX_DIALECT's dialect."""
    manifest = cast(
        Manifest,
        SimpleNamespace(
            api=SimpleNamespace(endpoint="sandbox", api_key_env="RUNNER_TEST_UNSET_KEY"),
            folder=tmp_path,
            path=tmp_path / "m.yaml",
        ),
    )
    environ = {"RUNNER_SANDBOX_DIALECT": "bare", "RUNNER_SANDBOX_TRAIN_SECONDS": "0"}
    with connect(manifest, environ=environ) as connection:
        response = httpx.post(
            f"{connection.url}/finetune",
            headers={"X-Api-Key": connection.api_key},
            files=image_parts(1),
            data={"lora_prefix": "ENV"},
            timeout=10,
        )
        assert response.status_code == 200 and response.json().startswith("ENV_")
    with (
        pytest.raises(UsageError, match="dialect"),
        connect(manifest, environ={"RUNNER_SANDBOX_DIALECT": "nope"}),
    ):
        pass


# -- over a real loopback server --------------------------------------------------------------


def test_bare_over_loopback(server: Callable[..., Any]) -> None:
    """Over real HTTP, bare answers a JSON string, then {"data": []}, then the sample list."""
    with (
        server(dialect="bare", train_seconds=0.2) as running,
        httpx.Client(base_url=running.url, headers=HEADERS, timeout=10) as client,
    ):
        response = client.post("/finetune", files=image_parts(2), data={"lora_prefix": "SNKR"})
        assert response.status_code == 200 and response.headers["content-type"] == (
            "application/json"
        )
        word = response.json()
        assert WORD.fullmatch(word)
        assert client.get(f"/finetune/{word}").json() == {"data": []}
        deadline = time.monotonic() + 10
        while (body := client.get(f"/finetune/{word}").json()) == {"data": []}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        urls = [item["URL"] for item in body["data"]]
        assert len(urls) == 2 and all(u.startswith(f"{running.url}/_sandbox/files/") for u in urls)
        assert client.get(urls[0]).content.startswith(b"\x89PNG")
        assert client.get("/finetune/SNKR_nope00").status_code == 400


def test_gateway_timeout_over_loopback(server: Callable[..., Any]) -> None:
    """Over real HTTP, a 504 after the training started, the key echoed; the replay's 200
    names that same training; with --no-idempotency no echo."""
    config = {"fault_rate": 1.0, "fault_kinds": ("gateway_timeout",), "seed": 1}
    parts = image_parts(2)
    with (
        server(**config) as running,
        httpx.Client(base_url=running.url, headers=HEADERS, timeout=10) as client,
    ):
        first = client.post("/finetune", files=parts, headers={"Idempotency-Key": "loop-gw"})
        assert first.status_code == 504 and first.headers["idempotency-key"] == "loop-gw"
        assert "message" in first.json()
        replay = client.post("/finetune", files=parts, headers={"Idempotency-Key": "loop-gw"})
        assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
        counts = client.get("/_sandbox/ledger").json()
        assert (counts["trainings"], counts["credits_charged"], counts["replays"]) == (1, 1, 1)
    with (
        server(**config, idempotency=False) as running,
        httpx.Client(base_url=running.url, headers=HEADERS, timeout=10) as client,
    ):
        blind = client.post("/finetune", files=parts, headers={"Idempotency-Key": "loop-gw"})
        assert blind.status_code == 504 and "idempotency-key" not in blind.headers
