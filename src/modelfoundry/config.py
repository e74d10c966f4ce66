"""The YAML config as pydantic models: one place that says which keys exist and what they accept.

`load_config` reads YAML (or takes a dict), applies `--set a.b=c` overrides, validates, and
reports every problem at once with the key, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from modelfoundry.errors import UserError, did_you_mean
from modelfoundry.models.registry import AUTO, FAMILIES, check_options, family_for, family_of
from modelfoundry.tasks import MINIMIZED, TASKS as TASK_REGISTRY

TASKS = tuple(TASK_REGISTRY)
AUTO_EPOCH_MINUTES = 5.0  # the time budget of a run whose epochs foundry chooses from the data
SMALL_VAL = 200  # below this many validation examples accuracy moves in big steps: monitor the loss
TEXT_DATA_KEYS = ("text", "max_length", "tokenizer", "privacy")  # data keys that only text tasks read


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(_Section):
    val: float = Field(0.1, ge=0, lt=1, description="fraction of examples held out for validation")
    test: float = Field(0.2, ge=0, lt=1, description="fraction held out for the final test")
    seed: int = 0
    stratify: bool = True

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(
                f"val + test = {self.val + self.test:g} leaves no training data; keep it below 1"
            )
        return self


class TokenizerConfig(_Section):
    """text_generation: the tokenizer trained on the training split."""

    type: Literal["bpe", "char"] = Field(
        "bpe",
        description="bpe: byte-level BPE (any text encodes); char: one token per character (tiny corpora)",
    )
    vocab_size: int = Field(8192, ge=257, le=1_000_000, description="bpe: tokens, 256 bytes and merges")


class PrivacyConfig(_Section):
    pii: Literal["off", "report", "redact", "drop"] = Field(
        "report",
        description="personal data in text: off, report (count only), redact ([EMAIL] ...), drop rows",
    )


class AugmentConfig(_Section):
    """Training-time image augmentation; always off for validation, test and prediction."""

    crop_padding: int = Field(0, ge=0, description="random crop after padding by this many pixels (0 = off)")
    flip: bool = Field(False, description="random horizontal flip (off for digits: a flipped 2 is no 2)")
    rotation: float = Field(0.0, ge=0, le=180, description="random rotation up to this many degrees")


class FeedbackDataConfig(_Section):
    """Corrections folded into training by `foundry retrain` (training split only, never val or test)."""

    source: str = Field(description="a file or image folder of corrections, laid out like data.source")
    weight: int = Field(
        1, ge=1, le=100, description="each correction is repeated this many times in training"
    )


class DataConfig(_Section):
    source: str = Field(
        description="builtin:NAME, an image folder, an MNIST IDX folder, or a .csv/.parquet/.jsonl file"
    )
    val_source: str | None = Field(
        None, description="a separate validation file/folder (then split.val is not used)"
    )
    test_source: str | None = Field(
        None, description="a separate test file/folder (then split.test is not used)"
    )
    label: str | None = Field(None, description="label column of a table")
    text: str | None = Field(None, description="text column (text_classification)")
    quoting: bool = Field(
        True,
        description="CSV/TSV: honour quote characters; false for files like SST-2 "
        "whose texts contain unbalanced quotes",
    )
    max_length: int | None = Field(
        None,
        ge=2,
        description="tokens per text; longer texts are truncated (default: the most the model supports)",
    )
    tokenizer: str | TokenizerConfig | None = Field(
        None,
        description="text_classification: Hugging Face model folder or tokenizer.json whose tokenizer "
        "text models use (default: the pretrained model's own); text_generation: {type: bpe|char, "
        "vocab_size} of the tokenizer trained on the corpus (default: chosen from its size)",
    )
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    feedback: FeedbackDataConfig | None = Field(None, description="corrections to add to the training split")
    features: list[str] | None = Field(
        None, description="feature columns (default: every column but the label)"
    )
    drop: list[str] = Field(default_factory=list, description="columns to ignore, e.g. ids")
    columns: dict[str, Literal["numeric", "category", "datetime", "text", "id", "constant", "leak"]] = Field(
        default_factory=dict,
        description="tables: column -> role, where the inferred one is wrong (the data report lists each "
        "column's role); text, id, constant and leak columns are not used",
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    image_size: int | None = Field(None, ge=4, le=1024, description="resize images to this square size")
    channels: Literal[1, 3] | None = Field(None, description="1 = grey, 3 = RGB (default: what the data has)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    missing: Literal["impute", "drop", "error"] = Field(
        "impute",
        description="missing numeric/categorical values: impute (median / own category), drop rows, error",
    )
    max_missing_fraction: float = Field(
        0.5, ge=0, le=1, description="a column missing more than this is an error"
    )
    dedupe: bool = Field(False, description="drop exact duplicate examples before splitting")
    # recommendation: a table of user-item interactions (tasks/recommendation.py)
    user: str | None = Field(None, description="recommendation: the user id column of the interactions")
    item: str | None = Field(None, description="recommendation: the item id column of the interactions")
    rating: str | None = Field(
        None, description="recommendation: a rating column (numbers); without it every row is a positive"
    )
    timestamp: str | None = Field(
        None,
        description="recommendation: a time column; with it each user's latest interactions are held out",
    )
    implicit_threshold: float | None = Field(
        None, description="recommendation: ratings at or above this are positives, the rest are dropped"
    )
    min_interactions: int = Field(
        1, ge=1, description="recommendation: users and items with fewer interactions are dropped (reported)"
    )
    users: str | None = Field(None, description="recommendation: a side table of user features (two_tower)")
    items: str | None = Field(
        None, description="recommendation: a side table of item features and titles (report, two_tower)"
    )
    streaming: bool | Literal["auto"] = Field(
        "auto",
        description="tables: read the file in chunks and stream training batches from disk, so memory "
        "stays flat however many rows there are; auto = for files of 1 GB and more",
    )


class ModelConfig(BaseModel):
    """`name` picks the family; the other keys are that family's arguments (checked by the registry).
    Unset: the task's default (`auto` for tables: foundry picks the family when the run starts)."""

    model_config = ConfigDict(extra="allow")
    name: str | None = None
    init_from: str | None = Field(
        None,
        description="start from the weights of an earlier run (its folder or model/ package) of the same "
        "task and family; a changed label set gets a new head",
    )

    @model_validator(mode="after")
    def _options_fit_the_family(self) -> ModelConfig:
        if self.name is None:  # the task's default; Config checks the options against it
            return self
        if self.name in FAMILIES and FAMILIES[self.name].for_inputs:
            return self  # a name whose family depends on the inputs: Config checks it with the task
        problems = check_options(self.name, self.model_extra or {})
        if problems:  # one error that `_format_errors` shows as one line per problem
            raise PydanticCustomError(
                "model_options", "{summary}", {"summary": "; ".join(problems), "problems": problems}
            )
        return self


