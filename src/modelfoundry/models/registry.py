"""Model families by name, and what foundry knows about each besides how to build it.

Adding a family = one new file with a `build_*` function + one line in FAMILIES. The builders import
torch, so the registry names them as "module:function" and imports one only to build a model: the
config's model options are checked against the builder's signature read from its source file.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from modelfoundry.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Family:
    """A model family: its builder, the data it takes, and how `foundry compress` makes it smaller.

    Attributes:
        builder: "module:function" of `build(input_shape, num_classes, [vocab_size, pad_id,] **options)`;
            its keyword arguments with defaults are the family's `model:` options.
        takes: "tables or images" (flattened), "tables" (F,), "images" (C, H, W), "text" (token ids, B x T,
            classified) or "token stream" (token ids B x T, each position predicting the next).
        int8: "static" quantization (activations scaled from a calibration sample: what convolutions need
            to run faster) or "dynamic" (activations scaled per batch: enough where MatMul/Gemm cost most).
        prune: the function in the builder's module that prunes a model of this family (None: it can't be),
            `prune(model, options, ratio, build) -> (smaller model, changed options, plan)`: `options`
            with defaults; `build(**changes)` builds the model's options with `changes` applied.
        prunes: what pruning removes, in the user's words.
        width_option: the option that sets the layer widths; a half-size student scales it by 0.7.
        width_multiple_of: the option the width must stay a multiple of (a transformer's heads).
        student: the family of a half-size student when this one has no width to scale.
        from_package: the function in the builder's module that gives the options to rebuild the
            architecture from a model package folder (`(folder) -> options`; None: the saved options do).
        recipe: the family's default training recipe, dotted config key -> value, applied where the
            user's config leaves the key unset (user config > recipe > task default > global default).
            Chosen by measurement: bench/defaults.py, results in bench/RESULTS.md. `model.` keys set the
            family's options.
        steps: the optimizer steps a run of this family gets when foundry chooses its epochs from the data
            size (`train.epochs` unset by the config and the recipe; builder.run_time_choices).
        min_epochs: the fewest epochs foundry chooses so, however many steps an epoch has (a large set).
        trains: the function in the builder's module that trains a model of this family in place of the
            gradient loop, with `training.loop.fit`'s arguments and result (None: the loop trains it).
        rounds: the `model:` option that counts the rounds of a family that trains itself, where its
            FitResult's best epoch is a round (gbdt: boosting rounds); `--folds` sets it, not train.epochs,
            for the final model.
        loads: the function in the builder's module that loads a package folder's model itself, `(folder) ->
            model` (pretrained_lm: the base model it names, checked by sha256, plus the package's adapter).
        retrains: the function in the builder's module that runs `foundry retrain` for a champion of this
            family in place of retrain.py's flow, with its arguments (pretrained_lm: feedback answers -> SFT).
        shards: whether `train.strategy: fsdp` can shard it across processes: each element of its
            nn.ModuleLists (a transformer's blocks) becomes a unit of FSDP, then the root
            (training/distributed.py).
        for_inputs: the family this name stands for on another kind of input (a task's `kind`): `pretrained`
            is a Hugging Face encoder for text and an ImageNet backbone for images.
    """

    builder: str
    takes: Literal["tables or images", "tables", "images", "text", "token stream", "interactions"]
    int8: Literal["static", "dynamic"] = "dynamic"
    prune: str | None = None
    prunes: str = ""
    width_option: str | None = None
    student: str | None = None
    from_package: str | None = None
    width_multiple_of: str | None = None
    recipe: dict = field(default_factory=dict)
    steps: int = 1000
    min_epochs: int = 10
    trains: str | None = None
    rounds: str | None = None
    for_inputs: dict[str, str] = field(default_factory=dict)
    loads: str | None = None
    retrains: str | None = None
    shards: bool = False


AUTO = "auto"  # model.name: foundry picks the family when `foundry train` runs (tasks: `auto_models`)
# Recipes (bench/defaults.py measures each against a tuned configuration). Trained from scratch:
# AdamW with decoupled weight decay and a decaying schedule; epochs are left to the data size and the
# time budget (runner: chosen at run time), with early stopping on the validation loss.
_FROM_SCRATCH = {"train.optimizer": "adamw", "train.schedule": "cosine"}
_IMAGE_RECIPE = {
    **_FROM_SCRATCH,
    "train.lr": 0.003,
    "train.weight_decay": 0.0005,
    "train.schedule": "onecycle",
    "train.warmup": 0.2,  # onecycle's rising part
    "train.label_smoothing": 0.05,
    "data.augment.crop_padding": 1,  # small shifts and turns; no flips (a flipped 2 is no 2)
    "data.augment.rotation": 10,
}
# Image models from scratch get fewer steps than the default 1,000 when foundry chooses the epochs: on
# digits (3 seeds, bench/RESULTS.md) 300 steps (15 epochs) scored 0.992, 500 (25) 0.996 and 1,000 (50)
# 0.990; 300 took about half of 500's time and less than a 20-trial tuned config (30 epochs).
# Larger sets reach the floor of epochs first (MNIST-10k: 115 steps an epoch, 3 epochs of steps). That floor
# is 7 epochs for the resnet, not the 10 of other families, measured with the cnn of 2 stages (the cnn's
# own floor is below): on MNIST-10k (4 seeds, bench/RESULTS.md) 7 epochs scored 0.9878 against 0.9891 at 10
# and 0.9884 for a 20-trial tuned config (which trains 7), in 0.7 of the time of 10; 6 epochs 0.9864. Not
# measured on the resnet itself.
_IMAGE_STEPS = 300
_IMAGE_MIN_EPOCHS = 7
# The cnn's depth is "auto" in its recipe: 3 stages for 28x28 images where it had 2 (models/cnn.py
# auto_depth; 8x8 digits keep 2). The deeper network needs fewer epochs: 3 stages at 5 epochs scored
# MNIST-10k 0.9948 and Fashion-MNIST (10,000 images) 0.8788 over 3 seeds, against 0.9872 and 0.8375 for 2
# stages at 7, in 1.02-1.03x the time; at 4 epochs 0.9935 and 0.8657 in 0.89x (bench/RESULTS.md).
_CNN_MIN_EPOCHS = 5
_SEQUENCE_RECIPE = {
    **_FROM_SCRATCH,
    "train.lr": 0.002,
    "train.weight_decay": 0.01,
    "train.warmup": 0.05,
    "train.grad_clip": 1.0,
}
# Recurrent text models (lstm, gru): a one-cycle rate peaking at 0.01, almost no weight decay, 10 epochs
# run to the schedule's end (the best epoch's weights kept). Taken from a 20-trial LSTM study on 1,000
# SST-2 phrases (lr 0.0098, one-cycle, weight decay 1.6e-5, 15 epochs) and judged on text it was not
# chosen on, eight Shakespeare plays (a speech -> its play, 3 seeds): 0.406 against 0.336 for the recipe
# above and 0.372 for a 20-trial study of that data, in 0.6 of the study's time; on the SST-2 phrases
# 0.654 (LSTM) and 0.652 (GRU) against 0.641 and 0.637 in half the time (bench/RESULTS.md, "Defaults
# against tuning"). 10 epochs, not the study's 15: as good (0.406 against 0.401) in two thirds the time.
# Not the transformer's: on the SST-2 phrases it scored 0.643 with this recipe, 0.659 with the one above.
_RNN_RECIPE = {
    **_SEQUENCE_RECIPE,
    "train.lr": 0.01,
    "train.schedule": "onecycle",
    "train.weight_decay": 1.0e-5,
    "train.epochs": 10,
}
# Fine-tuning a pretrained image backbone, fastai's `fine_tune` (Howard & Gugger 2020): the new head
# alone first, then everything, the backbone at a tenth of the head's rate; few epochs. Measured in
# bench/vision.py.
_PRETRAINED_IMAGE_RECIPE = {
    "train.optimizer": "adamw",
    "train.lr": 0.002,
    "train.lr_backbone": 0.0002,
    "train.weight_decay": 0.01,
    "train.schedule": "cosine",
    "train.warmup": 0.1,
    "train.batch_size": 32,
    "train.epochs": 3,
    "train.freeze_epochs": 1,
    "data.augment.crop_padding": 1,
}
FAMILIES: dict[str, Family] = {
    "mlp": Family(
        "modelfoundry.models.mlp:build_mlp",
        "tables or images",
        prune="prune_mlp",
        prunes="hidden units",
        width_option="hidden",
        recipe={**_FROM_SCRATCH, "train.lr": 0.003, "train.weight_decay": 0.01, "train.batch_size": 32},
    ),
    "cnn": Family(
        "modelfoundry.models.cnn:build_cnn",
        "images",
        int8="static",
        prune="prune_cnn",
        prunes="channels",
        width_option="width",
        recipe={**_IMAGE_RECIPE, "model.depth": "auto"},  # stages from the image size: models/cnn.py
        steps=_IMAGE_STEPS,
        min_epochs=_CNN_MIN_EPOCHS,
    ),
    "resnet": Family(
        "modelfoundry.models.resnet:build_resnet",
        "images",
        int8="static",
        prune="prune_resnet",
        prunes="channels",
        width_option="width",
        recipe=_IMAGE_RECIPE,
        steps=_IMAGE_STEPS,
        min_epochs=_IMAGE_MIN_EPOCHS,
    ),
    "lstm": Family(
        "modelfoundry.models.rnn:build_lstm",
        "text",
        prune="prune_rnn",
        prunes="hidden units",
        width_option="hidden",
        recipe=_RNN_RECIPE,
    ),
    "gru": Family(
        "modelfoundry.models.rnn:build_gru",
        "text",
        prune="prune_rnn",
        prunes="hidden units",
        width_option="hidden",
        recipe=_RNN_RECIPE,
    ),
    "transformer": Family(
        "modelfoundry.models.transformer:build_transformer",
        "text",
        prune="prune_transformer",
        prunes="feed-forward units",
        width_option="width",
        width_multiple_of="heads",
        recipe=_SEQUENCE_RECIPE,
    ),
    # Gradient-boosted trees (LightGBM): more rounds at half LightGBM's learning rate, stopped by the
    # validation loss (bench/tables.py); trees sized by the training rows and 80% of the features per tree
    # (bench/gbdt_recipe.py: chosen on randhie and fair, checked on five other tables)
    "gbdt": Family(
        "modelfoundry.models.gbdt:build_gbdt",
        "tables",
        trains="fit_gbdt",
        rounds="n_estimators",
        recipe={
            "model.n_estimators": 2000,
            "model.learning_rate": 0.05,
            "model.num_leaves": "auto",  # from the training rows: models/gbdt.py size_aware
            "model.min_child_samples": "auto",
            "model.colsample_bytree": 0.8,
            "train.early_stopping_patience": 50,
        },
    ),
    # Logistic regression for classes, ridge regression for a number: one Linear layer fitted by L-BFGS to
    # convergence (no lr, epochs or batches); L2 1/N, scikit-learn's default, which scored above a strength
    # chosen on the validation loss on five small tables (bench/RESULTS.md, tables over seeds). auto's
    # third candidate since small tables are compared out of folds (runner._pick).
    "linear": Family(
        "modelfoundry.models.linear:build_linear",
        "tables",
        trains="fit_linear",
        recipe={"model.l2": "auto"},
    ),
    # A fine-tuned encoder's architecture is fixed by its folder: its student is trained from scratch.
    "pretrained": Family(
        "modelfoundry.models.pretrained:build_pretrained",
        "text",
        prune="prune_pretrained",
        prunes="feed-forward units of BERT-style encoders",
        student="lstm",
        from_package="package_options",
        for_inputs={"image": "pretrained_image"},
        # the fine-tuning recipe of BERT (Devlin et al. 2019): a small lr, warm-up, linear decay, few epochs;
        # the new head learns faster than the encoder
        recipe={
            "train.optimizer": "adamw",
            "train.lr": 5.0e-5,
            "train.lr_head": 1.0e-3,
            "train.schedule": "linear",
            "train.warmup": 0.1,
            "train.weight_decay": 0.01,
            "train.batch_size": 32,
            "train.epochs": 3,
        },
    ),
    # A decoder-only transformer trained from scratch (text_generation): nanoGPT's recipe (AdamW, decay 0.1
    # on matrices only, warm-up + cosine, clipping at 1); the task picks its size and steps from the corpus
    # and the time budget when the config leaves them out (tasks/generation.py)
    "gpt": Family(
        "modelfoundry.models.gpt:build_gpt",
        "token stream",
        width_option="n_embd",
        width_multiple_of="n_head",
        retrains="retrain_from_feedback",
        recipe={
            "train.optimizer": "adamw",
            "train.lr": 0.001,
            "train.weight_decay": 0.1,
            "train.schedule": "cosine",
            "train.warmup": 0.05,
            "train.grad_clip": 1.0,
            "train.batch_size": 32,
        },
        shards=True,
    ),
    # A pretrained causal LM (SmolLM2-135M-Instruct by default) for text_generation, fine-tuned by llm/sft.py:
    # LoRA by default (train.method), with its own learning rate and epochs (llm/sft.py DEFAULTS)
    "pretrained_lm": Family(
        "modelfoundry.models.pretrained_lm:build_pretrained_lm",
        "token stream",
        loads="package_model",
        retrains="retrain_from_feedback",
    ),
    # An ImageNet-pretrained EfficientNet-Lite: what `pretrained` means for images (`for_inputs` above).
    "pretrained_image": Family(
        "modelfoundry.models.efficientnet:build_pretrained_image",
        "images",
        int8="static",
        prunes="",
        student="cnn",
        from_package="package_options",
        recipe=_PRETRAINED_IMAGE_RECIPE,
    ),
    # Recommendation (user-item interactions): input_shape is (number of users,), num_classes the items.
    "popularity": Family(
        "modelfoundry.models.popularity:build_popularity", "interactions", trains="fit_popularity"
    ),
    "two_tower": Family("modelfoundry.models.two_tower:build_two_tower", "interactions", width_option="dim"),
    # Matrix factorisation: a softmax over every item (negatives 0), Adam at 0.001 in batches of 256 with
    # weight decay 1e-4: the best validation NDCG@10 on MovieLens-100k of the settings bench/recommend.py
    # --grid searches (BPR, a 64-negative sampled softmax, learning rates, weight decay, width; RESULTS.md)
    "mf": Family(
        "modelfoundry.models.mf:build_mf",
        "interactions",
        width_option="dim",
        recipe={
            "model.negatives": 0,
            "train.optimizer": "adam",
            "train.lr": 0.001,
            "train.batch_size": 256,
            "train.weight_decay": 0.0001,
            "train.epochs": 40,
            "train.early_stopping_patience": 5,
        },
    ),
}
IMAGE_ONLY = {name for name, family in FAMILIES.items() if family.takes == "images"}
# Text families take token ids (B, T); the data adds the tokenizer's vocab_size and pad_id.
TEXT_ONLY = {name for name, family in FAMILIES.items() if family.takes == "text"}
# Families that predict the next token of a token stream (text_generation); they take a tokenizer too.
GENERATIVE = {name for name, family in FAMILIES.items() if family.takes == "token stream"}
# Builder arguments that come from the data, not from `model:`.
DATA_ARGUMENTS = ("input_shape", "num_classes", "vocab_size", "pad_id", "category_blocks")
# What annotations can't say, by option name (a name means the same thing in every family):
# the test a value must pass and the words for what it must be.
LIMITS: dict[str, tuple[Callable[[float], bool], str]] = {
    **dict.fromkeys(
        (
            *(
                "width",
                "depth",
                "hidden",
                "blocks_per_stage",
                "heads",
                "layers",
                "embed_dim",
                "ffn_multiplier",
            ),
            *("n_layer", "n_head", "n_embd", "block_size"),
            "dim",
        ),
        (lambda v: v >= 1, "a positive whole number"),
    ),
    "negatives": (lambda v: v >= 0, "a whole number: 0 (softmax over every item), 1 (BPR) or more"),
    "freeze_layers": (lambda v: v >= 0, "a whole number of layers, 0 or more"),
    "dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    **dict.fromkeys(("n_estimators", "min_child_samples"), (lambda v: v >= 1, "a positive whole number")),
    "num_leaves": (lambda v: v >= 2, "a whole number, 2 or more"),
    "max_depth": (lambda v: v == -1 or v >= 1, "a positive whole number, or -1 for no limit"),
    "max_bin": (lambda v: v >= 2, "a whole number, 2 or more"),
    "learning_rate": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    **dict.fromkeys(("subsample", "colsample_bytree"), (lambda v: 0 < v <= 1, "a number in (0, 1]")),
    **dict.fromkeys(("reg_lambda", "reg_alpha", "l2"), (lambda v: v >= 0, "a number, 0 or more")),
}


def family_of(name: str) -> Family:
    """The family called `name`; an unknown name is a UserError that suggests the nearest."""
    if name == AUTO:
        raise UserError(
            "model.name: auto picks a family when `foundry train` runs; here name one: "
            f"{', '.join(FAMILIES)}."
        )
    if name not in FAMILIES:
        raise UserError(_unknown(name))
    return FAMILIES[name]


def _unknown(name: str) -> str:
    return (
        f"model.name: unknown model '{name}'.{did_you_mean(name, FAMILIES)} Available: "
        f"{', '.join(FAMILIES)}; for tables also auto (foundry picks gbdt, mlp or linear)."
    )


def family_for(name: str, kind: str) -> str:
    """The family that model name `name` means for inputs of `kind` (a task's kind: image, text, table)."""
    family = FAMILIES.get(name)
    return family.for_inputs.get(kind, name) if family else name


def family_function(name: str, function: str | None = None) -> Callable:
    """The builder of family `name` (imports its module, and with it torch), or another function beside it."""
    module, builder = family_of(name).builder.split(":")
    return getattr(importlib.import_module(module), function or builder)


@functools.cache
def signature(name: str) -> inspect.Signature:
    """The builder's signature, read from its source file so that checking a config imports no torch;
    imported when that can't be done (no source file, or a default that is more than a literal)."""
    module, builder = family_of(name).builder.split(":")
    try:
        source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
        node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == builder)
        return _signature_of(node)
    except (AttributeError, OSError, StopIteration, SyntaxError, TypeError, ValueError):
        return inspect.signature(family_function(name))


def _signature_of(node: ast.FunctionDef) -> inspect.Signature:
    """What `inspect.signature` says of the function `node` defines, with annotations as text (as under
    `from __future__ import annotations`); ValueError when a default is not a literal."""
    P, args = inspect.Parameter, node.args

    def annotation(arg: ast.arg) -> str:
        return ast.unparse(arg.annotation) if arg.annotation else P.empty

    positional = [*args.posonlyargs, *args.args]
    defaults = [P.empty] * (len(positional) - len(args.defaults)) + [
        ast.literal_eval(d) for d in args.defaults
    ]
    kinds = [P.POSITIONAL_ONLY] * len(args.posonlyargs) + [P.POSITIONAL_OR_KEYWORD] * len(args.args)
    params = [
        P(a.arg, k, default=d, annotation=annotation(a)) for a, k, d in zip(positional, kinds, defaults)
    ]
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL, annotation=annotation(args.vararg)))
    params += [
        P(
            a.arg,
            P.KEYWORD_ONLY,
            default=P.empty if d is None else ast.literal_eval(d),
            annotation=annotation(a),
        )
        for a, d in zip(args.kwonlyargs, args.kw_defaults)
    ]
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD, annotation=annotation(args.kwarg)))
    returns = ast.unparse(node.returns) if node.returns else inspect.Signature.empty
    return inspect.Signature(params, return_annotation=returns)


