"""Suite-wide settings. pytest runs two workers (-n 2) on two cores: one thread each avoids
oversubscription, which slows small-model training several-fold. CLI subprocesses inherit it."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which it reads at import)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
