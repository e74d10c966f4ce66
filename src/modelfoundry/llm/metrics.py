"""Scores of generated answers against reference answers: exact match after SQuAD's normalisation
(Rajpurkar et al. 2016: lower case, no punctuation, no articles, single spaces) and ROUGE-L (Lin 2004:
the F-measure of the longest common subsequence of words, as the `rouge-score` package's rougeL F1)."""

from __future__ import annotations

import re
import string

_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased alphanumeric words."""
    a, b = _words(prediction), _words(reference)
    if not a or not b:
        return float(a == b)
    lcs = _lcs(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean exact match and ROUGE-L of paired answers, and how many there were."""
    n = len(references)
    if n == 0:
        return {"exact_match": 0.0, "rouge_l": 0.0, "examples": 0}
    return {
        "exact_match": sum(map(exact_match, predictions, references)) / n,
        "rouge_l": sum(map(rouge_l, predictions, references)) / n,
        "examples": n,
    }
