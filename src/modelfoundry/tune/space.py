"""The search space of `tune.space`: parsed, checked against the real config, and sampled per trial.

```yaml
tune:
  space:
    train.lr: {loguniform: [1.0e-4, 1.0e-2]}
    train.weight_decay: {uniform: [0.0, 0.01], step: 0.001}
    model.width: {choice: [16, 32, 64]}
    train.batch_size: {int: [16, 128], step: 16}
```

Every key must be a key of the config (`train.lr`, `data.split.val`) or an option of the model family
(`model.width`); every end of a range and every choice must be a value the config accepts. All problems
are reported at once, each with the key, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from modelfoundry.config import Config
from modelfoundry.errors import UserError, did_you_mean
from modelfoundry.models.registry import FAMILIES, model_options

KINDS = {
    "loguniform": "{loguniform: [lo, hi]}",
    "uniform": "{uniform: [lo, hi], step: k}",
    "int": "{int: [lo, hi], step: k}",
    "choice": "{choice: [a, b, ...]}",
}
EXTRAS = {
    "loguniform": (),
    "uniform": ("step",),
    "int": ("step", "log"),
    "choice": (),
}  # optional keys per kind
NOT_TUNABLE = ("task", "tune")
EXAMPLE = (
    "tune:\n  space:\n    train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n    model.width: {choice: [16, 32, 64]}"
)


@dataclass(frozen=True)
class Dimension:
    """One tuned key. Ranges have `low`/`high` (and `step`, `log`); choices have `choices`."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """This dimension's value for an Optuna trial, as the config takes it."""
        if self.kind == "choice":
            return self.decode(trial.suggest_categorical(self.key, [_encode(c) for c in self.choices]))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(
            self.key, self.low, self.high, step=self.step, log=self.kind == "loguniform"
        )

    def decode(self, value: Any) -> Any:
        """Optuna stores choices that are lists or dicts (`model.hidden: [16, 16]`) as JSON text."""
        if self.kind == "choice":
            return next((c for c in self.choices if _encode(c) == value), value)
        return value

    def describe(self) -> str:
        if self.kind == "choice":
            return "choice of " + ", ".join(str(_encode(c)) for c in self.choices)
        extra = f" step {self.step:g}" if self.step else " log" if self.log else ""
        return f"{self.kind} [{self.low:g}, {self.high:g}]{extra}"


