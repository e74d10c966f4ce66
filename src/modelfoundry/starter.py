"""Commented starter configs written by `foundry init`."""

from __future__ import annotations

from modelfoundry.config import TASKS
from modelfoundry.errors import UserError, did_you_mean

_COMMON_TRAIN = """\
train:
  epochs: 30
  batch_size: 64
  optimizer: adam            # sgd | adagrad | adam | adamw
  lr: 0.001
  schedule: cosine           # constant | step | cosine | onecycle
  warmup: 0.0                # fraction of all steps spent warming the lr up
  weight_decay: 0.0          # L2 penalty; l1: 0.0 adds an L1 penalty
  label_smoothing: 0.0
  monitor: val_accuracy      # val_accuracy | val_loss | val_f1_macro
  early_stopping_patience: 10  # stop after this many epochs without improvement (remove to train all epochs)
  grad_clip: null            # e.g. 1.0 to clip the gradient norm
  accumulate: 1              # batches per optimizer step
  precision: auto            # auto | fp32 | bf16 | fp16  (auto: half precision only where it is faster)
  seed: 0
"""

STARTERS = {
    "image_classification": """\
# modelfoundry config: image classification. Train with `foundry train config.yaml`.
task: image_classification
data:
  source: builtin:digits     # or a folder with one sub-folder per class: data/images/cat/1.png ...
  # image_size: 32           # resize to this square size (default: the images' own size)
  # channels: 3              # 1 = grey, 3 = RGB (default: what the images are)
  split: {val: 0.1, test: 0.2, seed: 0}
  augment: {crop_padding: 1, flip: false, rotation: 10}   # training only
model:
  name: cnn                  # cnn | resnet | mlp
  width: 32
  depth: 2
  dropout: 0.2
"""
    + _COMMON_TRAIN,
    "tabular_classification": """\
# modelfoundry config: tabular classification. Train with `foundry train config.yaml`.
task: tabular_classification
data:
  source: builtin:breast_cancer   # or a .csv / .parquet / .jsonl file
  label: target                   # the label column (needed for files)
  # drop: [id]                    # columns to ignore
  missing: impute                 # impute | drop | error
  split: {val: 0.1, test: 0.2, seed: 0}
model:
  name: mlp
  hidden: [128, 64]
  dropout: 0.1
"""
    + _COMMON_TRAIN,
    "text_classification": """\
# modelfoundry config: text classification. Train with `foundry train config.yaml`.
task: text_classification
data:
  source: reviews.csv        # a .csv / .tsv / .jsonl / .parquet file with a text column and a label column
  text: review               # the text column
  label: sentiment           # the label column
  # val_source: dev.csv      # separate validation / test files (default: split from source)
  # test_source: test.csv
  quoting: true              # false for TSV files whose texts hold stray quote characters (SST-2)
  # max_length: 128          # tokens per text; longer texts are cut (default: the most the model takes)
  privacy: {pii: report}     # personal data: off | report (count) | redact ([EMAIL] ...) | drop rows
  split: {val: 0.1, test: 0.2, seed: 0}
model:
  name: pretrained           # pretrained (fine-tune all-MiniLM-L6-v2) | lstm | gru | transformer
  # path: /models/my-bert    # any local Hugging Face encoder folder
  # freeze_layers: 0         # keep the embeddings and the first N layers fixed
train:
  epochs: 3
  batch_size: 32
  optimizer: adamw
  lr: 5.0e-5                 # the encoder's rate
  lr_head: 1.0e-3            # the new classification head learns faster
  schedule: linear           # constant | step | linear | cosine | onecycle
  warmup: 0.1
  weight_decay: 0.01
  monitor: val_accuracy
  precision: auto
  seed: 0
""",
}


def starter_config(task: str) -> str:
    if task not in STARTERS:
        raise UserError(
            f"--task: '{task}' is not a task.{did_you_mean(task, TASKS)} Tasks: {', '.join(TASKS)}."
        )
    return STARTERS[task]
