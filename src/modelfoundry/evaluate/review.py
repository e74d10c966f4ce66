"""What a reviewer would say of a run's numbers before trusting them: notes shown at the top of
report.html and kept in metrics.json under `warnings`.

Four checks, from the metrics alone (any task; a check whose numbers a task lacks is skipped):
the validation and test scores disagree (a small or unlike validation split, which early stopping chose
on), the best epoch came in the first 15% of training, a class has fewer than 10 test examples, and
the test set has fewer than 100.
"""

from __future__ import annotations

EARLY_SHARE = 0.15  # a best epoch within this share of the epochs run
FEW_CLASS_EXAMPLES = 10
FEW_TEST_EXAMPLES = 100


def review(metrics: dict, task) -> list[str]:
    """The warnings on a run's (or an evaluation's) metrics: {"val", "test", "best_epoch", "epochs_run"},
    any of them missing. `task.review_gap` = (metric, largest gap that passes unremarked)."""
    warnings = []
    val, test = metrics.get("val") or {}, metrics.get("test") or {}
    name, allowed = task.review_gap
    if val.get(name) is not None and test.get(name) is not None and abs(val[name] - test[name]) > allowed:
        warnings.append(
            f"validation {name} {val[name]:.3f} ({val.get('n', '?')} examples) against test {name} "
            f"{test[name]:.3f} ({test.get('n', '?')} examples): a gap of {abs(val[name] - test[name]):.3f}. "
            "The validation split, which early stopping chose the epoch on, is too small or unlike the test "
            "split; trust the test number, and give validation more examples (data.split.val)."
            + (
                " (The test number is of the model trained again on train+val, train.refit; the validation "
                "number is the first model's, trained on the training split alone.)"
                if metrics.get("refit")
                else ""
            )
        )
    best, epochs = metrics.get("best_epoch"), metrics.get("epochs_run")
    if best and epochs and best <= EARLY_SHARE * epochs:
        warnings.append(
            f"the best validation score came at epoch {best} of {epochs}, in the first "
            f"{EARLY_SHARE:.0%} of training: the later epochs only made it worse (overfitting, or a learning "
            "rate too high). Try a lower train.lr, more dropout or weight decay, or fewer train.epochs."
        )
    few = {
        label: scores["support"]
        for label, scores in (test.get("per_class") or {}).items()
        if scores.get("support", FEW_CLASS_EXAMPLES) < FEW_CLASS_EXAMPLES
    }
    if few:
        listed = ", ".join(f"{label!r} ({count})" for label, count in list(few.items())[:10])
        more = f" and {len(few) - 10} more" if len(few) > 10 else ""
        warnings.append(
            f"{'class' if len(few) == 1 else 'classes'} {listed}{more} "
            f"{'has' if len(few) == 1 else 'have'} fewer than {FEW_CLASS_EXAMPLES} test examples: "
            "their precision, recall and F1 rest on too few to mean much. Gather more examples of them, or "
            "test on more of the data (data.split.test)."
        )
    n = test.get("n")
    if n is not None and n < FEW_TEST_EXAMPLES:
        warnings.append(
            f"the test set has only {n} examples (fewer than {FEW_TEST_EXAMPLES}): each is "
            f"{100 / max(n, 1):.1f}% of a score, so runs that differ by a few points may not differ at all. "
            "Test on more data (data.split.test, or `foundry evaluate --data`)."
        )
    return warnings