class DistillConfig(_Section):
    """Train this model (the student) to match a trained model's (the teacher's) soft labels too."""

    teacher: str = Field(description="the teacher: a run folder or its model/ package")
    temperature: float = Field(
        4.0, gt=0, le=100, description="softens both models' probabilities before matching"
    )
    alpha: float = Field(
        0.7, ge=0, le=1, description="weight of matching the teacher; 1 - alpha goes to the true labels"
    )


class LoRAConfig(_Section):
    """pretrained_lm with train.method lora: the low-rank adapter (Hu et al. 2021) over the frozen model."""

    r: int = Field(8, ge=1, le=1024, description="rank of the update")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    targets: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="linear layers to adapt, by name (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
        "down_proj), or all-linear; never the output layer tied to the embedding",
    )


class TrainConfig(_Section):
    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adagrad", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (decoupled for adamw)")
    l1: float = Field(0.0, ge=0, description="L1 penalty on weights, added to the loss")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    lr_backbone: float | None = Field(
        None,
        gt=0,
        le=10,
        description="learning rate of a pretrained image backbone (default: lr); discriminative fine-tuning "
        "gives it a fraction of the new head's",
    )
    freeze_epochs: int = Field(
        0,
        ge=0,
        description="pretrained image models: epochs that train the new head with the backbone frozen",
    )
    features_only: bool = Field(
        False,
        description="pretrained image models: compute the frozen backbone's features once and train only "
        "the head on them (a linear probe: a first result in seconds on a CPU)",
    )
    lr_head: float | None = Field(
        None,
        gt=0,
        le=10,
        description="learning rate of the classification head "
        "(default: lr); fine-tuning often wants it 10-100x higher than the encoder's",
    )
    schedule: Literal["constant", "step", "linear", "cosine", "onecycle"] = "constant"
    warmup: float = Field(0.0, ge=0, lt=1, description="fraction of all steps spent warming the lr up from 0")
    step_size: int = Field(10, ge=1, description="step schedule: epochs between lr drops")
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule: lr factor at each drop")
    monitor: str | None = Field(
        None,
        description="validation metric for early stopping and the best model (default: the task's: "
        "val_accuracy for classification, val_rmse for regression)",
    )
    loss: Literal["mse", "mae", "huber"] | None = Field(
        None, description="tabular_regression: the loss on the standardised target (default mse)"
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="epochs without improvement before stopping"
    )
    restore_best: bool = Field(True, description="package the weights of the best epoch, not the last")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    accumulate: int = Field(1, ge=1, description="batches whose gradients are summed before a step")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16/fp16 only where the hardware runs it faster than fp32"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    strategy: Literal["ddp", "fsdp"] | None = Field(
        None,
        description="with --nproc/--nnodes: ddp (the default) keeps a whole copy of the model in every "
        "process and averages gradients; fsdp (gpt) shards weights, gradients and optimizer state over them",
    )
    seed: int = 0
    max_steps: int | None = Field(
        None,
        ge=1,
        description="text_generation: optimizer steps on random windows of the corpus, instead of epochs "
        "(default: as many as train.max_minutes allows)",
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="stop after the epoch that passes this many minutes of training (default: none; "
        f"{AUTO_EPOCH_MINUTES:g} when epochs is chosen from the data)",
    )
    distill: DistillConfig | None = Field(None, description="knowledge distillation from a trained teacher")
    method: Literal["lora", "full"] = Field(
        "lora",
        description="pretrained_lm: lora trains an adapter over the frozen model; full trains every weight",
    )
    lora: LoRAConfig = Field(default_factory=LoRAConfig, description="pretrained_lm with method lora")
    packing: bool = Field(
        False,
        description="pretrained_lm: pack short instruction examples into rows of the full context, each "
        "attending to itself only (default off: length-bucketed batches measured as fast: bench/packing.py)",
    )
    folds: int | None = Field(
        None,
        description="k-fold cross-validation over train+val (`--folds K`): one model per fold, the mean and "
        "std of each validation metric, then the final model trained on all of train+val",
    )
    folds_ensemble: bool = Field(
        False, description="with folds: keep the fold models as an ensemble instead of a final model"
    )

    refit: bool | None = Field(
        None,
        description="after training, train the model again on train+val for the epochs (boosting rounds) "
        "early stopping chose on the validation split, and ship that one; the validation numbers stay the "
        "first model's. Default (unset): on for model.name auto on a table held in memory, off otherwise",
    )

    balance_groups: str | None = Field(
        None,
        description="a column of evaluate.sensitive: training examples are re-weighted so that each (group, "
        "label) cell counts equally in the loss (fairness mitigation; the report shows the gaps it leaves)",
    )
    balance_method: Literal["equal_cells", "reweighing"] = Field(
        "equal_cells",
        description="balance_groups: equal_cells = every (group, label) cell weighs the same (this also "
        "balances the labels); reweighing = Kamiran & Calders 2012, weight P(group) P(label) / "
        "P(group, label): labels independent of the group, the label mix of the data kept",
    )

    @field_validator("folds")
    @classmethod
    def _enough_folds(cls, folds: int | None) -> int | None:
        if folds is not None and folds < 2:
            raise ValueError(
                f"{folds} fold(s) is no cross-validation (--folds {folds}): use 2 or more (5 is usual), "
                "or leave --folds out to train once"
            )
        return folds

    @model_validator(mode="after")
    def _ensemble_needs_folds(self) -> TrainConfig:
        if self.folds_ensemble and self.folds is None:
            raise ValueError(
                "train.folds_ensemble (--folds-ensemble) keeps the models of the folds, and train.folds is "
                "not set: add --folds 5 (or train.folds: 5)"
            )
        return self


