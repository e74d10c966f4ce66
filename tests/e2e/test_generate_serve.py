"""Serving a text generation model OpenAI-style: a tiny GPT trained with the real CLI, `foundry serve` over
it, and the official `openai` client against its /v1 routes, streaming and not; bad requests as 400s the
client raises; a client that goes away mid-stream while the server keeps serving.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml

import modelfoundry as mf
from e2e_helpers import Server, assert_ok, assert_user_error, foundry, tiny_gpt_config, write_sentences

openai = pytest.importorskip("openai")  # the test extra installs it

pytestmark = pytest.mark.slow
LIMIT = 120  # --max-new-tokens-limit of the server under test
CONTEXT = 128
CHAT = [{"role": "user", "content": "the cat"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, run folder): a 1-layer GPT of 128 characters of context, trained for 40 steps."""
    work = tmp_path_factory.mktemp("gen")
    write_sentences(work / "corpus.txt")
    (work / "gen.yaml").write_text(yaml.safe_dump(tiny_gpt_config("corpus.txt", CONTEXT)))
    home = work / "runs"
    assert_ok(foundry("train", "gen.yaml", "--run-dir", home / "run", cwd=work, home=home))
    server = Server(
        home / "run", "--max-new-tokens-limit", str(LIMIT), "--max-sequences", "4", cwd=work, home=home
    )
    yield server, home / "run"
    server.stop()


@pytest.fixture(scope="module")
def client(served):
    server, _ = served
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def test_the_openai_client_completes_and_chats_as_the_package_generates(served, client):
    server, run = served
    package = mf.load(run)
    [listed] = client.models.list().data
    version = httpx.get(f"{server.url}/v1/model", timeout=10).json()["version"]
    assert listed.object == "model" and listed.owned_by == "modelfoundry" and listed.id == version == "v1"
    model = listed.id

    answer = client.completions.create(model=model, prompt="the cat", max_tokens=12, temperature=0)
    expected = package.generate("the cat", max_new_tokens=12, temperature=0)
    assert answer.choices[0].text == expected and answer.model == model
    assert answer.usage.prompt_tokens == len("the cat")  # characters: a char tokenizer
    assert answer.usage.completion_tokens <= 12 and answer.choices[0].finish_reason in ("stop", "length")

    streamed = client.completions.create(
        model=model, prompt="the cat", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == expected

    chat = client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, temperature=0)
    expected_chat = package.chat(CHAT, max_new_tokens=8, temperature=0)
    assert chat.choices[0].message.content == expected_chat and chat.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=CHAT,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_chat
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens  # the last chunk: usage alone


def test_n_choices_seed_and_stop(client, model):
    first = client.completions.create(model=model, prompt="a dog", max_tokens=10, n=3, seed=5, temperature=1)
    again = client.completions.create(model=model, prompt="a dog", max_tokens=10, n=3, seed=5, temperature=1)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # seeded: repeatable
    whole = client.completions.create(model=model, prompt="the bird", max_tokens=20, temperature=0).choices[0]
    stop = whole.text[3:5]  # two characters from inside the greedy answer
    cut = client.completions.create(
        model=model, prompt="the bird", max_tokens=20, temperature=0, stop=[stop]
    ).choices[0]
    assert cut.text == whole.text[: whole.text.index(stop)] and cut.finish_reason == "stop"


@pytest.mark.parametrize(
    "options, param, phrase",
    [
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"max_tokens": LIMIT + 1}, "max_tokens", "--max-new-tokens-limit"),
        ({"temperature": -0.5}, "temperature", "0 (greedy) or more"),
        ({"top_p": 0}, "top_p", "(0, 1]"),
        ({"top_p": 1.5}, "top_p", "(0, 1]"),
        ({"prompt": "the cat " * 20, "extra_body": {"truncate": False}}, "prompt", "context holds 128"),
        ({"prompt": ["the cat"] * 3, "n": 30}, "n", "90 sequences"),
        ({"logprobs": 2}, "logprobs", "not supported by this server"),
        ({"seed": 2**64}, "seed", "between -2**62 and 2**62"),
    ],
)
def test_bad_requests_are_400s_the_client_raises_with_our_message(client, model, options, param, phrase):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**{"model": model, "prompt": "the cat", "max_tokens": 5, **options})
    assert info.value.status_code == 400 and info.value.param == param
    assert phrase in info.value.message


def test_a_long_prompt_is_cut_from_the_left_with_a_warning(served):
    server, _ = served
    body = {"prompt": "the cat sees the moon. " * 10, "max_tokens": 10, "temperature": 0}  # 230 characters
    answer = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    assert answer["usage"]["prompt_tokens"] == 118  # the last 128 - 10 characters
    assert "first 112 tokens were dropped" in answer["warnings"][0]


def test_a_client_that_goes_away_mid_stream_frees_its_sequence_and_the_server_serves_on(
    served, client, model
):
    server, _ = served
    assert metric(server, "foundry_generation_cancelled_total") == 0
    body = {"prompt": "the", "max_tokens": LIMIT, "temperature": 1.0, "stream": True, "ignore_eos": True}
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{server.url}/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        next(response.iter_lines())  # the first piece arrived; then the connection closes
    deadline = time.monotonic() + 20
    while metric(server, "foundry_generation_active") and time.monotonic() < deadline:
        time.sleep(0.1)  # the server notices and frees the slot
    assert metric(server, "foundry_generation_active") == 0
    assert metric(server, "foundry_generation_cancelled_total") == 1  # stopped before its 120 tokens
    after = client.completions.create(model=model, prompt="the cat", max_tokens=5, temperature=0)
    assert after.choices[0].finish_reason in ("stop", "length") and server.process.poll() is None