def model_options(name: str) -> dict[str, object]:
    """The keyword arguments a family accepts, with their defaults."""
    return {
        p.name: p.default
        for p in signature(name).parameters.values()
        if p.name not in DATA_ARGUMENTS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def check_options(name: str, options: dict) -> list[str]:
    """Every problem with the `model:` options of family `name`, each as "model.KEY: what is wrong".

    Generated from the builder's signature: an unknown key, or a value that is not of the annotated type
    (int, float, bool, str, None, list[...], Literal[...] and unions of them) or outside LIMITS.
    Returns [] when they all fit; reads no data and imports no torch.
    """
    if name == AUTO:
        return [
            f"model.{key}: model.name auto takes no options; name the family they belong to (model.name: "
            f"gbdt, mlp or linear)." + did_you_mean(key, [k for f in FAMILIES for k in model_options(f)])
            for key in options
        ]
    if name not in FAMILIES:
        return [_unknown(name)]
    parameters = signature(name).parameters
    any_key = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    allowed = model_options(name)
    listing = ", ".join(f"{k} (default {v!r})" for k, v in allowed.items())
    problems = []
    for key, value in options.items():
        if key not in allowed:
            if not any_key:
                problems.append(
                    f"model.{key}: not an option of '{name}'.{did_you_mean(key, allowed)} "
                    f"Options of '{name}': {listing}."
                )
            continue
        kind = _type(parameters[key].annotation)
        if not _fits(value, kind, key):
            hint = did_you_mean(value, typing.get_args(kind)) if typing.get_origin(kind) is Literal else ""
            problems.append(f"model.{key}: {value!r} must be {_words(kind, key)}.{hint}")
    return problems


# The names an option's annotation may use. Evaluated without builtins: the annotations are our own
# builders' source, and any other name leaves the value unchecked.
_ANNOTATION_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "tuple": tuple}