class ThresholdPolicyConfig(_Section):
    """evaluate.threshold_policy: per-group decision thresholds of a two-class table model (evaluate/
    thresholds.py), chosen on the validation split and kept in the package."""

    sensitive: str = Field(
        description="a category column the model reads, also in evaluate.sensitive: each of its groups gets "
        "its own threshold"
    )
    equalize: Literal["tpr", "fpr", "positive_rate"] = Field(
        "tpr",
        description="the rate made equal across groups: tpr (equal opportunity), fpr, or positive_rate "
        "(demographic parity)",
    )


class EvaluateConfig(_Section):
    """What the report audits beyond the task's metrics (evaluate/fairness.py)."""

    sensitive: list[str] = Field(
        default_factory=list,
        description="columns whose groups the fairness audit compares (sex, race, ...): table columns, "
        "features or data.drop ones the model does not see; kept aside and carried with each split's rows",
    )
    fairness_threshold: float = Field(
        0.1, ge=0, le=1, description="a gap between groups above this is flagged in the report"
    )
    intersections: bool = Field(False, description="also audit every pair of sensitive columns together")
    k: list[int] = Field(
        default_factory=lambda: [10, 20],
        description="recommendation: the cut-offs of the ranking metrics (ndcg@10, recall@20, ...)",
    )
    threshold_policy: ThresholdPolicyConfig | None = Field(
        None,
        description="per-group decision thresholds that equalise a rate (fairness mitigation after "
        "training); the report shows the gaps and accuracy before and after",
    )


