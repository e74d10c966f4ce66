"""`foundry tune`: the search space (parsing, checks against the real config, sampling into a config), the
per-epoch hook that feeds the pruner, trials that prune and studies that resume, and the best config."""

from __future__ import annotations

import copy
import io

import optuna
import pytest
import torch
import yaml
from rich.console import Console

from modelfoundry.config import load_config
from modelfoundry.errors import UserError
from modelfoundry.tune import search
from modelfoundry.tune.space import apply_values, parse_space, sample

# Iris, a 4-unit MLP and 3 epochs: a trial takes a few hundredths of a second.
IRIS = {
    "task": "tabular_classification",
    "name": "iris-test",
    "data": {"source": "builtin:iris"},
    "model": {"name": "mlp", "hidden": [4]},
    "train": {"epochs": 3, "batch_size": 16, "lr": 0.05, "precision": "fp32", "device": "cpu"},
}


def with_space(space: dict, base: dict = IRIS, **tune) -> dict:
    raw = copy.deepcopy(base)
    raw["tune"] = {"space": space, **tune}
    return raw


def parse(raw: dict):
    cfg, _ = load_config(raw)
    return parse_space(cfg, raw, "tune.yaml")


def space_error(space: dict, base: dict = IRIS) -> str:
    with pytest.raises(UserError) as info:
        parse(with_space(space, base))
    return str(info.value)


pytestmark = pytest.mark.filterwarnings("ignore:.*(duplicate|leakage):UserWarning")  # iris repeats 1 flower


def quiet() -> Console:
    return Console(file=io.StringIO())


# ---- the space ---------------------------------------------------------------------------------


def test_every_kind_of_spec_becomes_a_dimension():
    dims = {
        d.key: d
        for d in parse(
            with_space(
                {
                    "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                    "train.weight_decay": {"uniform": [0, 0.01], "step": 0.001},
                    "train.batch_size": {"int": [16, 128], "step": 16},
                    "data.split.seed": {"int": [0, 100], "log": False},
                    "model.hidden": {"choice": [[8], [16, 16]]},
                    "train.optimizer": {"choice": ["adam", "sgd"]},
                }
            )
        )
    }
    assert (dims["train.lr"].kind, dims["train.lr"].low, dims["train.lr"].high) == ("loguniform", 1e-4, 1e-2)
    assert dims["train.weight_decay"].step == 0.001
    assert (dims["train.batch_size"].low, dims["train.batch_size"].high, dims["train.batch_size"].step) == (
        16,
        128,
        16,
    )
    assert dims["model.hidden"].choices == ([8], [16, 16])
    assert dims["train.optimizer"].describe() == "choice of adam, sgd"


def test_numbers_written_without_a_dot_are_read_as_numbers():
    # PyYAML reads `1e-4` (no dot) as the string '1e-4'; pydantic accepts it for train.lr, so the space
    # does too.
    raw = with_space(yaml.safe_load("train.lr: {loguniform: [1e-4, 1e-2]}"))
    assert isinstance(raw["tune"]["space"]["train.lr"]["loguniform"][0], str)
    (dim,) = parse(raw)
    assert (dim.low, dim.high) == (1e-4, 1e-2)


