"""The web page of an instruct model (a chat template): the box holds a conversation sent to
/v1/chat/completions, each answer streams into it, a second message carries the first turns, and a better
answer is stored with the whole conversation. Headless Chromium against the real `foundry serve` of a LoRA
run on a tiny random Llama (tests/tiny_llama.py)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import yaml
from conftest import require_chromium, train

require_chromium()  # skips this module when Debian's chromium is missing

from playwright.sync_api import expect  # noqa: E402  only once the browser is known to be there

import modelfoundry as mf  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, tiny_llama):
    work = tmp_path_factory.mktemp("chat")
    rows = [{"prompt": f"What is {a} plus 1?", "response": str(a + 1)} for a in range(1, 9)]
    (work / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "task": "text_generation",
        "data": {"source": "sft.jsonl"},
        "model": {"name": "pretrained_lm", "path": str(tiny_llama)},
        "train": {"epochs": 1, "lr": 0.01, "lora": {"r": 2}},
    }
    (work / "chat.yaml").write_text(yaml.safe_dump(config))
    return train(work, work / "chat.yaml")


def test_the_chat_box_keeps_the_conversation_and_stores_a_better_answer_with_it(page, chat_model, serve):
    server = serve(chat_model)
    page.goto(server.url)
    expect(page.locator("#generate-title")).to_have_text("Chat")
    expect(page.locator("#conversation")).to_be_hidden()
    page.get_by_label("Max new tokens").fill("6")
    page.get_by_label("Temperature").fill("0")

    page.get_by_role("button", name="Send", exact=True).click()  # nothing typed: the page says so
    expect(page.locator("#error")).to_contain_text("type a message first")

    page.get_by_label("Message").fill("What is 2 plus 1?")
    page.get_by_label("Message").press("Enter")  # Enter sends
    expect(page.locator("#answer-meta")).to_contain_text(re.compile(r"Done \(.+\) · answer chatcmpl-"))
    expect(page.get_by_label("Message")).to_have_value("")  # cleared for the next turn
    model = mf.load(chat_model.path)
    first = [{"role": "user", "content": "What is 2 plus 1?"}]
    first_answer = model.chat(first, max_new_tokens=6, temperature=0)
    turns = page.locator("#conversation li")
    expect(turns).to_have_count(2)
    assert turns.nth(0).text_content() == "What is 2 plus 1?"
    assert turns.nth(1).text_content() == first_answer

    page.get_by_label("Message").fill("And 3 plus 1?")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(turns).to_have_count(4)
    expect(page.locator("#answer-meta")).to_contain_text("Done")
    both = [
        *first,
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": "And 3 plus 1?"},
    ]
    second_answer = model.chat(both, max_new_tokens=6, temperature=0)  # the first turns went with it
    assert turns.nth(3).text_content() == second_answer

    page.get_by_label("Better answer").fill("4")
    page.get_by_role("button", name="Bad answer").click()
    status = page.locator("#vote-status")
    expect(status).to_have_text(re.compile(r"Thanks — saved as feedback #\d+"))
    feedback_id = int(re.search(r"#(\d+)", status.inner_text()).group(1))
    stored = {r["id"]: r for r in httpx.get(f"{server.url}/v1/feedback").json()["feedback"]}[feedback_id]
    assert stored["kind"] == "generation"
    assert stored["input"]["messages"] == both
    assert stored["input"]["answer"] == second_answer
    assert stored["input"]["better_answer"] == "4" and stored["input"]["vote"] == "down"

    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("#conversation")).to_be_hidden()
    expect(turns).to_have_count(0)