class TuneConfig(_Section):
    """`foundry tune`: what to search and what to optimise. The space is checked against the rest of the
    config by `modelfoundry.tune.space.parse_space`."""

    metric: str | None = Field(
        None, description="the validation metric each trial is scored by (its best epoch)"
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="default: minimize for val_loss, maximize for the others"
    )
    space: dict[str, Any] = Field(
        default_factory=dict,
        description="dotted key -> {loguniform: [lo, hi]}, "
        "{uniform: [lo, hi]}, {int: [lo, hi], step: k} or {choice: [...]}",
    )
    trials: int | None = Field(
        None, ge=1, description="trials per `foundry tune` (default 20; --trials wins)"
    )
    pruner: Literal["median", "none"] = Field(
        "median",
        description="median: stop a trial whose best metric so far is worse than the median of "
        "earlier trials at the same epoch",
    )
    pruner_startup_trials: int = Field(
        5, ge=0, description="trials that finish before the pruner judges others"
    )
    pruner_warmup_epochs: int = Field(
        2, ge=0, description="epochs every trial trains before it may be pruned"
    )


class Config(_Section):
    """A run's config. Keys left unset take the model family's recipe (models/registry.py), then the
    task's default, then the global default; `recipe` records which keys did, so a run's saved config
    says where every value came from, and loading it again keeps those keys "unset"."""

    task: str = Field(description="what the model does: " + ", ".join(TASK_REGISTRY))
    name: str | None = Field(None, description="a readable name for the run")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    recipe: dict[str, str] = Field(
        default_factory=dict,
        description="written by foundry: dotted key -> where its value came from when the config left it "
        "unset (e.g. 'mlp recipe', 'task default')",
    )
    _user_keys: set[str] = PrivateAttr(default_factory=set)
    # Left out of a run's saved config.yaml: a run trains one config; the search belongs to `foundry tune`.
    tune: TuneConfig | None = Field(
        None, exclude=True, description="the hyperparameter search of `foundry tune`"
    )

    @model_validator(mode="after")
    def _task_needs(self) -> Config:
        """The task's own checks (tasks/), and the task's defaults where the config leaves a key unset."""
        from modelfoundry.tasks import get_task

        task = get_task(self.task)
        problems = task.check_config(self)
        if self.model.name is None:
            self.model.name = AUTO if task.auto_models else task.default_model
            problems += check_options(self.model.name, self.model.model_extra or {})
        elif FAMILIES.get(self.model.name) and FAMILIES[self.model.name].for_inputs:
            family = family_for(self.model.name, task.kind)  # `pretrained`: an ImageNet backbone for images
            problems += check_options(family, self.model.model_extra or {})
            self.model.name = family
        # Set and not the default: a run's saved config.yaml spells out every default, and must load again.
        foreign = [
            key
            for key in TEXT_DATA_KEYS
            if key not in task.data_keys
            and key in self.data.model_fields_set
            and getattr(self.data, key) != DataConfig.model_fields[key].get_default(call_default_factory=True)
        ]
        if foreign:
            problems.append(
                f"data.{', data.'.join(foreign)}: only for task text_classification; this config's "
                f"task is {self.task}. Remove the key(s) or change the task."
            )
        shardable = [name for name, family in FAMILIES.items() if family.shards]
        if self.train.strategy == "fsdp" and self.model.name not in shardable:
            problems.append(
                f"train.strategy: fsdp shards a model's transformer blocks across processes, and model.name "
                f"{self.model.name!r} has none to shard (fsdp trains {', '.join(shardable)}). Use "
                "train.strategy: ddp, or leave it out (ddp is the default with --nproc)."
            )
        if self.tune is not None and self.tune.direction is not None:
            metric = self.tune.metric or task.default_monitor
            natural = "minimize" if metric in MINIMIZED else "maximize"
            if self.tune.direction != natural:
                problems.append(
                    f"tune.direction: {self.tune.direction} contradicts metric {metric}, which is best "
                    f"{'low' if natural == 'minimize' else 'high'}; remove direction or set it to {natural}"
                )
        problems += _fairness_problems(self) + _refit_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        self._user_keys = self._keys_set() - set(self.recipe)  # keys a saved recipe filled are not the user's
        family = None if self.model.name == AUTO else family_of(self.model.name)
        for key, value in family.recipe.items() if family else ():
            if key not in self._user_keys:
                _assign(self, key, value)
                self.recipe[key] = f"{self.model.name} recipe"
        for key, value in task.family_recipes.get(self.model.name, {}).items():
            if key not in self._user_keys:
                _assign(self, key, value)
                self.recipe[key] = f"{self.model.name} recipe for {task.name}"
        if self.train.monitor is None:
            self.train.monitor = task.default_monitor
            self.recipe["train.monitor"] = (
                f"task default ({task.default_monitor}; val_loss below {SMALL_VAL} validation examples)"
            )
        problems = freeze_problems(self.train, self.model.name)
        if problems:
            raise ValueError("\n".join(problems))
        trained_by_loop = family is None or family.trains is None  # auto: each candidate decides
        if "train.epochs" not in self._user_keys and "train.epochs" not in self.recipe and trained_by_loop:
            self.recipe["train.epochs"] = "chosen from the data at run time"
            if "train.early_stopping_patience" not in self._user_keys:
                self.recipe["train.early_stopping_patience"] = "chosen with the epochs at run time"
        if self.tune is not None and self.tune.metric is None:
            self.tune.metric = task.default_monitor
        return self

    def _keys_set(self) -> set[str]:
        """Dotted keys the config gives a value, in the sections a recipe fills."""
        keys = {f"train.{k}" for k in self.train.model_fields_set}
        keys |= {f"data.{k}" for k in self.data.model_fields_set if k != "augment"}
        keys |= {f"model.{k}" for k in self.model.model_extra or {}}
        if "augment" in self.data.model_fields_set:
            keys |= {f"data.augment.{k}" for k in self.data.augment.model_fields_set}
        return keys

    def user_set(self, key: str) -> bool:
        """Whether the user's config (or --set) gave `key` ("train.monitor"), not a recipe or default."""
        return key in self._user_keys


