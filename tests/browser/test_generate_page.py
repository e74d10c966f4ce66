"""The web page of a text generation model, in headless Chromium against the real `foundry serve`: the
prompt box streams the model's answer, and thumbs down with a better answer is stored as feedback."""

from __future__ import annotations

import re

import httpx
import pytest
import yaml
from conftest import require_chromium, train

from e2e_helpers import tiny_gpt_config, write_sentences

require_chromium()  # skips this module when Debian's chromium is missing

from playwright.sync_api import expect  # noqa: E402  only once the browser is known to be there

import modelfoundry as mf  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def gpt_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpt")
    write_sentences(work / "corpus.txt")
    (work / "gpt.yaml").write_text(yaml.safe_dump(tiny_gpt_config("corpus.txt")))
    return train(work, work / "gpt.yaml")


def test_the_prompt_box_streams_the_answer_and_a_better_answer_is_stored(page, gpt_model, serve):
    server = serve(gpt_model)
    page.goto(server.url)
    expect(page.locator("#model-card")).to_contain_text("text_generation")
    expect(page.locator("#model-card")).to_contain_text("128 tokens")  # the context
    expect(page.locator("#predict-card")).to_be_hidden()

    page.click("#generate-button")  # nothing typed: the page says so
    expect(page.locator("#error")).to_contain_text("type a prompt first")
    page.get_by_label("Prompt").fill("the cat")
    page.get_by_label("Max new tokens").fill("20")
    page.get_by_label("Temperature").fill("0")
    page.click("#generate-button")
    expect(page.locator("#answer-meta")).to_contain_text(re.compile(r"Done \(.+\) · answer cmpl-"))
    expected = mf.load(gpt_model.path).generate("the cat", max_new_tokens=20, temperature=0)
    assert page.locator("#answer").text_content() == expected

    page.get_by_label("Better answer").fill(" sees the moon.")
    page.click("#send-better")
    status = page.locator("#vote-status")
    expect(status).to_have_text(re.compile(r"Thanks — saved as feedback #\d+"))
    feedback_id = int(re.search(r"#(\d+)", status.inner_text()).group(1))
    page.get_by_role("button", name="Good answer").click()  # a vote on the same answer replaces the row
    expect(status).to_have_text(f"Thanks — saved as feedback #{feedback_id}")

    rows = {r["id"]: r for r in httpx.get(f"{server.url}/v1/feedback").json()["feedback"]}
    stored = rows[feedback_id]
    assert stored["kind"] == "generation" and stored["label"] == "better"
    assert stored["input"] == {
        "prompt": "the cat",
        "answer": expected,
        "vote": "up",
        "better_answer": " sees the moon.",
    }
