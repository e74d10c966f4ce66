"""A preallocated key-value cache: each decoded token costs one position, and nothing is reallocated.

Slots are independent sequences (a batch row, or a served request); `lengths[s]` is how many positions
slot s holds. `models.gpt.GPT.forward(idx, cache, slots)` writes into it and advances the lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    k: list[torch.Tensor]  # per layer: (slots, n_kv_head, max_len, head_size)
    v: list[torch.Tensor]  # per layer: (slots, n_kv_head, max_len, head_size)
    lengths: torch.Tensor  # (slots,) int64: positions held per slot

    @classmethod
    def allocate(cls, config, slots: int, max_len: int, dtype=torch.float32, device="cpu") -> KVCache:
        """Zeroed tensors for `slots` sequences of up to `max_len` positions (at most the model's context)."""
        max_len = min(max_len, config.block_size)
        shape = (slots, config.n_kv_head, max_len, config.n_embd // config.n_head)
        return cls(
            k=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)],
            v=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)],
            lengths=torch.zeros(slots, dtype=torch.long, device=device),
        )

    @property
    def slots(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def reset(self, slot: int | None = None) -> None:
        """Frees one slot (its length back to 0; stale keys are masked out), or all of them."""
        if slot is None:
            self.lengths.zero_()
        else:
            self.lengths[slot] = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
