"""The model package: save -> load gives the same predictions from every kind of input, without pickle."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from modelfoundry.data.images import to_array
from modelfoundry.data.tabular import TableEncoder
from modelfoundry.errors import UserError
from modelfoundry.models.registry import build_model
from modelfoundry.predictor import FORMAT, load, save_package

ROWS = pd.DataFrame(
    {"age": [23.0, 41.0, 35.0, 62.0, 19.0, 50.0], "city": ["rome", "oslo", "rome", "lima", "oslo", "lima"]}
)


def settled(model: torch.nn.Module, example_shape: tuple[int, ...]) -> torch.nn.Module:
    """Move batch-norm statistics away from their defaults, so a package that lost them would show."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *example_shape) * 3 + 1)
    return model.eval()


def image_spec(name: str, options: dict, shape=(1, 8, 8)) -> dict:
    return {
        "task": "image_classification",
        "model": {"name": name, "options": options},
        "input_shape": list(shape),
        "labels": ["0", "1", "2"],
        "preprocessing": {"kind": "image", "size": list(shape[1:]), "channels": shape[0]},
        "label_column": None,
        "run_id": "unit",
        "created": "2024-01-01T00:00:00",
        "test_accuracy": None,
    }


@pytest.fixture
def image_package(tmp_path):
    torch.manual_seed(0)
    spec = image_spec("cnn", {"width": 4, "depth": 2})
    model = settled(build_model("cnn", (1, 8, 8), 3, width=4, depth=2), (1, 8, 8))
    save_package(tmp_path / "run" / "model", model, spec)
    return tmp_path / "run", model


@pytest.fixture
def table_package(tmp_path):
    encoder = TableEncoder().fit(ROWS)
    spec = {
        "task": "tabular_classification",
        "model": {"name": "mlp", "options": {"hidden": [8]}},
        "input_shape": [len(encoder.feature_names)],
        "labels": ["no", "yes"],
        "preprocessing": {"kind": "table", **encoder.spec},
        "label_column": "bought",
    }
    torch.manual_seed(0)
    model = settled(
        build_model("mlp", (len(encoder.feature_names),), 2, hidden=[8]), (len(encoder.feature_names),)
    )
    save_package(tmp_path / "run" / "model", model, spec)
    return tmp_path / "run", model, encoder


def reference(model: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.eval()(torch.as_tensor(inputs, dtype=torch.float32)), 1).numpy()


# ----------------------------------------------------------------------------- round trip


def test_image_package_round_trip_gives_identical_probabilities(image_package):
    run, model = image_package
    images = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    predictor = load(run)
    probabilities = predictor.predict_proba(list(images))
    assert probabilities.shape == (5, 3)
    np.testing.assert_array_equal(probabilities, reference(model, images))
    assert predictor.predict(list(images)) == [predictor.labels[i] for i in probabilities.argmax(1)]
    assert predictor.task == "image_classification" and predictor.labels == ["0", "1", "2"]


def test_package_can_be_loaded_from_the_run_or_the_model_folder(image_package):
    run, _ = image_package
    image = np.random.default_rng(1).random((8, 8), dtype=np.float32)
    np.testing.assert_array_equal(load(run).predict_proba(image), load(run / "model").predict_proba(image))


@pytest.mark.parametrize(
    "name, options, shape",
    [
        ("mlp", {"hidden": [8]}, (3, 6, 6)),
        ("resnet", {"width": 4, "depth": 2, "blocks_per_stage": 1}, (3, 6, 6)),
    ],
)
def test_other_families_round_trip(tmp_path, name, options, shape):
    torch.manual_seed(0)
    model = settled(build_model(name, shape, 3, **options), shape)
    save_package(tmp_path / "model", model, image_spec(name, options, shape))
    images = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
    np.testing.assert_array_equal(load(tmp_path).predict_proba(list(images)), reference(model, images))