def test_every_problem_in_the_space_is_reported_at_once_with_key_value_and_fix():
    message = space_error(
        {
            "train.lrr": {"loguniform": [1.0e-4, 1.0e-2]},  # unknown key
            "train.lr": {"loguniform": [1.0e-2, 1.0e-4]},  # inverted range
            "train.weight_decay": {"uniform": [0.01, 0.01]},  # empty range
            "train.momentum": {"logunifrom": [0.5, 0.9]},  # unknown kind
            "train.label_smoothing": {"uniform": [0, 1.0]},  # 1.0 is not a valid label_smoothing
            "model.widht": {"choice": [16, 32]},  # not an option of mlp
            "train.batch_size": {"int": [16, 100], "step": 16},  # step does not divide the range
            "train.epochs": {"uniform": [1, 5]},  # an int key needs int
            "train.warmup": {"choice": []},  # empty choice
            "data.split": {"choice": [0.1]},  # a section, not a key
            "train.l1": {"loguniform": [0, 0.1]},  # log scale from 0
        }
    )
    assert message.startswith("tune.yaml: 11 problem(s) in tune.space:")
    expected = [
        ("tune.space.train.lrr:", "not a config key", "Did you mean 'train.lr'"),
        ("tune.space.train.lr:", "[0.01, 0.0001] is an empty range", "[0.0001, 0.01]"),
        ("tune.space.train.weight_decay:", "[0.01, 0.01] is an empty range", "Set train.weight_decay: 0.01"),
        ("tune.space.train.momentum:", "unknown spec 'logunifrom'", "Did you mean 'loguniform'"),
        ("tune.space.train.label_smoothing:", "high end 1.0", "less than 1"),
        ("tune.space.model.widht:", "not an option of model 'mlp'", "Its options:", "hidden"),
        ("tune.space.train.batch_size:", "step 16", "multiple of the step"),
        ("tune.space.train.epochs:", "whole numbers", "{int: [1, 5]}"),
        ("tune.space.train.warmup:", "is empty"),
        ("tune.space.data.split:", "is a section", "data.split.val"),
        ("tune.space.train.l1:", "above 0", "use uniform"),
    ]
    lines = message.splitlines()[1:]
    for line, phrases in zip(lines, expected, strict=True):
        assert all(p in line for p in phrases), (line, phrases)


def test_model_options_are_checked_against_the_family_and_model_name_choices():
    cnn = {
        **IRIS,
        "task": "image_classification",
        "data": {"source": "builtin:digits"},
        "model": {"name": "cnn", "width": 8},
    }
    assert [d.key for d in parse(with_space({"model.width": {"choice": [8, 16]}}, cnn))] == ["model.width"]
    message = space_error(
        {"model.width": {"choice": [8, 16]}, "model.name": {"choice": ["mlp", "cnnn"]}}, cnn
    )
    assert "model.width: not an option of model 'mlp' or 'cnnn'" not in message  # unknown family: not judged
    assert "choice 'cnnn' is not a model. Did you mean 'cnn'?" in message


def test_an_empty_space_says_what_to_write():
    message = space_error({})
    assert "tune.space is empty" in message and "train.lr: {loguniform: [1.0e-4, 1.0e-2]}" in message


def test_direction_that_contradicts_the_metric_is_a_config_error():
    with pytest.raises(UserError, match="tune.direction: maximize contradicts metric val_loss"):
        load_config(with_space({}, metric="val_loss", direction="maximize"))


def test_a_run_keeps_no_tune_section_in_its_saved_config():
    from modelfoundry.config import config_to_dict

    cfg, _ = load_config(with_space({"train.lr": {"loguniform": [1e-3, 1e-1]}}))
    assert cfg.tune.space and "tune" not in config_to_dict(cfg)


def test_sampled_values_go_into_the_config_dict_as_the_config_takes_them():
    raw = with_space(
        {
            "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
            "model.hidden": {"choice": [[8], [16, 16]]},
            "train.batch_size": {"int": [16, 64], "step": 16},
        }
    )
    dims = parse(raw)
    # Optuna keeps list choices as JSON text; the config gets the list back.
    trial = optuna.trial.FixedTrial({"train.lr": 0.003, "model.hidden": "[16, 16]", "train.batch_size": 32})
    values = sample(trial, dims)
    assert values == {"train.lr": 0.003, "model.hidden": [16, 16], "train.batch_size": 32}
    cfg, _ = load_config(apply_values(raw, values))
    assert (cfg.train.lr, cfg.model.model_extra["hidden"], cfg.train.batch_size) == (0.003, [16, 16], 32)
    assert raw["model"]["hidden"] == [4], "the original config dict is left alone"


