"""`foundry train --nproc N`: run the same command again as N DDP processes through torchrun
(`python -m torch.distributed.run`), and turn torchrun's failures into one message.

Imports no torch, so mistakes in the launch options surface as fast as config mistakes. The
processes themselves are ordinary `foundry train` runs that find RANK and WORLD_SIZE set by
torchrun (see training/distributed.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from modelfoundry.errors import UserError

# A process started by `launch` writes its UserError message here instead of printing it, and the
# launcher prints it once: not once per process followed by torchrun's failure report.
ERROR_FILE_ENV = "FOUNDRY_LAUNCHER_ERROR_FILE"

# Lines torch writes itself, not foundry: torchrun's log ("W1123 12:53:26.406000 16000 torch/...] ..."),
# C++ warnings ("[W1123 12:53:56.674441773 TCPStore.cpp:340] ...") with their stack frames, the
# tracebacks of DDP processes ("[rank0]: ...") and torchrun's OMP_NUM_THREADS banner.
_TORCH_LINE = re.compile(
    r"\[?[DIWEF]\d{4} \d\d:\d\d:\d\d|\[rank\d+\]:|Exception raised from |frame #\d+:|"
    r"<omitting python frames>|\*{20,}|Setting OMP_NUM_THREADS"
)


def launch(
    train_args: list[str],
    nproc: int,
    device: str = "auto",
    nnodes: int = 1,
    endpoint: str | None = None,
    timeout: float = 300,
) -> None:
    """Run `foundry train TRAIN_ARGS` as `nproc` DDP processes on this machine through torchrun.

    With `nnodes` > 1 every machine runs the same command and they meet at `endpoint` (HOST:PORT on
    the first machine; c10d rendezvous). Returns when training finished. Too many processes, a
    rendezvous that does not happen within `timeout` seconds, or a UserError in any process raise
    one UserError; torchrun's own log and report are shown only for failures we cannot name.
    """
    if "RANK" in os.environ:
        raise UserError(
            "--nproc/--nnodes: this process was already started by torchrun; give torchrun the number "
            "of processes (--nproc-per-node) and leave --nproc out."
        )
    if nnodes > 1 and not endpoint:
        raise UserError(
            f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT: an address and free port of the first "
            "machine that the others can reach, the same on every machine (for example node0:29400)."
        )
    if endpoint and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[\w.-]+):\d{1,5}", endpoint):
        raise UserError(f"--rdzv-endpoint {endpoint!r}: expected HOST:PORT, for example node0:29400.")
    _check_nproc(nproc, device)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if endpoint:
        # join_timeout bounds the wait for the other machines; read_timeout bounds each store operation,
        # each of torch's two attempts to reach the endpoint included (torch's default is 60 s)
        command += [
            "--nnodes",
            str(nnodes),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-conf",
            f"join_timeout={int(timeout)},read_timeout={_connect_timeout(timeout)}",
        ]
    else:
        command += ["--standalone"]
    command += ["-m", "modelfoundry", "train", *train_args]
    with tempfile.TemporaryDirectory(prefix="foundry-launch-") as folder:
        error_file = Path(folder) / "error.txt"
        env = {**os.environ, ERROR_FILE_ENV: str(error_file)}
        env.setdefault(
            "OMP_NUM_THREADS", str(max(1, _cores() // nproc))
        )  # else torchrun sets 1, with a banner
        code, held = _run_torchrun(command, env)
        if code == 0:
            return
        if error_file.exists():
            raise UserError(error_file.read_text())
    report = "".join(held)
    if endpoint and "RendezvousConnectionError" in report:
        raise UserError(
            f"--rdzv-endpoint {endpoint}: nothing answered there (torchrun waited "
            f"{_connect_timeout(timeout)} s per attempt to connect). Start the command on the first machine "
            f"(the one at {endpoint}) first, give an address and port that this machine can reach (open in "
            "the firewall), or wait longer with --rdzv-timeout."
        )
    if endpoint and ("RendezvousTimeoutError" in report or "RendezvousClosedError" in report):
        raise UserError(
            f"--rdzv-endpoint {endpoint}: not all {nnodes} machines joined within {timeout:g} s. Run the "
            f"same command with --nnodes {nnodes} and --rdzv-endpoint {endpoint} on every machine, or "
            "wait longer with --rdzv-timeout."
        )
    sys.stderr.write(report)  # a failure we cannot name keeps torch's own report and tracebacks
    sys.stderr.flush()
    raise SystemExit(code)


def check_strategy(strategy: str | None, nproc: int, nnodes: int) -> None:
    """train.strategy names how several processes share the training: one process has nothing to share.
    Under torchrun the processes are counted from WORLD_SIZE."""
    processes = int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else nproc * nnodes
    if strategy and processes == 1:
        sharing = (
            "shards the model's weights, gradients and optimizer state across processes"
            if strategy == "fsdp"
            else "keeps a copy of the model in each process and averages their gradients"
        )
        raise UserError(
            f"train.strategy: {strategy} {sharing}, and this run has one process. Train with --nproc 2 or "
            "more (or torchrun), or remove train.strategy to train in one process."
        )


def report_to_launcher(message: str) -> bool:
    """In a process started by `launch`: hand a UserError message to it (the first process to fail
    wins) and return True. Elsewhere return False: the caller prints the message itself."""
    if ERROR_FILE_ENV not in os.environ or "RANK" not in os.environ:
        return False
    try:
        with open(os.environ[ERROR_FILE_ENV], "x") as f:
            f.write(message)
    except FileExistsError:
        pass
    return True


def under_launcher() -> bool:
    return ERROR_FILE_ENV in os.environ and "RANK" in os.environ


def leave(code: int | str | None) -> None:
    """End a DDP process of rank > 0 (started by torchrun) with `code` once its command is done,
    without the interpreter's and libraries' exit handlers: tearing down gloo's threads at exit now
    and then aborted a finished rank ("terminate called without an active exception", exit -6) and
    with it the whole `foundry train --nproc` (see distributed.finish). Elsewhere: return."""
    if "RANK" not in os.environ or os.environ["RANK"] == "0" or "WORLD_SIZE" not in os.environ:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _run_torchrun(command: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run torchrun, passing the processes' stderr through as it comes but holding back torch's own
    lines; returns the exit status and the lines held back. stdout passes through untouched."""
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    held: list[str] = []
    holding = in_report = False
    try:
        for line in process.stderr:
            # torchrun's final failure report is a traceback: everything after it belongs to it
            in_report = in_report or line.startswith("Traceback (most recent call last):")
            continued = holding and (not line.strip() or line[0].isspace())
            holding = in_report or bool(_TORCH_LINE.match(line)) or continued
            if holding:
                held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        return process.wait(), held
    except KeyboardInterrupt:
        process.terminate()  # torchrun stops its processes; the checkpoints stay as they were
        process.wait()
        raise


def _check_nproc(nproc: int, device: str) -> None:
    """More processes than CPU cores is a mistake unless they train on GPUs; each process checks that
    there are enough GPUs for the processes of its machine (distributed.init)."""
    cores = _cores()
    if nproc <= cores or (device != "cpu" and _cuda_available()):
        return
    raise UserError(
        f"--nproc {nproc}: this machine has {cores} CPU cores and no GPU to use, and DDP on a CPU runs one "
        f"process per core. Use --nproc {cores} or fewer, or more machines (--nnodes, see the README)."
    )


def _cuda_available() -> bool:
    import torch  # only on this rare path: importing torch takes seconds

    return torch.cuda.is_available()


def _connect_timeout(timeout: float) -> int:
    return max(1, int(min(timeout, 30)))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
