"""The config: defaults, `--set` overrides, and error messages that name the key, the value and the fix."""

from __future__ import annotations

import copy

import pytest

from modelfoundry.config import apply_overrides, config_to_dict, load_config
from modelfoundry.errors import UserError

IMAGE = {"task": "image_classification", "data": {"source": "builtin:digits"}}
TABLE = {"task": "tabular_classification", "data": {"source": "people.csv", "label": "y"}}


def config_error(raw: dict, overrides: list[str] | None = None) -> str:
    with pytest.raises(UserError) as info:
        load_config(copy.deepcopy(raw), overrides)
    return str(info.value)


def test_defaults_fill_every_section():
    cfg, _ = load_config(IMAGE)
    assert cfg.model.name == "cnn"  # images without model.name: the CNN, whose recipe scored best
    text = {"task": "text_classification", "data": {"source": "r.csv", "text": "t", "label": "y"}}
    assert load_config(text)[0].model.name == "pretrained"  # not the base MLP, which takes no text
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.schedule) == ("adamw", 0.003, "onecycle")  # cnn's
    assert (cfg.data.split.val, cfg.data.split.test) == (0.1, 0.2)
    assert cfg.data.missing == "impute" and cfg.data.dedupe is False


def test_an_unset_key_takes_the_family_recipe_and_a_set_key_wins():
    cfg, _ = load_config(
        {
            **IMAGE,
            "model": {"name": "cnn"},
            "train": {"lr": 0.01},
            "data": {"source": "builtin:digits", "augment": {"rotation": 0}},
        }
    )
    assert cfg.train.lr == 0.01 and cfg.user_set("train.lr") and "train.lr" not in cfg.recipe
    assert cfg.train.optimizer == "adamw" and cfg.recipe["train.optimizer"] == "cnn recipe"
    assert cfg.train.schedule == "onecycle" and cfg.data.augment.crop_padding == 1
    assert cfg.data.augment.rotation == 0  # set by the user, though the recipe has 10
    overridden, _ = load_config({**IMAGE, "model": {"name": "cnn"}}, ["train.optimizer=sgd"])
    assert overridden.train.optimizer == "sgd" and "train.optimizer" not in overridden.recipe


def test_the_saved_config_says_where_each_value_came_from_and_loads_to_the_same_choices():
    cfg, _ = load_config({**IMAGE, "train": {"seed": 3}})
    assert cfg.recipe["train.epochs"] == "chosen from the data at run time"
    assert cfg.recipe["train.monitor"].startswith("task default")
    saved = cfg.model_dump(mode="json")  # what a run writes as config.yaml
    again, _ = load_config(saved)
    assert again.recipe == cfg.recipe and not again.user_set("train.epochs") and again.user_set("train.seed")
    assert again.train == cfg.train


def test_the_family_recipes_only_set_keys_the_config_has():
    from modelfoundry.models.registry import FAMILIES

    for name, family in FAMILIES.items():
        for key, value in family.recipe.items():
            section = key.split(".")[0]
            assert section in ("train", "data", "model"), (name, key)
            raw = {**(TABLE if family.takes == "tables" else IMAGE), "model": {"name": name}}
            _, field = key.rsplit(".", 1)
            load_config(raw, [f"{key}={value}"])  # a recipe value is a valid config value
            assert field


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
    # the set width, and the cnn recipe's depth (from the image size when the model is built)
    assert cfg.model.name == "cnn" and cfg.model.model_extra == {"width": 4, "depth": "auto"}
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


def test_tables_default_to_auto_and_gbdt_fills_unset_options_from_its_recipe():
    assert load_config(TABLE)[0].model.name == "auto"
    assert load_config(IMAGE)[0].model.name == "cnn"
    cfg, _ = load_config({**TABLE, "model": {"name": "gbdt", "learning_rate": 0.2}})
    assert cfg.model.model_extra["learning_rate"] == 0.2  # the user's value wins
    assert cfg.model.model_extra["n_estimators"] == 2000 and cfg.model.model_extra["num_leaves"] == "auto"
    assert cfg.recipe["model.n_estimators"] == "gbdt recipe" and "model.learning_rate" not in cfg.recipe
    assert "train.epochs" not in cfg.recipe  # boosting rounds are not epochs: nothing chosen at run time
    again, _ = load_config(config_to_dict(cfg))  # a run's saved config keeps the recipe's keys "unset"
    assert again.model.model_extra == cfg.model.model_extra and again.recipe == cfg.recipe


def test_refit_true_that_cannot_be_done_is_refused_before_training_naming_the_fix():
    assert load_config(TABLE)[0].train.refit is None  # unset: auto decides (on for model.name auto)
    folds = config_error(TABLE, ["train.refit=true", "train.folds=5"])
    assert "train.refit: true, and --folds 5 already trains the final model on all of train+val" in folds
    no_val = config_error(TABLE, ["train.refit=true", "data.split.val=0"])
    assert "data.split.val is 0: there is no validation split. Set data.split.val above 0" in no_val
    assert load_config(TABLE, ["train.refit=false", "train.folds=5"])[0].train.refit is False