@pytest.mark.parametrize(
    "text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("45", 45)]
)
def test_timeout_durations(text, seconds):
    assert search.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "0s"])
def test_bad_timeout_durations_say_what_to_write(text):
    with pytest.raises(UserError, match="90s, 10m, 1h"):
        search.parse_duration(text)


def test_worker_without_storage_is_refused():
    with pytest.raises(UserError, match="--worker .* needs --storage"):
        search.open_study(with_space({"train.lr": {"loguniform": [1e-3, 1e-1]}}), worker=True)


# ---- the on_epoch hook of fit ------------------------------------------------------------------


def test_fit_calls_on_epoch_with_each_finished_record_and_stops_when_it_raises():
    from modelfoundry.config import TrainConfig
    from modelfoundry.data.prepare import ArrayData
    from modelfoundry.models.registry import build_model
    from modelfoundry.training.loop import fit

    g = torch.Generator().manual_seed(0)
    data = ArrayData(torch.randn(64, 2, generator=g), torch.arange(64) % 2)
    seen = []

    def on_epoch(record):
        seen.append(dict(record))
        if record["epoch"] == 2:
            raise optuna.TrialPruned()

    model = build_model("mlp", (2,), 2, hidden=[4])
    with pytest.raises(optuna.TrialPruned):
        fit(
            model,
            data,
            data,
            TrainConfig(epochs=5, precision="fp32"),
            device=torch.device("cpu"),
            console=quiet(),
            on_epoch=on_epoch,
        )
    assert [r["epoch"] for r in seen] == [1, 2]
    assert {"train_loss", "val_loss", "val_accuracy", "val_f1_macro", "lr", "seconds"} <= set(seen[0])


# ---- studies -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> str:
    """One SQLite file for the module (making one costs a second of Optuna's schema setup); a study per
    test."""
    return f"sqlite:///{tmp_path_factory.mktemp('studies') / 'tune.db'}"


@pytest.fixture
def open_study(storage, request):
    """Open (or reopen) this test's own study: `open_study(raw)`."""
    name = request.node.name
    return lambda raw, **kwargs: search.open_study(raw, storage=storage, study_name=name, **kwargs)


def test_a_trial_far_below_the_median_is_pruned_after_the_warmup_epochs(open_study):
    raw = with_space(
        {"train.lr": {"loguniform": [1e-6, 1e-1]}}, pruner_startup_trials=2, pruner_warmup_epochs=1
    )
    spec = open_study(raw)
    for lr in (0.05, 0.08, 1e-6):  # the last one barely moves: it must be stopped early
        spec.study.enqueue_trial({"train.lr": lr})
    assert search.optimize(spec, 3, None, quiet()) == 3
    trials = spec.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert [t.user_attrs["epochs"] for t in trials] == [3, 3, 2]  # judged from epoch 2 (warm-up: 1 epoch)
    assert trials[0].value == max(trials[0].intermediate_values.values())  # a trial scores its best epoch


def test_without_a_pruner_every_trial_runs_every_epoch(open_study):
    raw = with_space({"train.lr": {"loguniform": [1e-6, 1e-1]}}, pruner="none", pruner_startup_trials=0)
    spec = open_study(raw)
    for lr in (0.05, 1e-6):
        spec.study.enqueue_trial({"train.lr": lr})
    search.optimize(spec, 2, None, quiet())
    assert [t.user_attrs["epochs"] for t in spec.study.trials] == [3, 3]


