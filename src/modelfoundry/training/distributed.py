"""Data parallel training on PyTorch's own `torch.distributed`: one process per GPU (or CPU core),
started by torchrun (`python -m torch.distributed.run`), gradients averaged by DistributedDataParallel.

`foundry train --nproc N` re-launches itself through torchrun (training/launch.py); on many machines
the user runs torchrun directly. Each process then joins the process group (`init`: gloo on CPU, nccl on
CUDA with device cuda:LOCAL_RANK) and trains the same model on its share of every batch:

- `train.batch_size` is per process; the effective batch is batch_size x processes x accumulate.
  The learning rate is used as set, never scaled behind the user's back (`describe` says what the
  linear scaling rule would give).
- Sharding (`shard`) follows DistributedSampler: every rank shuffles with the same seed, walks the
  same global batches of batch_size x processes examples and keeps rows rank, rank + W, ... of
  each. The last global batch is cut to a multiple of W rows, so every rank trains on as many
  examples: up to W - 1 examples per epoch are dropped (a different few each epoch, as the order is
  reshuffled) and none is repeated (no padding).
- Rank 0 alone writes (checkpoints, TensorBoard, run folder, registry, console) and scores the
  validation set; the loop broadcasts its numbers so every rank stops at the same epoch.

`train.strategy: fsdp` (families with `shards`, the gpt) shards instead of copying: PyTorch's FSDP2
(`torch.distributed.fsdp.fully_shard`) makes each block of the model's nn.ModuleLists a unit, then the
root, so every process holds 1/W of each weight, its gradient and its AdamW moments; a unit's whole
weights are gathered for its forward and backward and freed after, and gradients are reduce-scattered.
The data are split as under DDP. After every evaluation interval the whole weights and optimizer state
are gathered to rank 0's CPU (`gather_weights`, `full_optimizer_state`), into the plain model it keeps
for evaluation, checkpoints and the package: files the same as one process writes, so `--resume`,
`foundry generate/serve/evaluate` do not know how the model was trained. The other ranks hold no whole
copy: their `model` is the sharded one.
"""

from __future__ import annotations

import atexit
import copy
import os
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from modelfoundry.config import TrainConfig
from modelfoundry.errors import UserError
from modelfoundry.training.optim import resolve_device


def launched() -> bool:
    """Whether torchrun started this process (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    """This process's global rank: 0 without DDP (until `init` joined the process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes training together: 1 without DDP."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and talks to the user."""
    return rank() == 0


def init(device: str = "auto") -> torch.device:
    """The device this process trains on; under torchrun, first join the process group.

    Backend gloo on CPU, nccl on CUDA with one GPU per process (cuda:LOCAL_RANK). Without torchrun
    this is `resolve_device(device)` and nothing else.
    """
    resolved = resolve_device(device)
    if not launched():
        return resolved
    if resolved.type == "cuda":
        processes, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
        if processes > gpus:
            raise UserError(
                f"--nproc {processes}: this machine has {gpus} CUDA GPU(s) and DDP runs one process per "
                f"GPU. Use --nproc {gpus} or fewer (torchrun: --nproc-per-node {gpus}), or "
                "train.device: cpu to train on CPU cores."
            )
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        cuda = resolved.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=resolved if cuda else None)
        atexit.register(close)
    return resolved


def finish() -> None:
    """DDP: the end of a run. Every rank waits until rank 0 has written the run; rank 0 then leaves the
    process group. The other ranks keep theirs until they exit: a CLI process leaves through
    `training.launch.leave`,
    skipping the teardown of gloo's threads, which now and then aborted a finished rank ("terminate
    called without an active exception", exit -6) and with it the whole `foundry train --nproc`."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        if is_main():
            dist.destroy_process_group()


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's rows of each global batch (inputs (B, ...), targets (B,)): rows rank, rank + W, ...

    The caller draws the global batches of batch_size x W examples with the same seeded generator on
    every rank. A last global batch of m rows keeps m - m % W of them (none when m < W).
    """
    world, me = world_size(), rank()
    if world == 1:
        yield from batches
        return
    for batch in batches:  # (inputs, targets), or with per-example weights
        keep = len(batch[1]) - len(batch[1]) % world
        if keep:
            yield tuple(part[me:keep:world] for part in batch)


def batches_per_epoch(examples: int, batch_size: int) -> int:
    """How many batches `shard` gives each rank in an epoch (ceil(examples / batch_size) without DDP)."""
    world = world_size()
    return examples // (batch_size * world) + (examples % (batch_size * world) >= world)


