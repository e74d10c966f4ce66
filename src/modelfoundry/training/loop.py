"""The training loop: one plain function, every optional part visible where it happens.

Reproducibility: every epoch reseeds the global RNG (dropout) and the shuffling/augmentation
generator from (seed, epoch), so a run resumed from the checkpoint of epoch k draws exactly
the numbers an uninterrupted run draws from epoch k+1 on, and ends with the same metrics.

Data parallel (DDP, lines marked "DDP:"): torchrun starts one process per GPU or core and each
calls `fit` with the same arguments; `cfg.batch_size` is per process. See training/distributed.py.
With `train.strategy: fsdp` (lines marked "FSDP:") the processes train a sharded copy, `net`; rank 0's
`model` receives its whole weights after every interval and is what evaluation, checkpoints and the
caller see.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modelfoundry.config import TrainConfig
from modelfoundry.errors import UserError
from modelfoundry.tasks import MINIMIZED
from modelfoundry.training import distributed
from modelfoundry.training.checkpoint import CheckpointWriter, load_checkpoint
from modelfoundry.training.optim import build_optimizer, build_scheduler, l1_penalty, resolve_precision

CHECKPOINT = "last.pt"


@dataclass
class FitResult:
    history: list[dict]  # one dict per epoch: train_loss, val_loss, val_accuracy, val_f1_macro, lr, seconds
    best_epoch: int  # 1-based epoch whose weights the model now holds
    stopped_early: bool
    precision: str
    # training time of the processes before a resume (the checkpoint carries it); this one's is added
    earlier_seconds: float = 0.0
    threads: int | None = None  # 1 when fit trained on one CPU thread (one_thread)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, data, batch_size: int = 512, autocast: torch.dtype | None = None
) -> torch.Tensor:
    """Logits (N, num_classes) of every example, in order, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for inputs, _ in data.batches(batch_size):
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            outputs.append(model(inputs).float())
    return torch.cat(outputs)


# fit trains on one CPU thread when a batch's forward pass takes fewer floating-point operations than this
# (and the model has fewer than ONE_THREAD_PARAMETERS weights): see one_thread
ONE_THREAD_FLOPS = 5_000_000
ONE_THREAD_PARAMETERS = 1_000_000