def _encode(choice: Any) -> Any:
    """Optuna's categorical values are None, bool, int, float or str; anything else goes as JSON."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice)


def parse_space(cfg: Config, raw: dict, origin: str) -> list[Dimension]:
    """The dimensions of `cfg.tune.space`, or a UserError listing every problem.

    Args:
        cfg: the validated config; `raw`: the same config as a dict (YAML + --set), into which values are
            put to check them; `origin`: the config file, named in the message.
    """
    space = cfg.tune.space if cfg.tune else {}
    if not space:
        raise UserError(
            f"{origin}: tune.space is empty: nothing to search. Name the keys and their ranges, "
            f"for example:\n{EXAMPLE}"
        )
    families = _families(cfg, space)
    keys, sections = _config_keys(Config), _config_sections(Config)
    options = _model_options(families) if any(k.startswith("model.") for k in space) else set()
    problems, dims = [], []
    for key, spec in space.items():
        where = f"  tune.space.{key}"
        if key.startswith("model.") and key != "model.name":
            if options is not None and key.removeprefix("model.") not in options:
                shown = ", ".join(sorted(options)) or "none"
                problems.append(
                    f"{where}: not an option of model {' or '.join(map(repr, families))}."
                    f"{_suggest(key, [f'model.{o}' for o in options])} Its options: {shown}"
                )
                continue
        elif key in sections:
            children = [k for k in keys if k.startswith(key + ".")]
            problems.append(f"{where}: is a section; tune one of its keys: {', '.join(children[:8])}")
            continue
        elif key not in keys:
            problems.append(
                f"{where}: not a config key.{_suggest(key, keys + [f'model.{o}' for o in options or ()])}"
                " Keys are dotted paths such as train.lr or model.width"
            )
            continue
        dim, errors = _parse_spec(key, spec)
        problems += [f"{where}: {e}" for e in errors or _check_values(cfg, raw, dim)]
        dims.append(dim)
    if not problems and not (cfg.data.split.val > 0 or cfg.data.val_source) and "data.split.val" not in space:
        problems.append(
            f"  data.split.val: 0 leaves no validation data to score trials by {cfg.tune.metric}; "
            "set it above 0 (e.g. 0.1) or give data.val_source"
        )
    if problems:
        raise UserError(f"{origin}: {len(problems)} problem(s) in tune.space:\n" + "\n".join(problems))
    return dims


def _suggest(key: str, keys: list[str]) -> str:
    """Did-you-mean among the keys of the same section when it exists (`train.lrr` -> `train.lr`), else
    all."""
    section, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == section}
    if not siblings:
        return did_you_mean(key, keys)
    hint = did_you_mean(leaf, siblings)
    for name, full in sorted(siblings.items(), key=lambda item: -len(item[0])):
        hint = hint.replace(f"'{name}'", f"'{full}'")
    return hint


def sample(trial, dims: list[Dimension]) -> dict[str, Any]:
    return {dim.key: dim.suggest(trial) for dim in dims}


def apply_values(raw: dict, values: dict[str, Any]) -> dict:
    """A copy of the config dict with each dotted key set to its value."""
    raw = copy.deepcopy(raw)
    for key, value in values.items():
        *sections, leaf = key.split(".")
        node = raw
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


# ---- checks -------------------------------------------------------------------------------------


def _parse_spec(key: str, spec: Any) -> tuple[Dimension | None, list[str]]:
    allowed = ", ".join(KINDS.values())
    if not isinstance(spec, dict):
        return None, [f"{spec!r} is not a search spec; write one of {allowed}"]
    kinds = [k for k in spec if k in KINDS]
    if len(kinds) != 1:
        if kinds:
            return None, [f"gives {' and '.join(kinds)}; give one kind: {allowed}"]
        unknown = next(iter(spec), "")
        return None, [f"unknown spec {unknown!r}.{did_you_mean(unknown, KINDS)} Allowed: {allowed}"]
    kind = kinds[0]
    extras = [k for k in spec if k != kind and k not in EXTRAS[kind]]
    if extras:
        return None, [
            f"{', '.join(map(repr, extras))} does not go with {kind}; {kind} takes "
            + (", ".join(EXTRAS[kind]) or "nothing else")
            + f": {KINDS[kind]}"
        ]
    if kind == "choice":
        choices = spec[kind]
        if not isinstance(choices, list) or not choices:
            what = "is empty" if choices in ([], None) else "is not a list"
            return None, [f"choice {choices!r} {what}: list the values to try, e.g. {{choice: [16, 32, 64]}}"]
        return Dimension(key, kind, choices=tuple(choices)), []
    return _parse_range(key, kind, spec)


def _parse_range(key: str, kind: str, spec: dict) -> tuple[Dimension | None, list[str]]:
    bounds = spec[kind]
    numbers = [_number(b) for b in bounds] if isinstance(bounds, list) else []
    if len(numbers) != 2 or None in numbers:
        return None, [f"{kind} {bounds!r} must be two numbers, low and high: {KINDS[kind]}"]
    low, high = numbers
    step, log = spec.get("step"), spec.get("log", False)
    if low == high:
        return None, [
            (
                f"{kind} [{low:g}, {high:g}] is an empty range: nothing to search. Set {key}: {low:g} in the "
                "config instead, or widen the range"
            )
        ]
    if low > high:
        return None, [
            (
                f"{kind} [{low:g}, {high:g}] is an empty range (low above high); write it low to high: "
                f"[{high:g}, {low:g}]"
            )
        ]
    if kind == "loguniform" and low <= 0:
        return None, [
            (
                f"loguniform [{low:g}, {high:g}] needs a low end above 0 (a log scale never reaches 0); "
                f"use uniform for ranges from 0"
            )
        ]
    if kind == "int":
        if not all(float(n).is_integer() for n in numbers):
            return None, [f"int [{low:g}, {high:g}] must be whole numbers; use uniform for fractions"]
        low, high = int(low), int(high)
        if not isinstance(log, bool):
            return None, [f"log {log!r} must be true or false"]
    if step is not None:
        step = _number(step)
        if step is None or step <= 0 or (kind == "int" and not float(step).is_integer()):
            return None, [
                f"step {spec['step']!r} must be a positive {'whole ' if kind == 'int' else ''}number"
            ]
        count = (high - low) / step
        if step > high - low or not math.isclose(count, round(count), rel_tol=1e-9, abs_tol=1e-9):
            return None, [
                (
                    f"step {step:g} does not divide the range [{low:g}, {high:g}] into equal steps; make "
                    f"high - low ({high - low:g}) a multiple of the step"
                )
            ]
        if log:
            return None, ["log and step do not go together (a log scale has no equal steps); drop one"]
        step = int(step) if kind == "int" else step
    return Dimension(key, kind, low, high, step, bool(log)), []


def _number(value: Any) -> float | None:
    """A number from YAML. PyYAML reads `1e-4` (no dot) as text, so numeric text counts too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _check_values(cfg: Config, raw: dict, dim: Dimension) -> list[str]:
    """Every end of the range and every choice put into the config must validate (model options are
    checked as each trial's config loads, against the family that trial builds)."""
    if dim.key == "model.name":
        if dim.kind != "choice":
            return [f"a model family is picked from a list: {{choice: [{', '.join(list(FAMILIES)[:2])}]}}"]
        return [
            f"choice {c!r} is not a model.{did_you_mean(str(c), FAMILIES)} Available: {', '.join(FAMILIES)}"
            for c in dim.choices
            if c not in FAMILIES
        ]
    if dim.key.startswith("model."):
        return []
    if dim.kind in ("uniform", "loguniform") and _whole_numbers_only(dim.key):
        return [f"{dim.key} takes whole numbers; use {{int: [{math.ceil(dim.low)}, {math.floor(dim.high)}]}}"]
    candidates = (
        [("choice", c) for c in dim.choices]
        if dim.kind == "choice"
        else [("low end", dim.low), ("high end", dim.high)]
    )
    problems = []
    for label, value in candidates:
        try:
            Config.model_validate(apply_values(raw, {dim.key: value}))
        except ValidationError as exc:
            reasons = "; ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in exc.errors()))
            problems.append(f"{label} {value!r} is not a valid {dim.key}: {reasons}")
    return problems