def _fairness_problems(cfg: Config) -> list[str]:
    sensitive, balance = cfg.evaluate.sensitive, cfg.train.balance_groups
    problems = []
    if len(set(sensitive)) != len(sensitive):
        problems.append(f"evaluate.sensitive: {sensitive} names a column twice; name each once")
    if balance is not None and balance not in sensitive:
        problems.append(
            f"train.balance_groups: {balance!r} is not a column of evaluate.sensitive "
            f"({sensitive or 'empty'}); add it there, so the report shows the gaps the re-weighting leaves"
        )
    policy = cfg.evaluate.threshold_policy
    if policy is not None and policy.sensitive not in sensitive:
        problems.append(
            f"evaluate.threshold_policy.sensitive: {policy.sensitive!r} is not a column of "
            f"evaluate.sensitive ({sensitive or 'empty'}); add it there, so the report shows the gaps "
            "before and after"
        )
    return problems


def _refit_problems(cfg: Config) -> list[str]:
    """train.refit: true needs a validation split to stop on, and no --folds (whose final model already
    trains on train+val)."""
    if not cfg.train.refit:
        return []
    if cfg.train.folds:
        return [
            (
                f"train.refit: true, and --folds {cfg.train.folds} already trains the final model on all of "
                "train+val; remove one of them (--set train.refit=false keeps --folds)"
            )
        ]
    if cfg.data.split.val == 0 and not cfg.data.val_source:
        return [
            (
                "train.refit: true trains the model again on train+val for as long as early stopping on the "
                "validation split kept it, and data.split.val is 0: there is no validation split. Set "
                "data.split.val above 0 (0.1 is usual), or remove train.refit."
            )
        ]
    return []


