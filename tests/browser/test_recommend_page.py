"""The page of a served recommendation model, in headless Chromium: a user's history and
recommendations, and a like stored as a new interaction."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest
import yaml
from conftest import require_chromium, train

require_chromium()  # skips this module when Debian's chromium is missing

from playwright.sync_api import expect  # noqa: E402  only once the browser is known to be there

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def rec_server(tmp_path_factory, serve):
    work = tmp_path_factory.mktemp("recommend")
    rows = [(f"u{u}", f"i{(u * 3 + j) % 20}", j) for u in range(30) for j in range(6)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).to_csv(work / "inter.csv", index=False)
    titles = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(20)], "title": [f"Film {i}" for i in range(20)]}
    )
    titles.to_csv(work / "items.csv", index=False)
    config = {
        "task": "recommendation",
        "data": {
            "source": "inter.csv",
            "user": "user_id",
            "item": "item_id",
            "timestamp": "ts",
            "items": "items.csv",
        },
        "model": {"name": "mf", "dim": 8},
        "train": {"epochs": 2},
    }
    (work / "rec.yaml").write_text(yaml.safe_dump(config))
    return serve(train(work, work / "rec.yaml"))


def test_the_page_shows_history_and_recommendations_and_stores_a_like(page, rec_server):
    page.goto(rec_server.url)
    expect(page.locator("#recommend-area")).to_be_visible()
    expect(page.locator("#predict-form")).to_be_hidden()
    expect(page.locator("#model-card")).to_contain_text("Items")  # counts, not every item as a label
    expect(page.locator("#model-card")).to_contain_text("Test NDCG@10")
    page.fill("#recommend-user", "u2")
    page.fill("#recommend-k", "5")
    page.click("#recommend")
    expect(page.locator("#recommend-items li")).to_have_count(5)
    expect(page.locator("#recommend-history li").first).to_contain_text("Film")
    first = page.locator("#recommend-items li").first
    liked = first.inner_text().split(" · ")[0]
    first.get_by_role("button", name="Like").click()
    expect(page.locator("#like-status")).to_contain_text(f"u2 likes {liked}")
    stored = httpx.get(f"{rec_server.url}/v1/feedback").json()["feedback"]
    assert stored[0]["input"] == {"row": {"user": "u2", "item": liked}} and stored[0]["label"] == "like"
    page.fill("#recommend-user", "someone new")
    page.click("#recommend")
    expect(page.locator("#recommend-note")).to_contain_text("cold start")