def _type(annotation: object) -> object:
    if not isinstance(annotation, str):
        return typing.Any if annotation is inspect.Parameter.empty else annotation
    try:
        return eval(annotation, {"__builtins__": {}, "Literal": Literal}, _ANNOTATION_NAMES)
    except Exception:  # noqa: BLE001  (a name this check does not know: anything goes)
        return typing.Any


def _fits(value: object, kind: object, key: str) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a, key) for a in args)
    if origin in (list, tuple):  # YAML gives lists; the builders' defaults are tuples
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0], key) for v in value)
    if kind is type(None):
        return value is None
    if kind is bool or kind is str:
        return isinstance(value, kind)
    if kind is int or kind is float:
        number = isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
        return number and (key not in LIMITS or LIMITS[key][0](value))
    return True


def _words(kind: object, key: str) -> str:
    """What a value of `kind` is, in the user's (YAML's) words."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_words(a, key) for a in args)
    if origin in (list, tuple):
        return "a list, each " + _words(args[0], key)
    if key in LIMITS and kind in (int, float):
        return LIMITS[key][1]
    words = {int: "a whole number", float: "a number", bool: "true or false", str: "text", type(None): "null"}
    return words.get(kind, str(kind))


def prunable() -> str:
    """The families `foundry compress --prune` takes, and what it removes from each."""
    return ", ".join(f"{name} ({family.prunes})" for name, family in FAMILIES.items() if family.prune)


def half_student(name: str, options: dict) -> dict[str, object]:
    """The `model:` section of a student with about half the parameters of a family `name` model with
    `options`: its width option scaled by 0.7 (weights grow with the width squared), or another family."""
    family = family_of(name)
    if family.student:
        return {"name": family.student}
    if family.width_option is None:
        raise UserError(
            f"--distill: foundry knows no half-size student of a '{name}' model; describe one, "
            "e.g. --student model.name=mlp --student model.hidden=[64]."
        )
    key, defaults = family.width_option, model_options(name)
    width = options.get(key, defaults[key])
    step = int(options.get(family.width_multiple_of, defaults.get(family.width_multiple_of, 1)) or 1)

    def scaled(w: int) -> int:  # 0.7 of the width, kept a multiple of `step` (256 wide, 4 heads: 180)
        return max(step, round(w * 0.7 / step) * step)

    smaller = [scaled(w) for w in width] if isinstance(width, (list, tuple)) else scaled(width)
    return {"name": name, key: smaller}


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    text: dict | None = None,
    table: dict | None = None,
    **options,
) -> nn.Module:
    """Build family `name` for examples of `input_shape`; unknown names and options are UserErrors.

    Args:
        text: for text data, {"vocab_size", "pad_id"} of the tokenizer; None for images and tables.
        table: for tables, {"category_blocks"}: [start, width] of each category's one-hot block, passed to
            the families whose builder takes it (gbdt); None for images and texts.
    """
    problems = check_options(name, options)
    if problems:
        raise UserError("\n".join(problems))
    if name in GENERATIVE and num_classes:
        raise UserError(
            f"model.name: '{name}' generates text (task: text_generation) and classifies nothing; "
            f"classify text with one of {', '.join(sorted(TEXT_ONLY))}."
        )
    if (name in TEXT_ONLY | GENERATIVE) != (text is not None):
        families = ", ".join(sorted(TEXT_ONLY))
        raise UserError(
            f"model.name: '{name}' is not a model for this data. "
            + (
                f"Text takes one of {families}."
                if text
                else f"{families} take text; use mlp for tables and cnn, resnet or mlp for images."
            )
        )
    if name in IMAGE_ONLY and len(input_shape) != 3:
        raise UserError(
            f"model.name: '{name}' needs images (C, H, W); this data has shape {input_shape}. "
            "Use model.name: mlp for tables."
        )
    data_args = {"vocab_size": text["vocab_size"], "pad_id": text["pad_id"]} if text is not None else {}
    if table is not None and "category_blocks" in signature(name).parameters:
        data_args["category_blocks"] = table["category_blocks"]
    try:
        return family_function(name)(tuple(input_shape), num_classes, **data_args, **options)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"model: options {options} do not build a '{name}': {exc}.") from None