def freeze_problems(train: TrainConfig, family: str) -> list[str]:
    """freeze_epochs must leave epochs that train the whole model."""
    if train.freeze_epochs and train.freeze_epochs >= train.epochs and not train.features_only:
        return [
            (
                f"train.freeze_epochs: {train.freeze_epochs} is not below train.epochs ({train.epochs}), so "
                "the backbone would never be fine-tuned. Lower freeze_epochs, raise epochs, or set "
                "train.features_only: true to train the head alone."
            )
        ]
    return []


def _assign(config: BaseModel, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = config
    for part in path:
        node = getattr(node, part)
    setattr(node, last, value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` strings to a nested dict; values are parsed as YAML (`5`, `true`, `[1, 2]`)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, for example --set train.epochs=5")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    return raw


def _format_errors(error: ValidationError, origin: str) -> str:
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section, field = _split_key(err["loc"])
            hint = did_you_mean(field, _fields_of(section))
            lines.append(f"  {key}: unknown key.{hint}")
        elif err["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        elif err["type"] == "model_options":  # each already names its key, model.KEY
            lines += [f"  {problem}" for problem in err["ctx"]["problems"]]
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if not key and err["type"] == "value_error":  # the task's checks: one problem a line, each keyed
                lines += [f"  {line}" for line in msg.splitlines()]
                continue
            shown = "" if err["type"].startswith("value_error") else f" (got {err.get('input')!r})"
            lines.append(f"  {key or '(top level)'}: {msg}{shown}")
    return f"{origin}: {len(lines)} problem(s) in the config:\n" + "\n".join(lines)


def _split_key(loc: tuple) -> tuple[type[BaseModel], str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        annotation = next(
            (a for a in getattr(annotation, "__args__", ()) if a is not type(None)), annotation
        )  # X | None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model, str(loc[-1])


def _fields_of(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> tuple[Config, Path]:
    """Read, override and validate a config.

    Returns:
        The validated config and the folder that relative data paths are resolved against.
    """
    if isinstance(source, dict):
        raw, origin, base = copy.deepcopy(source), "config", Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(
                f"config file not found: {path}. Create one with `foundry init --task image_classification`."
            )
        try:
            with open(path, encoding="utf-8") as stream:  # a stream, so YAML errors name the file
                raw = yaml.safe_load(stream)
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML: {exc}{_quote_lines(path, exc)}") from None
        if not isinstance(raw, dict):
            raise UserError(
                f"{path}: expected a mapping of keys (task:, data:, model:, train:), got {type(raw).__name__}"
            )
        origin, base = str(path), path.resolve().parent
    raw = apply_overrides(raw, overrides or [])
    if "task" in raw and raw["task"] not in TASKS:
        raise UserError(
            f"{origin}: task: {raw['task']!r} is not a task here. Allowed: {', '.join(TASKS)}."
            + did_you_mean(str(raw["task"]), TASKS)
        )
    try:
        return Config.model_validate(raw), base
    except ValidationError as exc:
        raise UserError(_format_errors(exc, origin)) from None


def _quote_lines(path: Path, exc: yaml.YAMLError) -> str:
    """The lines a YAML error points at, so the user sees the mistake without opening the file."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    marks = [getattr(exc, name, None) for name in ("context_mark", "problem_mark")]
    numbers = sorted(
        {m.line for m in marks if m is not None and m.line < len(lines) and lines[m.line].strip()}
    )
    return "".join(f"\n  line {n + 1}: {lines[n]}" for n in numbers)


def config_to_dict(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json")


def absolute_paths(config: dict, base_dir: Path) -> dict:
    """A run's saved config (a dict) with its relative data and model paths made absolute against the
    folder of the original config (`base_dir`), so retraining and compressing work from any folder."""
    data, model = config["data"], config["model"]
    for section, key in (
        (data, "source"),
        (data, "val_source"),
        (data, "test_source"),
        (data, "tokenizer"),
        (model, "path"),
    ):
        value = section.get(key)
        if (
            isinstance(value, str)
            and not value.startswith("builtin:")
            and not Path(value).is_absolute()
            and (base_dir / value).exists()
        ):
            section[key] = str((base_dir / value).resolve())
    return config
