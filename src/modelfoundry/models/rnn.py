"""Recurrent text classifiers (LSTM, GRU) over token ids, trained from scratch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from modelfoundry.compress.prune import Plan, shrink

POOLINGS = ("max", "mean", "last")


class RNNClassifier(nn.Module):
    """Embedding -> (bi)LSTM or GRU over each text's real tokens -> pooling -> dropout -> linear head.

    Texts are padded on the right with `pad_id`; packing runs the recurrence over the real tokens
    only, so the backward direction starts at each text's last token, not at its padding.
    """

    def __init__(
        self,
        cell: type[nn.RNNBase],
        vocab_size: int,
        pad_id: int,
        num_classes: int,
        embed_dim: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        pooling: str,
        dropout: float,
    ):
        super().__init__()
        self.pad_id, self.pooling, self.directions = pad_id, pooling, 2 if bidirectional else 1
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        # PyTorch applies `dropout` only between stacked layers and warns when there is one layer.
        self.rnn = cell(
            embed_dim,
            hidden,
            num_layers=layers,
            bidirectional=bidirectional,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.directions * hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Args: ids (B, T) token ids, right-padded with pad_id. Returns logits (B, num_classes)."""
        # An empty text still gets one (pad) step: packing rejects zero lengths.
        lengths = (ids != self.pad_id).sum(1).clamp(min=1)  # (B,)
        packed = pack_padded_sequence(
            self.dropout(self.embed(ids)), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, state = self.rnn(packed)
        if self.pooling == "last":
            final = (
                state[0] if isinstance(state, tuple) else state
            )  # LSTM gives (h, c); (layers * dirs, B, H)
            pooled = (
                final[-self.directions :].transpose(0, 1).flatten(1)
            )  # last layer, both directions: (B, dirs * H)
        else:
            outputs, _ = pad_packed_sequence(outputs, batch_first=True)  # (B, longest text, dirs * H)
            real = (torch.arange(outputs.shape[1], device=ids.device) < lengths[:, None])[
                ..., None
            ]  # (B, T', 1)
            if self.pooling == "max":
                pooled = outputs.masked_fill(~real, float("-inf")).amax(1)
            else:
                pooled = (outputs * real).sum(1) / lengths[:, None]
        return self.head(self.dropout(pooled))


def check_text_options(input_shape: tuple[int, ...], vocab_size: int, pad_id: int, **positive: int) -> None:
    """Raise ValueError naming the option, the bad value and the fix."""
    if len(input_shape) != 1:
        raise ValueError(
            f"text models take token ids of shape (max_length,); got input_shape {tuple(input_shape)}: "
            "use a text dataset with a tokenizer"
        )
    if not 0 <= pad_id < vocab_size:
        raise ValueError(
            f"pad_id {pad_id} is outside the vocabulary of size {vocab_size}: "
            "use the tokenizer's padding token id"
        )
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} {value!r} must be a positive whole number: set {name} to 1 or more")


def _build(
    cell: type[nn.RNNBase],
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    embed_dim: int,
    hidden: int,
    layers: int,
    bidirectional: bool,
    pooling: str,
    dropout: float,
) -> nn.Module:
    check_text_options(input_shape, vocab_size, pad_id, embed_dim=embed_dim, hidden=hidden, layers=layers)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}: pick one of them")
    return RNNClassifier(
        cell, vocab_size, pad_id, num_classes, embed_dim, hidden, layers, bidirectional, pooling, dropout
    )


def build_lstm(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    *,
    embed_dim: int = 128,
    hidden: int = 128,
    layers: int = 1,
    bidirectional: bool = True,
    pooling: str = "max",
    dropout: float = 0.2,
) -> nn.Module:
    """An LSTM text classifier.

    Args:
        input_shape: (max_length,) of the token ids; recurrences need no length limit.
        num_classes: output logits (B, num_classes) for ids (B, T), T <= max_length.
        vocab_size: size of the tokenizer's vocabulary (30522 for BERT / MiniLM).
        pad_id: the padding token id (0 for BERT); padding never changes the logits.
        embed_dim: width of the token embeddings.
        hidden: hidden size per direction.
        layers: stacked recurrent layers.
        bidirectional: also read each text right to left.
        pooling: "max" or "mean" over the real tokens' outputs, or "last" final hidden states.
        dropout: dropout on the embeddings, between layers and before the head.
    """
    return _build(
        nn.LSTM,
        input_shape,
        num_classes,
        vocab_size,
        pad_id,
        embed_dim,
        hidden,
        layers,
        bidirectional,
        pooling,
        dropout,
    )


def build_gru(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    *,
    embed_dim: int = 128,
    hidden: int = 128,
    layers: int = 1,
    bidirectional: bool = True,
    pooling: str = "max",
    dropout: float = 0.2,
) -> nn.Module:
    """A GRU text classifier: like `build_lstm` (same arguments), with a quarter fewer recurrent weights."""
    return _build(
        nn.GRU,
        input_shape,
        num_classes,
        vocab_size,
        pad_id,
        embed_dim,
        hidden,
        layers,
        bidirectional,
        pooling,
        dropout,
    )


def prune_rnn(
    model: nn.Module, options: dict, ratio: float, build: Callable[..., nn.Module]
) -> tuple[nn.Module, dict, Plan]:
    """Hidden units per layer and direction (LSTM and GRU); a unit's rows in every gate block go with it."""
    rnn = model.rnn
    gates = 4 if isinstance(rnn, nn.LSTM) else 3  # LSTM: input, forget, cell, output; GRU: reset, update, new
    suffixes = ("", "_reverse") if rnn.bidirectional else ("",)
    plan: Plan = {}
    reads: tuple[str, ...] = ()  # the first layer reads the embeddings, which keep their width
    for layer in range(rnn.num_layers):
        units = tuple(f"l{layer}{suffix}" for suffix in suffixes)
        for unit, suffix in zip(units, suffixes):
            rows = (unit,) * gates
            plan |= {
                f"rnn.weight_ih_l{layer}{suffix}": (rows, reads),
                f"rnn.weight_hh_l{layer}{suffix}": (rows, (unit,)),
                f"rnn.bias_ih_l{layer}{suffix}": (rows,),
                f"rnn.bias_hh_l{layer}{suffix}": (rows,),
            }
        reads = units  # the next layer and the head read [forward, backward] outputs
    plan["head.weight"] = ((), reads)
    changes = {"hidden": shrink(options["hidden"], ratio)}
    return build(**changes), changes, plan