def test_an_interrupted_study_resumes_with_new_proposals(open_study, monkeypatch):
    raw = with_space(
        {"train.lr": {"loguniform": [1e-3, 1e-1]}, "train.batch_size": {"int": [16, 48], "step": 16}}
    )
    spec = open_study(raw)
    real_fit, calls = search.TrialRunner.__call__, []

    def interrupted_on_the_second_trial(self, trial):
        calls.append(trial.number)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(self, trial)

    monkeypatch.setattr(search.TrialRunner, "__call__", interrupted_on_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        search.optimize(spec, 3, None, quiet())
    monkeypatch.undo()
    resumed = open_study(raw)  # a new process: the same study from the storage
    assert [t.state.name for t in resumed.study.trials] == ["COMPLETE", "FAIL"]
    search.optimize(resumed, 2, None, quiet())
    trials = resumed.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    proposals = [tuple(t.params.items()) for t in trials if t.state.name == "COMPLETE"]
    assert len(set(proposals)) == 3, "a resumed study must not replay the proposals it started with"


@pytest.mark.parametrize(
    "space, values, prepared",
    [
        ({"train.lr": {"loguniform": [1e-3, 1e-1]}}, [{"train.lr": v} for v in (0.01, 0.02, 0.03)], 1),
        ({"data.split.seed": {"choice": [0, 1]}}, [{"data.split.seed": v} for v in (0, 0, 1)], 2),
    ],
)
def test_data_is_prepared_once_unless_trials_change_data_keys(
    open_study, monkeypatch, space, values, prepared
):
    from modelfoundry.data import prepare as module

    calls, real = [], module.prepare
    monkeypatch.setattr(
        module, "prepare", lambda cfg, base: calls.append(cfg.data.split.seed) or real(cfg, base)
    )
    spec = open_study(with_space(space, pruner="none"))
    for value in values:
        spec.study.enqueue_trial(value)
    search.optimize(spec, len(values), None, quiet())
    assert len(calls) == prepared


def test_a_trial_that_breaks_fails_alone_and_says_why(open_study, monkeypatch):
    from modelfoundry.training import loop

    real = loop.fit

    def breaks_on_batch_104(model, train, val, cfg, **kwargs):  # a training error inside one trial
        if cfg.batch_size == 104:
            raise ValueError("Expected more than 1 value per channel when training")
        return real(model, train, val, cfg, **kwargs)

    monkeypatch.setattr(loop, "fit", breaks_on_batch_104)
    raw = with_space({"train.batch_size": {"int": [16, 104], "step": 8}})
    spec = open_study(raw)
    for batch_size in (104, 16):
        spec.study.enqueue_trial({"train.batch_size": batch_size})
    console = Console(file=io.StringIO(), width=300)
    search.optimize(spec, 2, None, console)
    failed, finished = spec.study.trials
    assert (failed.state.name, finished.state.name) == ("FAIL", "COMPLETE")
    assert "Expected more than 1 value per channel" in failed.user_attrs["error"]
    assert "failed" in console.file.getvalue() and "ValueError" in console.file.getvalue()


def test_a_study_for_another_metric_is_not_joined(open_study):
    space = {"train.lr": {"loguniform": [1e-3, 1e-1]}}
    open_study(with_space(space))
    with pytest.raises(UserError, match="optimises val_accuracy .* --study NAME"):
        open_study(with_space(space, metric="val_loss"))


def test_best_config_has_the_best_values_and_no_tune_section_and_the_report_its_plots(open_study, tmp_path):
    raw = with_space({"train.lr": {"loguniform": [1e-4, 1e-1]}, "model.hidden": {"choice": [[4], [8, 8]]}})
    spec = open_study(raw)
    spec.study.enqueue_trial({"train.lr": 1e-4, "model.hidden": "[4]"})
    spec.study.enqueue_trial({"train.lr": 0.08, "model.hidden": "[8, 8]"})
    search.optimize(spec, 2, None, quiet())
    assert spec.study.best_trial.number == 1
    result = search.finish(spec, tmp_path / "out", train_best=False, console=quiet())
    best = yaml.safe_load(result.best_config.read_text())
    assert "tune" not in best
    assert (best["train"]["lr"], best["model"]["hidden"]) == (0.08, [8, 8])
    cfg, _ = load_config(result.best_config)
    assert cfg.name == f"{spec.study.study_name}-best" and cfg.tune is None
    page = result.report.read_text()
    assert page.count("<img") == 3  # history, per-trial curves, importances
    assert "train.lr" in page and result.epochs_total == 6
