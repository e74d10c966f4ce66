"""`model:` options are checked against the builder's signature, without torch."""

from __future__ import annotations

import inspect

import pytest

from modelfoundry.models import registry
from modelfoundry.models.registry import FAMILIES, check_options


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


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_signature_read_from_source_is_the_builders(name):
    assert registry.signature(name) == inspect.signature(registry.family_function(name))
