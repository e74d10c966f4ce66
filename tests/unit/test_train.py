"""Training: schedules, optimizers, the loop (early stopping, accumulation, clipping, resume) and
checkpoints."""

from __future__ import annotations

import io
import math
import threading
from itertools import pairwise

import pytest
import torch
from rich.console import Console

from modelfoundry.config import TrainConfig
from modelfoundry.data.prepare import ArrayData
from modelfoundry.errors import UserError
from modelfoundry.models.registry import build_model
from modelfoundry.tasks.base import Objective
from modelfoundry.training.checkpoint import CheckpointWriter, load_checkpoint
from modelfoundry.training.loop import CHECKPOINT, fit
from modelfoundry.training.optim import build_optimizer, build_scheduler, lr_factor

CPU = torch.device("cpu")


def quiet() -> Console:
    return Console(file=io.StringIO())


def train_cfg(**overrides) -> TrainConfig:
    # fp32: "auto" would time bf16 on this CPU and could pick it, making results machine-dependent
    return TrainConfig(
        **{"epochs": 3, "batch_size": 16, "lr": 0.05, "precision": "fp32", "device": "cpu", **overrides}
    )


def blobs(n: int, seed: int, noise: float = 0.6) -> ArrayData:
    """Two Gaussian blobs in 2-D around (-1, -1) and (1, 1); label = which blob."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 2
    centres = targets[:, None].float() * 2 - 1
    return ArrayData(centres + noise * torch.randn(n, 2, generator=g), targets)


TRAIN, VAL = blobs(128, seed=0), blobs(64, seed=1)


def tiny_mlp(seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", (2,), 2, **{"hidden": [8], **options})


def run(cfg: TrainConfig, model=None, **kwargs):
    model = model if model is not None else tiny_mlp()
    result = fit(model, TRAIN, kwargs.pop("val", VAL), cfg, device=CPU, console=quiet(), **kwargs)
    return model, result


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------- learning-rate schedules


def test_warmup_rises_linearly_to_one():
    cfg = train_cfg(warmup=0.2)
    factors = [lr_factor(step, cfg, total_steps=100, steps_per_epoch=10) for step in range(25)]
    assert factors[0] == pytest.approx(1 / 20)
    steps = [b - a for a, b in pairwise(factors[:20])]
    assert steps == pytest.approx([1 / 20] * 19)
    assert factors[19:] == [1.0] * 6


def test_cosine_decays_from_one_to_near_zero():
    cfg = train_cfg(schedule="cosine")
    factors = [lr_factor(step, cfg, total_steps=100, steps_per_epoch=10) for step in range(100)]
    assert factors[0] == 1.0
    assert factors[50] == pytest.approx(0.5)
    assert factors[-1] < 0.01
    assert all(b <= a for a, b in pairwise(factors))


def test_cosine_after_warmup_starts_at_one():
    cfg = train_cfg(schedule="cosine", warmup=0.1)
    assert lr_factor(9, cfg, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, cfg, 100, 10) == pytest.approx(1.0)
    assert lr_factor(99, cfg, 100, 10) < 0.01


def test_step_schedule_drops_by_gamma_every_step_size_epochs():
    cfg = train_cfg(schedule="step", step_size=2, gamma=0.5)
    per_epoch = [lr_factor(epoch * 10, cfg, total_steps=60, steps_per_epoch=10) for epoch in range(6)]
    assert per_epoch == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    assert lr_factor(19, cfg, 60, 10) == 1.0  # last step of epoch 2 still at the full lr


def test_constant_schedule_is_one():
    cfg = train_cfg()
    assert {lr_factor(step, cfg, 50, 5) for step in range(50)} == {1.0}


def lrs_seen(cfg, steps_per_epoch: int) -> list[float]:
    """The lr of every optimizer step of a run, as the scheduler sets it."""
    optimizer = build_optimizer(tiny_mlp(), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=steps_per_epoch)
    seen = []
    for _ in range(cfg.epochs * steps_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_scheduler_drives_the_optimizer_lr():
    seen = lrs_seen(train_cfg(schedule="step", step_size=1, gamma=0.1, lr=1.0, epochs=3), steps_per_epoch=2)
    assert seen == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_onecycle_peaks_at_lr_and_ends_far_below():
    seen = lrs_seen(train_cfg(schedule="onecycle", lr=0.5, epochs=2, optimizer="sgd"), steps_per_epoch=10)
    assert max(seen) == pytest.approx(0.5)
    assert seen[0] < 0.1 and seen[-1] < 0.01


# ----------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize(
    "name, cls",
    [
        ("sgd", torch.optim.SGD),
        ("adagrad", torch.optim.Adagrad),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
    ],
)
def test_each_optimizer_name_builds_its_torch_class(name, cls):
    optimizer = build_optimizer(tiny_mlp(), train_cfg(optimizer=name, lr=0.02))
    assert type(optimizer) is cls
    assert all(group["lr"] == 0.02 for group in optimizer.param_groups)


def test_sgd_momentum_and_nesterov_pass_through():
    optimizer = build_optimizer(tiny_mlp(), train_cfg(optimizer="sgd", momentum=0.8, nesterov=True))
    assert optimizer.defaults["momentum"] == 0.8 and optimizer.defaults["nesterov"] is True
    plain = build_optimizer(tiny_mlp(), train_cfg(optimizer="sgd", momentum=0.8))
    assert plain.defaults["nesterov"] is False


def test_nesterov_without_momentum_does_not_crash():
    optimizer = build_optimizer(tiny_mlp(), train_cfg(optimizer="sgd", momentum=0.0, nesterov=True))
    assert optimizer.defaults["nesterov"] is False


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_weight_decay_only_on_matrices(name):
    model = tiny_mlp()
    optimizer = build_optimizer(model, train_cfg(optimizer=name, weight_decay=0.01))
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for p in model.parameters():
        assert id(p) in (decay if p.ndim >= 2 else no_decay)
    assert decay and no_decay
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_weight_decay_shrinks_weights_but_not_biases():
    # With zero gradients, only the decay moves a parameter.
    model = tiny_mlp(batch_norm=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, train_cfg(optimizer="sgd", momentum=0.0, lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        expected = before[name] * (0.95 if p.ndim >= 2 else 1.0)
        assert torch.allclose(p, expected), name


# ----------------------------------------------------------------------------- the loop


def test_fit_learns_two_blobs():
    _model, result = run(train_cfg(epochs=3))
    assert len(result.history) == 3
    assert result.history[-1]["val_accuracy"] >= 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert set(result.history[0]) >= {"epoch", "train_loss", "val_loss", "val_accuracy", "val_f1_macro", "lr"}
    assert result.precision == "fp32" and not result.stopped_early


def test_validation_metrics_agree_with_scikit_learn():
    from sklearn.metrics import f1_score, log_loss

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    m = Objective().metrics(logits, targets)
    predicted = logits.argmax(1)
    assert m["val_accuracy"] == pytest.approx((predicted == targets).float().mean().item())
    assert m["val_f1_macro"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert m["val_loss"] == pytest.approx(log_loss(targets, torch.softmax(logits, 1).numpy()), rel=1e-5)


def test_history_lr_is_the_lr_the_epoch_trained_with():
    _, result = run(train_cfg(epochs=3, schedule="step", step_size=1, gamma=0.5))
    assert [r["lr"] for r in result.history] == pytest.approx([0.05, 0.025, 0.0125])


def test_same_seed_gives_identical_history_and_weights():
    model_a, a = run(train_cfg(epochs=2))
    model_b, b = run(train_cfg(epochs=2))
    assert without_timing(a.history) == without_timing(b.history)
    assert_same_weights(model_a, model_b)
    _, c = run(train_cfg(epochs=2, seed=1))
    assert without_timing(c.history) != without_timing(a.history)


def test_early_stopping_stops_and_restores_the_best_epoch():
    # The blobs are separable enough that val accuracy saturates (after a few epochs at this small
    # lr), after which nothing improves.
    model, result = run(train_cfg(epochs=30, lr=0.005, early_stopping_patience=2))
    epochs_run = len(result.history)
    assert result.stopped_early
    assert epochs_run < 30
    assert 1 < result.best_epoch == epochs_run - 2
    accuracies = [r["val_accuracy"] for r in result.history]
    assert accuracies[result.best_epoch - 1] == max(accuracies)
    # The model holds the weights of the best epoch: the same as a run that simply ends there.
    shorter, _ = run(train_cfg(epochs=result.best_epoch, lr=0.005))
    assert_same_weights(model, shorter)
    last, last_result = run(train_cfg(epochs=30, lr=0.005, early_stopping_patience=2, restore_best=False))
    assert last_result.best_epoch == epochs_run
    assert not torch.equal(parameters(last), parameters(model))


def test_early_stopping_on_val_loss_prefers_lower():
    _, result = run(train_cfg(epochs=30, lr=0.02, monitor="val_loss", early_stopping_patience=2))
    losses = [r["val_loss"] for r in result.history]
    assert result.stopped_early
    assert result.best_epoch == losses.index(min(losses)) + 1 == len(losses) - 2


def test_early_stopping_needs_validation_data():
    with pytest.raises(UserError, match="data.split.val"):
        run(train_cfg(early_stopping_patience=2), val=None)


def test_without_validation_the_last_epoch_is_kept():
    _, result = run(train_cfg(epochs=2), val=None)
    assert result.best_epoch == 2
    assert "val_accuracy" not in result.history[0]


def test_grad_accumulation_equals_a_larger_batch():
    # Without batch norm and dropout, summing the gradients of 2 batches of 16 is one batch of 32.
    options = dict(batch_norm=False, dropout=0.0)
    accumulated, a = run(train_cfg(batch_size=16, accumulate=2, epochs=2), tiny_mlp(**options))
    large, b = run(train_cfg(batch_size=32, epochs=2), tiny_mlp(**options))
    plain, _ = run(train_cfg(batch_size=16, epochs=2), tiny_mlp(**options))
    assert torch.allclose(parameters(accumulated), parameters(large), atol=1e-5)
    assert not torch.allclose(parameters(accumulated), parameters(plain), atol=1e-3)
    assert [r["train_loss"] for r in a.history] == pytest.approx(
        [r["train_loss"] for r in b.history], rel=1e-4
    )


def test_grad_clipping_bounds_every_step():
    # Plain SGD moves each step by lr * |clipped gradient| <= lr * grad_clip.
    cfg = train_cfg(optimizer="sgd", momentum=0.0, lr=0.1, grad_clip=1e-3, epochs=1, batch_size=32)
    model = tiny_mlp()
    start = parameters(model).clone()
    run(cfg, model)
    steps = math.ceil(len(TRAIN) / 32)
    moved = (parameters(model) - start).norm().item()
    assert 0 < moved <= steps * 0.1 * 1e-3 * (1 + 1e-4)
    unclipped = tiny_mlp()
    run(train_cfg(optimizer="sgd", momentum=0.0, lr=0.1, epochs=1, batch_size=32), unclipped)
    assert (parameters(unclipped) - start).norm().item() > 10 * moved


def test_l1_penalty_shrinks_the_weights():
    def weight_l1(model):
        return sum(p.abs().sum().item() for p in model.parameters() if p.ndim >= 2)

    plain, _ = run(train_cfg(epochs=2))
    sparse, result = run(train_cfg(epochs=2, l1=0.01))
    assert weight_l1(sparse) < weight_l1(plain)
    assert result.history[-1]["val_accuracy"] >= 0.8


def test_label_smoothing_makes_predictions_less_confident():
    def top_probability(model):
        model.eval()
        with torch.no_grad():
            return torch.softmax(model(VAL.inputs), 1).max(1).values.mean().item()

    sharp, _ = run(train_cfg(epochs=3))
    smooth, _ = run(train_cfg(epochs=3, label_smoothing=0.4))
    assert top_probability(smooth) < top_probability(sharp)


@pytest.mark.parametrize("schedule", ["step", "cosine", "onecycle"])
def test_each_schedule_trains_and_changes_the_lr(schedule):
    _, constant = run(train_cfg(epochs=2))
    _, result = run(train_cfg(epochs=2, schedule=schedule, step_size=1, gamma=0.5))
    lrs = [r["lr"] for r in result.history]
    assert lrs != [r["lr"] for r in constant.history]
    assert lrs[-1] < 0.05
    assert result.history[-1]["val_accuracy"] >= 0.8


def test_each_optimizer_trains():
    for name, lr in (("sgd", 0.1), ("adagrad", 0.1), ("adamw", 0.05)):
        _, result = run(train_cfg(epochs=2, optimizer=name, lr=lr))
        assert result.history[-1]["val_accuracy"] >= 0.8, name


# ----------------------------------------------------------------------------- resume


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    full_model, full = run(train_cfg(epochs=4), checkpoint_dir=tmp_path / "full")
    run(train_cfg(epochs=2), checkpoint_dir=tmp_path / "split")
    assert load_checkpoint(tmp_path / "split" / CHECKPOINT)["epoch"] == 2
    resumed_model, resumed = run(
        train_cfg(epochs=4), tiny_mlp(seed=99), checkpoint_dir=tmp_path / "split", resume=True
    )
    assert without_timing(resumed.history) == without_timing(full.history)
    assert resumed.best_epoch == full.best_epoch
    assert_same_weights(resumed_model, full_model)


class CrashingData(ArrayData):
    """Training data whose epoch `crash_at` (1-based) dies mid-way, like a killed process."""

    def __init__(self, data: ArrayData, crash_at: int):
        super().__init__(data.inputs, data.targets)
        self.crash_at, self.epochs = crash_at, 0

    def batches(self, *args, **kwargs):
        self.epochs += 1
        for i, batch in enumerate(super().batches(*args, **kwargs)):
            if self.epochs == self.crash_at and i == 2:
                raise KeyboardInterrupt
            yield batch


def test_resume_after_a_crash_with_a_cosine_schedule(tmp_path):
    cfg = train_cfg(epochs=4, schedule="cosine", warmup=0.2)
    full_model, full = run(cfg, checkpoint_dir=tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        fit(
            tiny_mlp(),
            CrashingData(TRAIN, crash_at=3),
            VAL,
            cfg,
            device=CPU,
            console=quiet(),
            checkpoint_dir=tmp_path / "crashed",
        )
    for thread in threading.enumerate():  # let the epoch-2 checkpoint finish writing
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(timeout=10)
    assert load_checkpoint(tmp_path / "crashed" / CHECKPOINT)["epoch"] == 2
    resumed_model, resumed = run(cfg, tiny_mlp(seed=5), checkpoint_dir=tmp_path / "crashed", resume=True)
    assert without_timing(resumed.history) == without_timing(full.history)
    assert_same_weights(resumed_model, full_model)


def test_extending_a_onecycle_run_continues_or_says_why(tmp_path):
    run(train_cfg(epochs=2, schedule="onecycle"), checkpoint_dir=tmp_path)
    try:
        _, result = run(train_cfg(epochs=4, schedule="onecycle"), checkpoint_dir=tmp_path, resume=True)
    except UserError as exc:  # either outcome is right: it continues, or it says why not
        assert "epochs" in str(exc)  # noqa: PT017
    else:
        assert len(result.history) == 4


def test_resume_without_a_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--resume: no checkpoint"):
        run(train_cfg(), checkpoint_dir=tmp_path / "empty", resume=True)


def test_checkpoint_after_every_epoch_holds_the_history(tmp_path):
    run(train_cfg(epochs=2), checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "best"}


def test_a_resumed_fit_carries_the_training_time_of_the_processes_before(tmp_path):
    run(train_cfg(epochs=2), checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["train_seconds"] >= sum(r["seconds"] for r in state["history"])
    state["train_seconds"] = 1000.0  # as if the killed process had trained for a long while
    torch.save(state, tmp_path / CHECKPOINT)
    _, resumed = run(train_cfg(epochs=3), checkpoint_dir=tmp_path, resume=True)
    assert resumed.earlier_seconds == 1000.0
    assert load_checkpoint(tmp_path / CHECKPOINT)["train_seconds"] > 1000.0
    _, fresh = run(train_cfg(epochs=1))
    assert fresh.earlier_seconds == 0.0


def test_train_seconds_of_a_resumed_run_count_every_process(tmp_path, monkeypatch):
    """The registry's train_seconds (`runs list`, `runs compare`) of a run resumed after a kill."""
    from modelfoundry.runner import train
    from modelfoundry.store.registry import Registry

    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FOUNDRY_DB", raising=False)
    config = {
        "task": "tabular_classification",
        "data": {"source": "builtin:iris"},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"epochs": 2, "precision": "fp32", "device": "cpu"},
    }
    folder = tmp_path / "run"
    train(config, run_dir=folder, console=quiet())
    state = load_checkpoint(folder / "checkpoints" / CHECKPOINT)
    state["train_seconds"] = 1000.0
    torch.save(state, folder / "checkpoints" / CHECKPOINT)
    config["train"]["epochs"] = 3
    train(config, run_dir=folder, resume=True, console=quiet())
    assert Registry().get("run").train_seconds > 1000.0


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_writer_round_trip_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    writer = CheckpointWriter(path)
    weights = torch.arange(6.0).reshape(2, 3)
    writer.save({"model": {"w": weights}, "epoch": 3, "history": [{"loss": 0.5}]})
    weights += 100  # training goes on while the write happens: the checkpoint keeps the old values
    writer.save({"model": {"w": weights}, "epoch": 4, "history": [{"loss": 0.5}, {"loss": 0.25}]})
    writer.wait()
    state = load_checkpoint(path)
    assert state["epoch"] == 4 and state["history"][-1] == {"loss": 0.25}
    assert torch.equal(state["model"]["w"], torch.arange(6.0).reshape(2, 3) + 100)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_checkpoint_is_a_snapshot_at_save_time(tmp_path):
    writer = CheckpointWriter(tmp_path / "last.pt")
    weights = torch.zeros(3)
    writer.save({"w": weights})
    weights += 1
    writer.wait()
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["w"], torch.zeros(3))