def test_table_package_round_trip_gives_identical_probabilities(table_package):
    run, model, encoder = table_package
    probabilities = load(run).predict_proba(ROWS)
    np.testing.assert_array_equal(probabilities, reference(model, encoder.transform(ROWS)))


def test_saving_again_replaces_the_package_cleanly(image_package, tmp_path):
    run, model = image_package
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1)
    save_package(run / "model", model, image_spec("cnn", {"width": 4, "depth": 2}))
    images = np.random.default_rng(2).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(load(run).predict_proba(list(images)), reference(model, images))
    assert sorted(p.name for p in run.iterdir()) == ["model"]


def test_package_is_json_and_safetensors_only(image_package):
    run, model = image_package
    folder = run / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    spec = json.loads((folder / "model.json").read_text())
    assert spec["format"] == FORMAT and spec["model"] == {"name": "cnn", "options": {"width": 4, "depth": 2}}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        assert set(weights.keys()) == set(model.state_dict())
        for key, value in model.state_dict().items():
            assert torch.equal(weights.get_tensor(key), value)
    assert not (folder / "model.safetensors").read_bytes().startswith(b"\x80")  # not a pickle stream


# ----------------------------------------------------------------------------- bad packages


def test_load_on_a_folder_without_a_package(tmp_path):
    with pytest.raises(UserError, match="no model package here.*foundry runs list"):
        load(tmp_path)


def test_load_rejects_an_unknown_format(image_package):
    run, _ = image_package
    path = run / "model" / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": "someone-else/9"}))
    with pytest.raises(UserError, match="'someone-else/9' is not"):
        load(run)


# ----------------------------------------------------------------------------- image inputs


def test_image_inputs_as_arrays_files_folders_and_pil_agree(image_package, tmp_path):
    run, _ = image_package
    predictor = load(run)
    pictures = [
        Image.fromarray(np.uint8(np.random.default_rng(i).integers(0, 256, (8, 8)))) for i in range(3)
    ]
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, picture in enumerate(pictures):
        picture.save(folder / f"{i}.png")
    arrays = [to_array(picture, (8, 8), 1) for picture in pictures]
    expected = predictor.predict_proba(arrays)
    np.testing.assert_array_equal(predictor.predict_proba([a[0] for a in arrays]), expected)  # (H, W)
    np.testing.assert_array_equal(predictor.predict_proba(pictures), expected)
    np.testing.assert_array_equal(predictor.predict_proba([folder / f"{i}.png" for i in range(3)]), expected)
    np.testing.assert_array_equal(predictor.predict_proba(str(folder)), expected)
    np.testing.assert_array_equal(predictor.predict_proba(str(folder / "1.png")), expected[1:2])


def test_image_files_of_another_size_and_colour_are_converted(image_package, tmp_path):
    run, _ = image_package
    Image.new("RGB", (20, 12), (200, 10, 10)).save(tmp_path / "big.png")
    assert load(run).predict_proba(tmp_path / "big.png").shape == (1, 3)


@pytest.mark.parametrize("shape", [(7, 7), (3, 8, 8), (1, 8, 9), (2, 1, 8, 8)])
def test_image_array_of_the_wrong_shape_is_a_user_error(image_package, shape):
    run, _ = image_package
    with pytest.raises(UserError, match=r"does not match the model's input \(1, 8, 8\)"):
        load(run).predict_proba(np.zeros(shape, dtype=np.float32))


def test_missing_image_file_and_empty_folder_are_user_errors(image_package, tmp_path):
    run, _ = image_package
    predictor = load(run)
    with pytest.raises(UserError, match="nope.png: no such file"):
        predictor.predict(tmp_path / "nope.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images in this folder"):
        predictor.predict(tmp_path / "empty")
    with pytest.raises(UserError, match="no inputs given"):
        predictor.predict([])


