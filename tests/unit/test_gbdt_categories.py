"""LightGBM's own categorical handling (`model.categorical: native`): a category column reaches the
trees as one feature of codes, not as its one-hot block."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from modelfoundry.data.tabular import TableEncoder
from modelfoundry.models.gbdt import fit_gbdt
from modelfoundry.models.registry import build_model
from modelfoundry.tasks.tabular import category_blocks


def table(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A city among 24 decides the label for half the cities; a noisy number helps a little."""
    rng = np.random.default_rng(seed)
    city = rng.integers(0, 24, rows)
    x = rng.normal(size=rows)
    label = ((city % 2 == 0) & (city < 12)) | (x > 1.5)
    return pd.DataFrame({"city": [f"c{c}" for c in city], "x": x}), label.astype(np.int64)


def trained(categorical: str, frame, labels, val):
    encoder = TableEncoder().fit(frame, targets=labels, chosen={"city": "category"})
    inputs = torch.from_numpy(encoder.transform(frame))
    model = build_model(
        "gbdt",
        (inputs.shape[1],),
        2,
        table={"category_blocks": category_blocks(encoder.spec)},
        n_estimators=30,
        num_leaves=4,
        min_child_samples=5,
        categorical=categorical,
    )
    split = SimpleNamespace(inputs=inputs, targets=torch.from_numpy(labels))
    vx = torch.from_numpy(encoder.transform(val[0]))
    cfg = SimpleNamespace(early_stopping_patience=0, seed=0, loss=None)
    fit_gbdt(model, split, SimpleNamespace(inputs=vx, targets=torch.from_numpy(val[1])), cfg, device="cpu")
    return model, encoder


def test_native_categories_reach_lightgbm_as_one_coded_feature_and_predict_unseen_ones():
    frame, labels = table(600, 0)
    val = table(300, 1)
    model, encoder = trained("native", frame, labels, val)
    assert model._booster.num_feature() == 2  # x and city's codes, not 1 + 24 one-hot features
    unseen = encoder.transform(pd.DataFrame({"city": ["nowhere"], "x": [0.0]}))
    assert np.isfinite(model.scores(unseen)).all()  # a new city is LightGBM's "missing", not an error
    accuracy = (model.scores(encoder.transform(val[0])).argmax(1) == val[1]).mean()
    assert accuracy > 0.9


def test_trees_of_one_hot_features_load_and_predict_alike_whatever_the_options_say():
    frame, labels = table(300, 2)
    onehot, encoder = trained("onehot", frame, labels, table(100, 3))
    assert onehot._booster.num_feature() == encoder.transform(frame[:1]).shape[1]
    # the saved trees, not the options, decide how the features reach them
    blocks = {"category_blocks": category_blocks(encoder.spec)}
    again = build_model("gbdt", (onehot.features,), 2, table=blocks, n_estimators=30, categorical="native")
    again.load_state_dict(onehot.state_dict())
    x = encoder.transform(frame)
    np.testing.assert_allclose(again.scores(x), onehot.scores(x))


def test_native_category_contributions_come_back_in_the_encoded_features_and_add_up_to_the_score():
    frame, labels = table(400, 4)
    model, encoder = trained("native", frame, labels, table(100, 5))
    x = encoder.transform(frame[:5])
    values = model.contributions(x)
    assert values.shape == (5, 1, x.shape[1] + 1)  # one score column (two classes), every encoded feature
    np.testing.assert_allclose(values.sum(2)[:, 0], model.scores(x)[:, 1], rtol=1e-5, atol=1e-5)
