"""Suite-wide settings. pytest runs two workers (-n 2) on two cores: one thread each avoids
oversubscription, which slows small-model training several-fold. CLI subprocesses inherit it."""
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which it reads at import)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))



@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 2-layer, 32-wide BERT folder with the MiniLM tokenizer (see tests/tiny_hf.py)."""
    from tiny_hf import write_tiny_bert
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