def test_checkpoint_write_errors_surface_on_wait(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    writer = CheckpointWriter(tmp_path / "file" / "last.pt")
    writer.save({"w": torch.zeros(1)})
    with pytest.raises(OSError):  # noqa: PT011  which OSError, and its text, depend on the platform
        writer.wait()
    writer.wait()  # reported once


def test_the_time_budget_stops_training_after_the_epoch_that_passes_it(monkeypatch):
    from modelfoundry.training import loop

    clock = iter(range(0, 10_000, 30))  # every perf_counter call moves 30 s on
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    _, result = run(train_cfg(epochs=50, max_minutes=1.0))
    assert result.stopped_early and len(result.history) < 50
    assert sum(r["seconds"] for r in result.history) >= 60


def test_a_lone_last_example_does_not_break_batch_norm():
    """33 examples in batches of 32 leave one: BatchNorm cannot train on it, so it waits for the next
    epoch's shuffle instead of failing the run (k-fold cross-validation hits such sizes often)."""
    model = tiny_mlp()  # Linear -> BatchNorm -> ...
    odd = blobs(33, seed=2)
    result = fit(model, odd, VAL, train_cfg(batch_size=32, epochs=2), device=CPU, console=quiet())
    assert len(result.history) == 2 and math.isfinite(result.history[-1]["train_loss"])


def test_a_small_model_trains_on_one_thread_and_fit_leaves_torchs_thread_count_as_it_found_it():
    from modelfoundry.training.loop import ONE_THREAD_PARAMETERS, one_thread

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = io.StringIO()
        result = fit(
            tiny_mlp(), TRAIN, VAL, train_cfg(epochs=1), device=CPU, console=Console(file=out, width=200)
        )
        assert torch.get_num_threads() == 2 and result.threads == 1  # 2 -> 8 -> 2 weights: too small to split
        assert "chosen: one CPU thread for training: a batch's forward pass is" in out.getvalue()
        big = torch.nn.Linear(1000, ONE_THREAD_PARAMETERS // 1000)  # its big operations use the threads
        assert (
            one_thread(
                big, ArrayData(torch.zeros(4, 1000), torch.zeros(4, dtype=torch.long)), train_cfg(), CPU
            )
            is None
        )
        wide = build_model("mlp", (2,), 2, hidden=[400, 400])  # 162k weights x 16 rows: 5.2 MFLOPs a batch
        assert one_thread(wide, TRAIN, train_cfg(), CPU) is None
        torch.set_num_threads(1)
        assert one_thread(tiny_mlp(), TRAIN, train_cfg(), CPU) is None  # nothing to choose
    finally:
        torch.set_num_threads(threads)
