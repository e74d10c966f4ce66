"""Full-ranking metrics of recommendations: every item the user has not interacted with in training
is a candidate, none is sampled away (sampled metrics mislead: Krichene & Rendle 2020).

Per batch of users: the scores (B, I) with the excluded items set to -inf, one `topk`, and the hits
looked up in a dense (B, I) mask of the relevant items. Keys: `recall@K`, `ndcg@K`, `hitrate@K`,
`coverage@K`, `popularity_bias@K` for each K, then `mrr`, `users` and `relevant`.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class ItemSets:
    """A set of item indices per user as CSR (offsets (U+1,), items (nnz,)); rows in the users' order."""

    def __init__(self, offsets: np.ndarray, items: np.ndarray):
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int64)

    @classmethod
    def from_pairs(cls, rows: np.ndarray, items: np.ndarray, n_rows: int) -> ItemSets:
        order = np.lexsort((items, rows))
        counts = np.bincount(rows, minlength=n_rows)
        return cls(np.concatenate([[0], np.cumsum(counts)]), np.asarray(items)[order])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.items[self.offsets[i] : self.offsets[i + 1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> ItemSets:
        parts = [self.row(int(r)) for r in rows]
        counts = np.array([len(p) for p in parts], dtype=np.int64)
        items = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return ItemSets(np.concatenate([[0], np.cumsum(counts)]), items)

    def mask(self, start: int, stop: int, n_items: int, device=None) -> torch.Tensor:
        """(stop - start, n_items) bool: True where row r holds the item."""
        lo, hi = self.offsets[start], self.offsets[stop]
        rows = np.repeat(np.arange(stop - start), np.diff(self.offsets[start : stop + 1]))
        out = torch.zeros(stop - start, n_items, dtype=torch.bool, device=device)
        out[torch.as_tensor(rows), torch.as_tensor(self.items[lo:hi])] = True
        return out


def percentiles(popularity: np.ndarray) -> torch.Tensor:
    """Each item's popularity as a percentile in [0, 1] (1 = the most interacted with in training)."""
    ranks = np.argsort(np.argsort(popularity, kind="stable"), kind="stable")
    return torch.as_tensor(ranks / max(len(popularity) - 1, 1), dtype=torch.float32)


@torch.inference_mode()
def ranking_metrics(
    scores: torch.Tensor | np.ndarray,
    relevant: ItemSets,
    exclude: ItemSets,
    ks: list[int],
    popularity: np.ndarray,
    batch: int = 1024,
    with_loss: bool = False,
) -> dict:
    """Ranking metrics of scores (U, I) against each user's relevant items, over all items but the
    excluded ones. Users without a relevant item are skipped. `with_loss`: also `loss`, the softmax
    cross-entropy of the relevant items over the candidates (what early stopping on small data reads)."""
    scores = torch.as_tensor(scores)
    n_users, n_items = scores.shape
    ks = sorted(set(ks))
    top = min(max(ks), n_items)
    discounts = 1.0 / torch.log2(torch.arange(2, top + 2, dtype=torch.float64))
    pop = percentiles(popularity)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hitrate", "popularity_bias")}
    recommended = {k: torch.zeros(n_items, dtype=torch.bool) for k in ks}
    mrr, loss, users, relevant_total = 0.0, 0.0, 0, 0
    for start in range(0, n_users, batch):
        stop = min(start + batch, n_users)
        s = scores[start:stop].float().cpu().clone()  # (B, I)
        s[exclude.mask(start, stop, n_items)] = -math.inf
        rel = relevant.mask(start, stop, n_items) & ~torch.isinf(s)  # (B, I) relevant candidates
        n_rel = rel.sum(1)
        keep = n_rel > 0
        if not keep.any():
            continue
        s, rel, n_rel = s[keep], rel[keep], n_rel[keep]
        order = s.topk(top, dim=1).indices  # (B, top)
        hits = rel.gather(1, order).double()  # (B, top)
        ideal = torch.cumsum(discounts, 0)  # IDCG of 1..top relevant items
        for k in ks:
            kk = min(k, top)
            h = hits[:, :kk]
            sums[f"recall@{k}"] += (h.sum(1) / n_rel).sum().item()
            dcg = (h * discounts[:kk]).sum(1)
            sums[f"ndcg@{k}"] += (dcg / ideal[(n_rel.clamp(max=kk) - 1)]).sum().item()
            sums[f"hitrate@{k}"] += (h.sum(1) > 0).double().sum().item()
            sums[f"popularity_bias@{k}"] += pop[order[:, :kk]].double().mean(1).sum().item()
            recommended[k][order[:, :kk].reshape(-1)] = True
        best = torch.where(rel, s, torch.tensor(-math.inf)).max(1).values  # the best-ranked relevant item
        mrr += (1.0 / ((s > best[:, None]).sum(1) + 1).double()).sum().item()
        if with_loss:
            log_softmax = torch.log_softmax(s.double(), 1)
            loss += (-torch.where(rel, log_softmax, 0.0).sum(1) / n_rel).sum().item()
        users += int(keep.sum())
        relevant_total += int(n_rel.sum())
    out = {key: value / max(users, 1) for key, value in sums.items()}
    for k in ks:
        out[f"coverage@{k}"] = float(recommended[k].sum()) / n_items
    out.update(mrr=mrr / max(users, 1), users=users, relevant=relevant_total)
    if with_loss:
        out["loss"] = loss / max(users, 1)
    return out


def popularity_scores(popularity: np.ndarray, n_users: int) -> torch.Tensor:
    """The baseline's scores (U, I): every user gets the items most interacted with in training."""
    return torch.as_tensor(popularity, dtype=torch.float32).expand(n_users, -1)