def _whole_numbers_only(key: str) -> bool:
    model: type[BaseModel] | None = Config
    *sections, leaf = key.split(".")
    for part in sections:
        model = _section_of(model.model_fields[part].annotation)
    return _section_of(model.model_fields[leaf].annotation, int) is int


def _families(cfg: Config, space: dict) -> list[str]:
    """The model families trials may build: model.name's choices when it is tuned, else the config's."""
    spec = space.get("model.name")
    if isinstance(spec, dict) and isinstance(spec.get("choice"), list) and spec["choice"]:
        return [str(c) for c in spec["choice"]]
    return [cfg.model.name]


def _model_options(families: list[str]) -> set[str] | None:
    """Options every one of the families accepts; None when a family is unknown (reported elsewhere)."""
    if any(f not in FAMILIES for f in families):
        return None
    return set.intersection(*(set(model_options(f)) for f in families))


def _section_of(annotation, kind: type = BaseModel) -> type | None:
    """The pydantic model (or other `kind`) of a field typed `X` or `X | None`; None for anything else."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = inner[0] if len(inner) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, kind) else None


def _config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key, dotted: task is fixed per config and tune is the search itself."""
    keys = []
    for name, field in model.model_fields.items():
        if not prefix and name in NOT_TUNABLE:
            continue
        section = _section_of(field.annotation)
        keys += _config_keys(section, f"{prefix}{name}.") if section else [f"{prefix}{name}"]
    return keys


def _config_sections(model: type[BaseModel], prefix: str = "") -> set[str]:
    sections = set()
    for name, field in model.model_fields.items():
        section = _section_of(field.annotation)
        if section and not (not prefix and name in NOT_TUNABLE):
            sections |= {f"{prefix}{name}"} | _config_sections(section, f"{prefix}{name}.")
    return sections
