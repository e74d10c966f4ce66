"""The config: defaults, `--set` overrides, and error messages that name the key, the value and the fix."""

from __future__ import annotations

import copy

import pytest

from modelfoundry.config import apply_overrides, load_config
from modelfoundry.errors import UserError

IMAGE = {"task": "image_classification", "data": {"source": "builtin:digits"}}
TABLE = {"task": "tabular_classification", "data": {"source": "people.csv", "label": "y"}}


def config_error(raw: dict, overrides: list[str] | None = None) -> str:
    with pytest.raises(UserError) as info:
        load_config(copy.deepcopy(raw), overrides)
    return str(info.value)


def test_defaults_fill_every_section():
    cfg, _ = load_config(IMAGE)
    assert cfg.model.name == "mlp"
    assert (cfg.train.epochs, cfg.train.optimizer, cfg.train.lr) == (20, "adam", 1e-3)
    assert (cfg.data.split.val, cfg.data.split.test) == (0.1, 0.2)
    assert cfg.data.missing == "impute" and cfg.data.dedupe is False


def test_yaml_file_is_read_and_relative_to_its_folder(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: image_classification\ndata:\n  source: builtin:digits\ntrain:\n  epochs: 3\n")
    cfg, base = load_config(path)
    assert cfg.train.epochs == 3
    assert base == tmp_path.resolve()


def test_missing_config_file_says_how_to_make_one(tmp_path):
    message = config_error_from_path(tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "foundry init" in message


def config_error_from_path(path) -> str:
    with pytest.raises(UserError) as info:
        load_config(path)
    return str(info.value)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("task: [unclosed\n")
    assert "broken.yaml" in config_error_from_path(path)


def test_set_overrides_are_parsed_as_yaml():
    raw = apply_overrides(
        {"train": {"epochs": 20}},
        [
            "train.epochs=5",
            "train.nesterov=true",
            "model.hidden=[8, 4]",
            "train.lr=0.5",
            "name=my run",
            "data.label=",
        ],
    )
    assert raw["train"] == {"epochs": 5, "nesterov": True, "lr": 0.5}
    assert raw["model"] == {"hidden": [8, 4]}
    assert raw["name"] == "my run"
    assert raw["data"]["label"] is None


def test_set_overrides_reach_the_validated_config():
    cfg, _ = load_config(
        copy.deepcopy(IMAGE), ["train.epochs=2", "model.name=cnn", "model.width=4", "data.split.seed=7"]
    )
    assert cfg.train.epochs == 2
    assert cfg.model.name == "cnn" and cfg.model.model_extra == {"width": 4}
    assert cfg.data.split.seed == 7


def test_overrides_leave_the_callers_dict_alone():
    raw = {"task": "image_classification", "data": {"source": "builtin:digits"}, "train": {"epochs": 3}}
    load_config(raw, ["train.epochs=7"])
    assert raw["train"] == {"epochs": 3}


@pytest.mark.parametrize("bad", ["train.epochs", "=5", " =5"])
def test_bad_set_string_shows_the_expected_form(bad):
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides({}, [bad])


def test_set_into_a_value_that_is_not_a_section_is_rejected():
    with pytest.raises(UserError, match="'epochs' is not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_every_problem_is_reported_at_once_with_its_key():
    message = config_error({**IMAGE, "train": {"epoch": 3, "lr": -1, "batch_size": "x"}})
    assert "3 problem(s)" in message
    assert "train.epoch: unknown key" in message
    assert "train.lr" in message and "-1" in message
    assert "train.batch_size" in message and "'x'" in message


def test_unknown_key_suggests_the_nearest():
    message = config_error({**IMAGE, "train": {"epoch": 3}})
    assert "Did you mean 'epochs'?" in message


def test_unknown_key_in_a_nested_section_suggests_from_that_section():
    message = config_error({**IMAGE, "data": {"source": "builtin:digits", "split": {"vall": 0.1}}})
    assert "data.split.vall: unknown key" in message and "'val'" in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("epochs", 0),
        ("lr", 100),
        ("optimizer", "lbfgs"),
        ("label_smoothing", 1.0),
    ],
)
def test_out_of_range_or_wrong_choice_names_key_and_value(key, value):
    message = config_error({**IMAGE, "train": {key: value}})
    assert f"train.{key}" in message
    assert str(value) in message


def test_unknown_monitor_lists_the_allowed_metrics():
    message = config_error({**IMAGE, "train": {"monitor": "train_loss"}})
    assert "monitor" in message and "'train_loss'" in message
    assert "val_accuracy" in message and "val_loss" in message


def test_val_plus_test_leaving_no_training_data_is_rejected():
    message = config_error(
        {**IMAGE, "data": {"source": "builtin:digits", "split": {"val": 0.5, "test": 0.5}}}
    )
    assert "data.split" in message and "no training data" in message


def test_val_plus_test_below_one_is_fine():
    cfg, _ = load_config({**IMAGE, "data": {"source": "builtin:digits", "split": {"val": 0.4, "test": 0.5}}})
    assert cfg.data.split.val + cfg.data.split.test == pytest.approx(0.9)


def test_table_needs_a_label_column():
    message = config_error({"task": "tabular_classification", "data": {"source": "people.csv"}})
    assert "data.label" in message


def test_builtin_tables_need_no_label():
    cfg, _ = load_config({"task": "tabular_classification", "data": {"source": "builtin:iris"}})
    assert cfg.data.label is None


def test_unknown_task_suggests_the_nearest():
    message = config_error({**TABLE, "task": "tabular_clasification"})
    assert "'tabular_clasification'" in message
    assert "Did you mean 'tabular_classification'" in message


def test_missing_required_key_is_named():
    message = config_error({"task": "image_classification", "data": {}})
    assert "data.source: required key is missing" in message


def test_did_you_mean_suggests_only_close_names():
    from modelfoundry.errors import did_you_mean

    breast_cancer = ["mean area", "worst area", "mean perimeter", "worst texture"]
    assert did_you_mean("target", breast_cancer) == ""  # 'worst area' only shares letters
    assert did_you_mean("TARGET", breast_cancer) == ""  # nor after lower-casing
    assert did_you_mean("lable", ["label", "x1"]) == " Did you mean 'label'?"
    assert did_you_mean("A", ["a", "b", "c"]) == " Did you mean 'a'?"  # case alone differs
    assert did_you_mean("Worst Area", breast_cancer).startswith(" Did you mean 'worst area'")