def fit(model: nn.Module, train, val, cfg: TrainConfig, *, device: torch.device, **options) -> FitResult:
    """Train `model` (see `_fit` for the arguments), on one CPU thread where `one_thread` says its steps are
    too small to split; torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    flops = one_thread(model, train, cfg, device)
    if flops is not None:
        (options.get("console") or Console(stderr=True)).print(
            f"chosen: one CPU thread for training: a batch's forward pass is {flops / 1e6:.2g} MFLOPs, too "
            f"small to split across {threads} threads",
            highlight=False,
        )
        torch.set_num_threads(1)
    try:
        result = _fit(model, train, val, cfg, device=device, **options)
    finally:
        torch.set_num_threads(threads)
    if flops is not None:
        result.threads = 1
    return result


def one_thread(model: nn.Module, train, cfg: TrainConfig, device: torch.device) -> float | None:
    """The floating-point operations of the model's forward pass on one training batch (torch's
    FlopCounterMode), when they are under ONE_THREAD_FLOPS, so the model should train on one CPU thread;
    None otherwise, and on a GPU, under torchrun, with one thread, or for a model of ONE_THREAD_PARAMETERS
    or more.

    Such a step's operations are too small to split: a second thread only adds synchronisation, and where
    the cores are busy its spin-waiting made steps 10x slower (breast_cancer's MLP, 0.13 MFLOPs: 1.5 ms a
    step on one thread, 14.6 ms on two; a digits MLP, 1.1 MFLOPs: 3.5 against 46.6 ms; bench/RESULTS.md).
    Counted, not timed, so that a run's result does not depend on how busy the machine was (one thread and
    two do not round alike) and a resumed run makes the same choice."""
    from torch.utils.flop_counter import FlopCounterMode

    if device.type != "cpu" or distributed.world_size() > 1 or torch.get_num_threads() == 1:
        return None
    if sum(p.numel() for p in model.parameters()) >= ONE_THREAD_PARAMETERS:
        return None
    try:
        inputs, _ = next(iter(train.batches(cfg.batch_size)))
    except (StopIteration, AttributeError, TypeError):
        return None
    training = model.training
    model.eval()  # batch norm's running statistics stay as they are
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(inputs.to(device))
    except (AttributeError, TypeError, RuntimeError):  # inputs that are not one tensor: keep the threads
        return None
    finally:
        model.train(training)
    flops = counter.get_total_flops()
    return float(flops) if 0 < flops < ONE_THREAD_FLOPS else None


def _fit(
    model: nn.Module,
    train,
    val,
    cfg: TrainConfig,
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    log_dir: Path | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    console: Console | None = None,
    teacher: nn.Module | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    objective=None,
) -> FitResult:
    """Train `model` on `train`, validating on `val` after every epoch.

    Args:
        train, val: objects with `batches(batch_size, shuffle, generator)` yielding (inputs, targets)
            on `device`, and `len()`; `val` may be None (then the last epoch is kept).
        checkpoint_dir: where `last.pt` is written after every epoch; None disables checkpoints.
        resume: continue from `checkpoint_dir/last.pt`.
        log_dir: TensorBoard event files go here; None disables them.
        augment: called on each training batch (B, ...) with the epoch's generator.
        teacher: a trained model whose soft labels the model also learns (cfg.distill: temperature, alpha).
        objective: the task's loss and validation numbers (tasks/base.py `Objective`); default:
            classification with cfg.label_smoothing.
        on_epoch: called with each epoch's finished history record (after its checkpoint); it may raise to
            stop training, as `foundry tune` does to prune a trial (optuna.TrialPruned).
    """
    console = console or Console(stderr=True)
    if val is None and cfg.early_stopping_patience:
        raise UserError("train.early_stopping_patience needs a validation split: set data.split.val above 0.")
    if cfg.freeze_epochs and not hasattr(model, "freeze"):
        raise UserError(
            f"train.freeze_epochs: {type(model).__name__} has no pretrained backbone to freeze; only "
            "pretrained image models do. Remove train.freeze_epochs."
        )
    if cfg.freeze_epochs and distributed.world_size() > 1:  # DDP: every parameter must get a gradient
        raise UserError(
            "train.freeze_epochs: not supported under torchrun (DDP), whose gradient all-reduce expects "
            "every weight to learn each step. Set train.freeze_epochs: 0, or use train.features_only."
        )
    model.to(device)
    world, rank = distributed.world_size(), distributed.rank()
    fsdp = world > 1 and cfg.strategy == "fsdp"
    if fsdp and (teacher is not None or cfg.l1):
        raise UserError(
            f"train.strategy: fsdp does not combine with {'train.distill' if teacher else 'train.l1'} yet; "
            "use train.strategy: ddp."
        )
    # DDP: the wrapper starts every rank from rank 0's weights and averages the gradients across ranks
    # during backward; evaluation and checkpoints use the bare `model`
    if fsdp:  # FSDP: each rank trains its shard; rank 0 keeps `model` whole on the CPU
        net = distributed.shard_model(model)
    elif world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        net = model
    if cfg.freeze_epochs:  # the optimizer holds the backbone's weights too, for the epochs after
        model.freeze(False)
    optimizer = build_optimizer(net if fsdp else model, cfg)  # FSDP: the optimizer steps the shards
    batches_per_epoch = distributed.batches_per_epoch(len(train), cfg.batch_size)  # per rank under DDP
    scheduler = build_scheduler(optimizer, cfg, math.ceil(batches_per_epoch / cfg.accumulate))
    if objective is None:
        from modelfoundry.tasks.base import Objective

        objective = Objective(cfg.label_smoothing)
    autocast = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)  # fp16 needs loss scaling
    monitor = cfg.monitor or "val_accuracy"
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    higher_is_better = monitor not in MINIMIZED

    history: list[dict] = []
    best = {"epoch": 0, "value": -math.inf if higher_is_better else math.inf, "state": None}
    start_epoch, earlier_seconds, fit_started = 0, 0.0, time.perf_counter()
    # DDP: rank 0 alone writes checkpoints and TensorBoard events
    writer = (
        CheckpointWriter(checkpoint_dir / CHECKPOINT) if checkpoint_dir and distributed.is_main() else None
    )
    if resume:  # DDP: rank 0 reads the checkpoint and every rank continues from it
        state = distributed.broadcast_object(
            _read_checkpoint(checkpoint_dir, cfg) if distributed.is_main() else None
        )
        start_epoch, history, best = _restore(
            state, model, optimizer, scheduler, scaler, net if fsdp else None
        )
        # a checkpoint from before it carried the time: its epochs' own seconds
        earlier_seconds = state.get("train_seconds", sum(r["seconds"] for r in history))
    tensorboard = _tensorboard(log_dir if distributed.is_main() else None)

    stopped_early = False
    last_refresh = time.monotonic()
    with _progress(console) as progress:
        task = progress.add_task(
            "train", total=cfg.epochs * batches_per_epoch, completed=start_epoch * batches_per_epoch, info=""
        )
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            torch.manual_seed((cfg.seed + epoch) * world + rank)  # dropout; DDP: each rank its own masks
            generator = torch.Generator().manual_seed(
                cfg.seed * 1_000_003 + epoch
            )  # shuffling, then augmentation
            # DDP: the shuffled order is the same on every rank, the augmentations each rank's own
            augment_generator = (
                generator
                if world == 1
                else torch.Generator().manual_seed((cfg.seed * 1_000_003 + epoch) * world + rank)
            )
            if cfg.freeze_epochs:  # fastai's fine_tune: the new head alone first, then the whole model
                model.freeze(epoch < cfg.freeze_epochs)
            net.train()
            epoch_lr = optimizer.param_groups[0]["lr"]  # the rate this epoch starts with
            loss_sum, seen = torch.zeros((), device=device), 0
            # DDP: every rank walks the same global batches of batch_size x world examples and trains on its
            # share
            for i, (inputs, targets, *weights) in enumerate(  # weights (B,): train.balance_groups
                distributed.shard(train.batches(cfg.batch_size * world, shuffle=True, generator=generator))
            ):
                if len(targets) == 1 and batch_norm and len(train) > 1:
                    progress.advance(task)  # BatchNorm cannot train on one example: a lone last one waits
                    continue  # for the next epoch's shuffle (else a split of 32k+1 rows crashed)
                if augment is not None:
                    inputs = augment(inputs, augment_generator)
                stepping = (i + 1) % cfg.accumulate == 0 or i + 1 == batches_per_epoch
                # DDP: gradients are averaged across ranks only in the backward of a batch that steps
                if fsdp:  # FSDP: ... and reduce-scattered to their shards
                    net.set_requires_gradient_sync(stepping)
                with (
                    net.no_sync() if world > 1 and not fsdp and not stepping else nullcontext(),
                    torch.autocast(
                        device.type, dtype=autocast or torch.float32, enabled=autocast is not None
                    ),
                ):
                    logits = net(inputs)
                    loss = objective.loss(logits, targets, *weights)
                    if teacher is not None:  # the task's matching term (classes: Hinton et al. 2015)
                        with torch.no_grad():
                            soft = teacher(inputs).float()
                        t, alpha = cfg.distill.temperature, cfg.distill.alpha
                        matching = objective.distill(logits, soft, t)
                        loss = (1 - alpha) * loss + alpha * matching
                    if cfg.l1:
                        loss = loss + cfg.l1 * l1_penalty(model)
                scaler.scale(loss / cfg.accumulate).backward()
                if stepping:
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)
                        # FSDP: the norm of the whole gradient, summed over every rank's shard
                        nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                loss_sum += loss.detach() * len(targets)  # no .item(): it would sync a GPU every batch
                seen += len(targets)
                progress.advance(task)
                if time.monotonic() - last_refresh > 0.25:
                    progress.refresh()
                    last_refresh = time.monotonic()

            train_loss, seen = distributed.sum_over_ranks(loss_sum, seen)  # DDP: over every rank's examples
            if fsdp:  # FSDP: every rank gives its shards; rank 0's `model` and checkpoint get the whole
                distributed.gather_weights(net, model)
                optimizer_state = distributed.full_optimizer_state(net, optimizer)
            record = {"epoch": epoch + 1, "train_loss": train_loss / seen, "lr": epoch_lr}
            if val is not None and distributed.is_main():  # DDP: rank 0 scores the whole validation set
                record.update(objective.evaluate(model, val, autocast))
            record["seconds"] = time.perf_counter() - started
            # DDP: every rank takes rank 0's numbers, so all keep the same best epoch and stop together
            record = distributed.broadcast_object(record)
            history.append(record)

            improved = val is None or (
                record[monitor] > best["value"] if higher_is_better else record[monitor] < best["value"]
            )
            if improved:
                best = {
                    "epoch": epoch + 1,
                    "value": record.get(monitor, 0.0),
                    # FSDP: only rank 0's `model` is whole; the others' is sharded and never restored
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if not fsdp or distributed.is_main()
                    else {},
                }
            patience_left = (cfg.early_stopping_patience or math.inf) - (epoch + 1 - best["epoch"])
            if writer:
                writer.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer_state if fsdp else optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch + 1,
                        "epochs": cfg.epochs,
                        "history": history,
                        "best": best,
                        "train_seconds": earlier_seconds + time.perf_counter() - fit_started,
                    }
                )
            if tensorboard:
                for key, value in record.items():
                    if key != "epoch":
                        tensorboard.add_scalar(key.replace("_", "/", 1), value, epoch + 1)
            progress.update(task, info=_epoch_line(record, cfg.epochs, objective), refresh=True)
            if not console.is_terminal:
                console.print(_epoch_line(record, cfg.epochs, objective), highlight=False)
            if on_epoch is not None:
                on_epoch(record)
            minutes = sum(r["seconds"] for r in history) / 60
            if cfg.max_minutes and minutes >= cfg.max_minutes and epoch + 1 < cfg.epochs:
                stopped_early = True  # DDP: every rank has the same history, so all stop together
                progress.update(task, total=(epoch + 1) * batches_per_epoch)
                console.print(
                    f"time budget: {minutes:.1f} of train.max_minutes={cfg.max_minutes:g} minutes "
                    f"used after epoch {epoch + 1}; stopping (best {monitor} at epoch {best['epoch']})",
                    highlight=False,
                )
                break
            if patience_left <= 0:
                stopped_early = True
                progress.update(task, total=(epoch + 1) * batches_per_epoch)
                console.print(
                    f"early stopping: no better {monitor} for {cfg.early_stopping_patience} epochs "
                    f"(best {best['value']:.4f} at epoch {best['epoch']})",
                    highlight=False,
                )
                break
    if writer:
        writer.wait()
    if tensorboard:
        tensorboard.close()
    if cfg.restore_best and best["state"] is not None:
        if not fsdp or distributed.is_main():  # FSDP: the other ranks hold no plain model
            model.load_state_dict(best["state"])
    else:
        best["epoch"] = len(history)
    return FitResult(
        history,
        best["epoch"],
        stopped_early,
        str(autocast).removeprefix("torch.") if autocast else "fp32",
        earlier_seconds,
    )


def _read_checkpoint(checkpoint_dir: Path | None, cfg: TrainConfig) -> dict:
    path = checkpoint_dir / CHECKPOINT if checkpoint_dir else None
    if path is None or not path.is_file():
        raise UserError(
            f"--resume: no checkpoint at {path}. The run never finished an epoch; start it again "
            "without --resume."
        )
    state = load_checkpoint(path)
    if cfg.schedule == "onecycle" and state.get("epochs", cfg.epochs) != cfg.epochs:
        raise UserError(
            f"--resume: train.epochs is {cfg.epochs} but the run was started with {state['epochs']}; "
            "a onecycle schedule is laid out over the whole run, so keep train.epochs: "
            f"{state['epochs']} (or start a new run)."
        )
    return state


def _restore(state: dict, model, optimizer, scheduler, scaler, sharded=None):
    if (
        sharded is not None
    ):  # FSDP: each rank takes its shards of the whole state; only rank 0 keeps a plain model
        if distributed.is_main():
            model.load_state_dict(state["model"])
        distributed.load_whole_state(sharded, optimizer, state["model"], state["optimizer"])
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return state["epoch"], state["history"], state["best"]


def _tensorboard(log_dir: Path | None):
    if log_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not console.is_terminal,
        # Redrawn from the training thread between batches: a refresh thread waking
        # mid-batch would preempt the OpenMP compute threads on small CPUs.
        auto_refresh=False,
    )


def _epoch_line(record: dict, epochs: int, objective) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}"]
    if "val_loss" in record:
        parts.append(objective.line(record))
    return "  ".join(parts)
