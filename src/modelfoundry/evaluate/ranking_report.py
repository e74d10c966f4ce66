"""The report sections of a recommendation model's test split: its ranking metrics beside the popularity
baseline's, the same per bucket of user activity (how many items each user had before), and a few
example users with their history and recommendations (titles when data.items names them)."""

from __future__ import annotations

import html
import itertools

import numpy as np
import torch

from modelfoundry.evaluate.ranking import popularity_scores, ranking_metrics

BUCKETS = (1, 6, 21, 51, 101)  # lower edges of the activity buckets: 1-5, 6-20, 21-50, 51-100, 101+
EXAMPLES = 5
HISTORY = 8  # items of each example user's history shown


def sections(scores: np.ndarray, targets, labels: list[str], ks: list[int]) -> list[tuple[str, str, str]]:
    scores = torch.as_tensor(scores)
    return [
        ("vs-popularity", "Ranking metrics against popularity", _versus(scores, targets, ks)),
        ("activity", "By user activity", _buckets(scores, targets, ks[0])),
        ("examples", "Example users", _examples(scores, targets, labels, ks[0])),
    ]


def _metrics(scores, targets, rows, ks) -> tuple[dict, dict]:
    relevant, exclude = targets.relevant.take(rows), targets.exclude.take(rows)
    model = ranking_metrics(scores[rows], relevant, exclude, ks, targets.popularity)
    baseline = ranking_metrics(
        popularity_scores(targets.popularity, len(rows)), relevant, exclude, ks, targets.popularity
    )
    return model, baseline


def _versus(scores, targets, ks) -> str:
    model, baseline = _metrics(scores, targets, np.arange(len(scores)), ks)
    keys = [f"{m}@{k}" for k in ks for m in ("ndcg", "recall", "hitrate", "coverage", "popularity_bias")]
    rows = "".join(
        f"<tr><td>{key}</td><td>{model[key]:.4f}</td><td>{baseline[key]:.4f}</td></tr>"
        for key in [*keys, "mrr"]
    )
    return (
        f"<p>{model['users']:,} test users, each ranking every item they did not interact with in training "
        "or validation (full ranking). Popularity recommends the items most interacted with in training to "
        "everyone; popularity_bias is the mean popularity percentile of what is recommended (1 = only the "
        "most popular).</p>"
        f"<table><tr><th>metric</th><th>model</th><th>popularity</th></tr>{rows}</table>"
    )


def _buckets(scores, targets, k: int) -> str:
    history = targets.exclude.sizes()
    edges = [*BUCKETS, np.inf]
    rows = ""
    for low, high in itertools.pairwise(edges):
        members = np.flatnonzero((history >= low) & (history < high))
        if len(members) == 0:
            continue
        model, baseline = _metrics(scores, targets, members, [k])
        shown = f"{low}+" if high == np.inf else f"{low}-{int(high) - 1}"
        rows += (
            f"<tr><td>{shown}</td><td>{len(members):,}</td><td>{model[f'ndcg@{k}']:.4f}</td>"
            f"<td>{baseline[f'ndcg@{k}']:.4f}</td><td>{model[f'recall@{k}']:.4f}</td></tr>"
        )
    return (
        "<p>Test users grouped by the number of items they interacted with before: where the model beats "
        "popularity, and where it does not yet know a user well enough.</p>"
        f"<table><tr><th>items before</th><th>users</th><th>ndcg@{k}</th><th>ndcg@{k} of popularity</th>"
        f"<th>recall@{k}</th></tr>{rows}</table>"
    )


def _examples(scores, targets, labels: list[str], k: int) -> str:
    titles = targets.titles

    def name(column: int) -> str:
        title = titles[column] if titles and titles[column] else None
        return html.escape(f"{labels[column]} ({title})" if title else labels[column])

    out = ""
    for row in np.linspace(0, len(scores) - 1, min(EXAMPLES, len(scores))).astype(int):
        seen = targets.exclude.row(row)
        ranked = scores[row].float().clone()
        ranked[torch.as_tensor(seen)] = -torch.inf
        top = ranked.topk(min(k, len(labels))).indices.tolist()
        held = set(targets.relevant.row(row).tolist())
        recommended = ", ".join(f"<b>{name(i)}</b>" if i in held else name(i) for i in top)
        user = targets.users[row] if targets.users else str(row)
        out += (
            f"<h3>user {html.escape(str(user))}</h3><p>history ({len(seen)} items; up to {HISTORY} shown): "
            f"{', '.join(name(i) for i in seen[:HISTORY])}</p>"
            f"<p>held out: {', '.join(name(i) for i in held)}</p>"
            f"<p>top {len(top)}: {recommended}</p>"
        )
    return "<p>Recommendations in bold are the user's held-out (test) items.</p>" + out
