"""`model:` options are checked with the rest of the config, before any data is read and without torch;
the registry says what each family supports for compression."""

from __future__ import annotations

import copy
import inspect
import json
import subprocess
import sys

import pytest

from modelfoundry.config import load_config
from modelfoundry.errors import UserError
from modelfoundry.models import registry
from modelfoundry.models.registry import FAMILIES, Family, check_options, half_student

# A file that does not exist: the options are judged before any data is read.
IMAGES = {"task": "image_classification", "data": {"source": "no/such/folder"}}
TEXT = {"task": "text_classification", "data": {"source": "no/such.csv", "text": "t", "label": "y"}}


def config_error(raw: dict) -> str:
    with pytest.raises(UserError) as info:
        load_config(copy.deepcopy(raw))
    return str(info.value)


def test_a_misspelt_option_is_named_with_the_fix_beside_the_other_config_errors():
    message = config_error({**IMAGES, "model": {"name": "cnn", "widht": 8}, "train": {"epochs": 0}})
    assert "2 problem(s) in the config" in message
    assert "  model.widht: not an option of 'cnn'. Did you mean 'width'?" in message
    assert "width (default 32), depth (default 2), dropout (default 0.2)" in message
    assert "  train.epochs:" in message


def test_a_value_of_the_wrong_type_is_named_with_what_is_allowed():
    message = config_error({**IMAGES, "model": {"name": "cnn", "width": "big", "dropout": 1.5}})
    assert "2 problem(s)" in message
    assert "model.width: 'big' must be a positive whole number." in message
    assert "model.dropout: 1.5 must be a number in [0, 1)." in message


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("mlp", {"hidden": 64}, "model.hidden: 64 must be a list, each a positive whole number."),
        ("mlp", {"hidden": [64, 0]}, "model.hidden: [64, 0] must be a list, each a positive whole number."),
        ("mlp", {"batch_norm": "yes"}, "model.batch_norm: 'yes' must be true or false."),
        ("lstm", {"hidden": [64]}, "model.hidden: [64] must be a positive whole number."),
        ("lstm", {"pooling": 3}, "model.pooling: 3 must be text."),
        ("pretrained", {"freeze_layers": True}, "model.freeze_layers: True must be a whole number of layers"),
        ("pretrained", {"path": 3}, "model.path: 3 must be text or null."),
    ],
)
def test_each_annotated_type_is_checked(name, options, expected):
    problems = check_options(name, options)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_an_unknown_family_suggests_the_closest():
    message = config_error({**IMAGES, "model": {"name": "resnt", "width": 8}})
    assert "1 problem(s)" in message
    assert "model.name: unknown model 'resnt'. Did you mean 'resnet'? Available: mlp, cnn, resnet" in message


def test_keys_the_runner_and_the_package_loader_pass_to_the_builder_are_accepted():
    cfg, _ = load_config({**TEXT, "model": {"name": "pretrained", "path": "models/bert", "freeze_layers": 1}})
    assert cfg.model.model_extra == {"path": "models/bert", "freeze_layers": 1}
    assert check_options("pretrained", {"path": "/run/model/encoder", "pretrained_weights": False}) == []


def test_a_run_config_that_spells_out_every_default_loads_again():
    for name in FAMILIES:
        task = TEXT if name in registry.TEXT_ONLY else IMAGES
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in registry.model_options(name).items()}
        cfg, _ = load_config({**task, "model": {"name": name, **options}})
        assert cfg.model.model_extra == options


def test_config_errors_about_model_options_import_no_torch():
    code = (
        "import sys\n"
        "from modelfoundry.config import load_config\n"
        "from modelfoundry.errors import UserError\n"
        "try:\n"
        f"    load_config({{**{IMAGES!r}, 'model': {{'name': 'cnn', 'widht': 8}}}})\n"
        "except UserError as exc:\n"
        "    print('widht' in str(exc), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_signature_read_from_source_is_the_builders(name):
    assert registry.signature(name) == inspect.signature(registry.family_function(name))


def test_a_new_family_is_one_file_and_one_registry_line(tmp_path, monkeypatch):
    (tmp_path / "tiny_family.py").write_text(
        "from typing import Literal\n\n"
        "def build_tiny(\n"
        "    input_shape, num_classes, *, mode: Literal['fast', 'exact'] = 'fast', scale: float = 1.0\n"
        "):\n"
        "    raise AssertionError('checking options builds nothing')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(FAMILIES, "tiny", Family("tiny_family:build_tiny", "tables or images"))
    message = config_error({**IMAGES, "model": {"name": "tiny", "mode": "fsat", "scale": "x", "sclae": 2}})
    assert "3 problem(s)" in message
    assert "model.mode: 'fsat' must be one of 'fast', 'exact'. Did you mean 'fast'?" in message
    assert "model.scale: 'x' must be a number." in message
    assert "model.sclae: not an option of 'tiny'. Did you mean 'scale'?" in message
    assert (
        load_config({**IMAGES, "model": {"name": "tiny", "mode": "exact", "scale": 2}})[0].model.name
        == "tiny"
    )


@pytest.mark.parametrize(
    "name, options, student",
    [
        ("mlp", {"hidden": [64, 32]}, {"name": "mlp", "hidden": [45, 22]}),
        ("cnn", {}, {"name": "cnn", "width": 22}),  # the default width, 32
        ("resnet", {"width": 8}, {"name": "resnet", "width": 6}),
        ("gru", {"hidden": 1}, {"name": "gru", "hidden": 1}),
        ("pretrained", {"path": "bert"}, {"name": "lstm"}),
        ("transformer", {}, {"name": "transformer", "width": 180}),  # 0.7 x 256, a multiple of its 4 heads
        ("transformer", {"width": 96, "heads": 6}, {"name": "transformer", "width": 66}),
    ],
)
def test_a_half_size_student_scales_the_family_width(name, options, student):
    assert half_student(name, options) == student
    assert check_options(student["name"], {k: v for k, v in student.items() if k != "name"}) == []


def test_compress_distill_all_turns_the_student_into_overrides(tmp_path):
    from modelfoundry.cli import _half_student

    (tmp_path / "model").mkdir()
    spec = {"model": {"name": "mlp", "options": {"hidden": [64, 32]}}}
    (tmp_path / "model" / "model.json").write_text(json.dumps(spec))
    assert _half_student(tmp_path) == ["model.name=mlp", "model.hidden=[45, 22]"]


def test_every_prunable_family_has_its_prune_function_beside_its_builder():
    for name, family in FAMILIES.items():
        if family.prune:
            assert callable(registry.family_function(name, family.prune)), name
    assert registry.prunable().startswith("mlp (hidden units), cnn (channels), resnet (channels)")


def test_a_half_size_transformer_student_builds():
    from modelfoundry.models.registry import build_model

    student = half_student("transformer", {"heads": 8, "width": 128})
    assert student["width"] % 8 == 0
    build_model("transformer", (16,), 2, {"vocab_size": 100, "pad_id": 0}, heads=8, width=student["width"])