def test_a_client_that_gives_up_on_a_whole_answer_cancels_its_choices(served):
    server, _ = served
    cancelled, tokens = (
        metric(server, "foundry_generation_cancelled_total"),
        metric(server, "foundry_generated_tokens_total"),
    )
    body = {"prompt": "the", "max_tokens": LIMIT, "n": 64, "ignore_eos": True}  # 64 x 120 tokens, 4 at a time
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=0.2)
    deadline = time.monotonic() + 20
    while metric(server, "foundry_generation_active") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server, "foundry_generation_cancelled_total") > cancelled
    assert metric(server, "foundry_generated_tokens_total") - tokens < 64 * LIMIT


def metric(server, name: str) -> float:
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    return next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith(f"{name} "))


def test_plan_reads_the_gpt_runs_shape_for_flops_per_token_and_kv_cache_bytes(served):
    _, run = served
    result = foundry("plan", "serve", "--run", run, "--json", cwd=run.parent, home=run.parent)
    assert_ok(result)
    plan = json.loads(result.stdout)
    estimates, parameters = plan["estimates"], plan["model"]["params"]
    assert plan["context"] == CONTEXT and plan["model"]["layers"] == 1 and plan["model"]["kv_heads"] == 2
    assert (
        estimates["kv_bytes_per_token"]["value"] == 2 * 1 * 2 * 16 * 2
    )  # K and V, 1 layer, 2 heads of 16, fp16
    assert estimates["inference_flops_per_token"]["value"] == 2 * parameters + 2 * 1 * CONTEXT * 32


def test_export_writes_a_decoder_graph_with_pasts_that_decodes_as_the_package(served):
    _, run = served
    result = foundry("export", run, "--format", "onnx", cwd=run.parent, home=run.parent)
    assert_ok(result)
    from modelfoundry.compress import gpt_onnx

    record = json.loads((run / "model" / "model.json").read_text())["onnx"]
    assert record["parity"]["max_abs_probability_difference"] <= 1e-4 and "past_keys" in record["graph"]
    package = mf.load(run)
    session = gpt_onnx.session(run / "model" / "model.onnx")
    ids = gpt_onnx.greedy(session, package.model.config, package.tokenizer.encode("the cat"), 12)
    expected = package.generate("the cat", max_new_tokens=12, temperature=0)
    eos = package.tokenizer.eos_id
    assert package.tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids) == expected


def test_the_predict_routes_point_a_generation_model_to_the_openai_ones(served):
    server, _ = served
    answer = httpx.post(f"{server.url}/v1/predict", json={"inputs": ["the cat"]}, timeout=30)
    assert answer.status_code == 404 and "/v1/completions" in answer.json()["error"]["message"]


def test_compress_says_how_to_get_a_generation_models_onnx_and_int8_instead_of_failing(served):
    _, run = served
    result = foundry("compress", run, "--quantize", "int8", cwd=run.parent, home=run.parent)
    assert_user_error(result, "text generation model", "foundry export RUN --format onnx", "quantize_int8")


def test_a_reload_hands_new_requests_to_a_new_engine_and_retires_the_old(served):
    from fastapi.testclient import TestClient

    from modelfoundry.serve.app import create_app
    from modelfoundry.serve.service import Settings

    _, run = served
    app = create_app(Settings(str(run)))
    with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 50000)) as client:
        before = app.state.service.engine
        body = {"prompt": "the cat", "max_tokens": 6, "temperature": 0}
        first = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
        assert client.post("/v1/admin/reload").json()["reloaded"] is True
        after = app.state.service.engine
        assert after is not before and after.running
        assert client.post("/v1/completions", json=body).json()["choices"][0]["text"] == first
        before._thread.join(5)
        assert not before.running  # it had nothing left to finish


def test_served_votes_retrain_a_challenger_gpt_scored_by_bits_per_byte(served):
    server, run = served
    for prompt, better in (("the cat", " sat on the mat."), ("a dog", " sat on the mat.")):
        answer = httpx.post(
            f"{server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 4}, timeout=60
        ).json()
        sent = {"request_id": answer["id"], "vote": "down", "better_answer": better}
        assert httpx.post(f"{server.url}/v1/feedback", json=sent, timeout=60).status_code in (200, 201)
    ask = {"prompt": "x", "max_tokens": 2}
    down = httpx.post(f"{server.url}/v1/completions", json=ask, timeout=60).json()
    httpx.post(f"{server.url}/v1/feedback", json={"request_id": down["id"], "vote": "down"}, timeout=60)

    result = foundry("retrain", run, cwd=run.parent, home=run.parent)
    assert_ok(result)
    assert "3 feedback rows -> 2 texts (1 teach no answer)" in result.stderr
    assert "a fifth of its 40" in result.stderr  # from the champion's weights: continued training
    assert "holdout bits_per_byte" in result.stdout
    report = Path(re.search(r"report: (\S+)", result.stdout).group(1))
    comparison = json.loads((report.parent / "comparison.json").read_text())
    assert comparison["metric"] == "bits_per_byte" and comparison["higher_is_better"] is False
    champion, challenger = comparison["champion"], comparison["challenger"]
    assert champion["holdout"] > 0 and challenger["holdout"] > 0
    assert comparison["examples"]["feedback_trained"] == 2
    # the challenger learnt the better answers: the text it was given is likelier under it
    package = mf.load(report.parent)
    from modelfoundry.tasks.generation import score_texts

    taught = ["the cat sat on the mat.", "a dog sat on the mat."]
    assert (
        score_texts(package, taught, False, "t")["bits_per_byte"]
        < score_texts(mf.load(run), taught, False, "t")["bits_per_byte"]
    )