def sum_over_ranks(*values: float | torch.Tensor) -> list[float]:
    """Each value summed over all ranks (the values themselves without DDP)."""
    if world_size() == 1:
        return [float(v) for v in values]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    totals = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def broadcast_object(value=None, src: int = 0):
    """Rank `src`'s `value` on every rank (any picklable object; `value` itself without DDP)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_model(model: nn.Module) -> nn.Module:
    """FSDP: `model` sharded across the processes (FSDP2's `fully_shard` on each block of its
    nn.ModuleLists, then on the root), starting from rank 0's weights. Rank 0 shards a copy and keeps
    `model` whole on the CPU, to receive the whole weights after each interval (`gather_weights`); the
    other ranks shard `model` itself and keep no whole copy."""
    from torch.distributed.fsdp import fully_shard

    for tensor in (*model.parameters(), *model.buffers()):  # each rank built its own; DDP does this itself
        dist.broadcast(tensor.data, src=0)
    # deepcopy keeps tied weights tied (the embedding and the output layer stay one tensor)
    sharded = copy.deepcopy(model) if is_main() else model
    for blocks in [m for m in sharded.modules() if isinstance(m, nn.ModuleList)]:
        for block in blocks:
            fully_shard(block)
    fully_shard(sharded)
    if is_main():
        model.to("cpu")
    return sharded


def _whole():
    """Whole (unsharded) state dicts, gathered to rank 0's CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_weights(sharded: nn.Module, model: nn.Module) -> None:
    """FSDP, on every rank: rank 0's plain `model` gets the sharded model's whole weights."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(sharded, options=_whole())  # on rank 0's CPU; {} elsewhere
    if is_main():
        model.load_state_dict(state)


def full_optimizer_state(sharded: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """FSDP, on every rank: the optimizer's whole state on rank 0 ({} elsewhere) in the layout of one
    process's `optimizer.state_dict()`: parameters numbered in the order of the parameter groups (torch
    gives them by name)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(sharded, optimizer, options=_whole())
    if not is_main():
        return {}
    number = {name: i for i, name in enumerate(n for g in state["param_groups"] for n in g["params"])}
    return {
        "state": {number[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": [number[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def load_whole_state(sharded: nn.Module, optimizer, model_state: dict, optimizer_state: dict) -> None:
    """FSDP, on every rank: each rank's shards of a checkpoint's whole weights and optimizer state (the
    layout one process writes)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    name = {id(p): n for n, p in sharded.named_parameters()}
    names = [name[id(p)] for g in optimizer.param_groups for p in g["params"]]
    by_name = {
        "state": {names[i]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [
            {**g, "params": [names[i] for i in g["params"]]} for g in optimizer_state["param_groups"]
        ],
    }
    whole = StateDictOptions(full_state_dict=True)
    set_model_state_dict(sharded, dict(model_state), options=whole)  # it puts its shards in the dict given
    set_optimizer_state_dict(sharded, optimizer, by_name, options=whole)


def describe(cfg: TrainConfig, examples: int) -> tuple[str, dict]:
    """The DDP set-up as a line for the console and a dict for metrics.json."""
    world = world_size()
    setup = {
        "processes": world,
        "strategy": cfg.strategy or "ddp",
        "backend": dist.get_backend(),
        "batch_per_process": cfg.batch_size,
        "accumulate": cfg.accumulate,
        "effective_batch": cfg.batch_size * world * cfg.accumulate,
        "lr": cfg.lr,
        "lr_scaling": "none",
        "examples_dropped_per_epoch": examples % (cfg.batch_size * world) % world,
    }
    line = (
        f"{setup['strategy'].upper()}: {world} processes ({setup['backend']})"
        + (
            "; weights, gradients and optimizer state sharded over them"
            if setup["strategy"] == "fsdp"
            else ""
        )
        + f"; batch {cfg.batch_size} per process x {world} "
        f"processes x accumulate {cfg.accumulate} = effective batch {setup['effective_batch']}. lr "
        f"{cfg.lr:g} is used as set; the linear scaling rule would use {cfg.lr * world:g} (--set "
        f"train.lr={cfg.lr * world:g}). Each epoch every process draws the same shuffled order and process r "
        f"takes examples r, r+{world}, r+{2 * world}, ... of each global batch of {cfg.batch_size * world}; "
        + (
            f"the last {setup['examples_dropped_per_epoch']} of the {examples} examples in that order are "
            "left out (different ones each epoch) so that every process trains on as many; none is repeated."
            if setup["examples_dropped_per_epoch"]
            else f"all {examples} examples are used, none twice."
        )
    )
    return line, setup