def test_unreadable_image_file_is_named(image_package, tmp_path):
    run, _ = image_package
    (tmp_path / "fake.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="fake.png: not a readable image"):
        load(run).predict(tmp_path / "fake.png")


# ----------------------------------------------------------------------------- table inputs


def test_table_inputs_in_every_form_agree(table_package, tmp_path):
    run, _, _ = table_package
    predictor = load(run)
    expected = predictor.predict_proba(ROWS)
    records = ROWS.to_dict(orient="records")
    ROWS.to_csv(tmp_path / "rows.csv", index=False)
    ROWS.to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    np.testing.assert_array_equal(predictor.predict_proba(records), expected)
    np.testing.assert_array_equal(predictor.predict_proba(records[2]), expected[2:3])
    np.testing.assert_allclose(predictor.predict_proba(str(tmp_path / "rows.csv")), expected, rtol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(tmp_path / "rows.jsonl"), expected, rtol=1e-6)
    # a frame with another index and extra columns reads the same
    shuffled = ROWS.assign(extra=1).set_index(pd.Index(list("abcdef")))
    np.testing.assert_array_equal(predictor.predict_proba(shuffled), expected)
    assert set(predictor.predict(ROWS)) <= {"no", "yes"}


def test_table_input_with_a_missing_column_is_named(table_package):
    run, _, _ = table_package
    with pytest.raises(UserError, match="'city'"):
        load(run).predict({"age": 30.0})


def test_table_input_of_an_unsupported_type_is_a_user_error(table_package, tmp_path):
    run, _, _ = table_package
    predictor = load(run)
    with pytest.raises(UserError, match="DataFrame, a dict, a list of dicts"):
        predictor.predict([1, 2, 3])
    with pytest.raises(UserError, match="rows.csv: no such file"):
        predictor.predict(tmp_path / "rows.csv")


def test_bad_value_in_a_csv_input_names_the_file_and_line(table_package, tmp_path):
    run, _, _ = table_package
    pd.DataFrame({"age": ["31", "forty"], "city": ["rome", "oslo"]}).to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(UserError, match=r"new.csv.*row 2 \(line 3 of new.csv\).*'age'"):
        load(run).predict(tmp_path / "new.csv")


def test_one_column_rule_for_the_predictor_and_the_service(tmp_path):
    """Columns the model was trained to ignore (label, data.drop) come along; any other is refused, by
    `Predictor` (and so `foundry predict`) and by the HTTP service alike."""
    encoder = TableEncoder().fit(ROWS, ignored=["id", "bought"])
    spec = {
        "task": "tabular_classification",
        "model": {"name": "mlp", "options": {"hidden": [8]}},
        "input_shape": [len(encoder.feature_names)],
        "labels": ["no", "yes"],
        "preprocessing": {"kind": "table", **encoder.spec},
        "label_column": "bought",
    }
    torch.manual_seed(0)
    save_package(
        tmp_path / "run" / "model", build_model("mlp", (len(encoder.feature_names),), 2, hidden=[8]), spec
    )
    predictor = load(tmp_path / "run")
    expected = predictor.predict_proba(ROWS)
    with_ignored = ROWS.assign(id=range(6), bought="yes")
    np.testing.assert_array_equal(predictor.predict_proba(with_ignored), expected)
    with pytest.raises(UserError) as info:
        predictor.predict(ROWS.assign(citty="rome"))
    message = str(info.value)
    assert "'citty'" in message and "Did you mean 'city'?" in message and "ignores: id, bought" in message

    task = predictor.task_module
    inputs, _ = task.encode_request(predictor, with_ignored.to_dict(orient="records"), limits=None)
    np.testing.assert_array_equal(predictor.run(inputs), expected)
    from modelfoundry.errors import InputError

    with pytest.raises(InputError, match="unknown column.*'citty'.*Did you mean 'city'"):
        task.encode_request(predictor, ROWS.assign(citty="rome").to_dict(orient="records"), limits=None)
