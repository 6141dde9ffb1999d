"""The Python API on a user's own network: MedXGAN(classifier, generator, settings, preprocess=...)."""

import pytest
import torch
import torchvision

from medxgan.api import MedXGAN, default_settings
from medxgan.nets.networks import Generator
from medxgan.nets.user import to_model_input

PREPROCESS = {"range": [0, 1], "size": 48, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    settings = default_settings("config/config.yaml", "synthetic-cxr")
    settings["inversion"].update(init="random", restarts=1, steps=3)
    settings["explain"].update(latent_ig_steps=4, ig_steps=4)
    net = torchvision.models.resnet18(num_classes=2).eval()
    generator = Generator(settings["gan"]["nz1"], settings["gan"]["nz2"], 64, 1, width=0.0625).eval()
    return net, generator, settings


def test_a_users_network_is_explained_through_its_own_preprocessing(parts):
    net, generator, settings = parts
    explainer = MedXGAN(net, generator, settings, preprocess=PREPROCESS, target_layer="layer4", device="cpu")
    images = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = net(to_model_input(images, {**PREPROCESS})).softmax(1)[:, 1]
    torch.testing.assert_close(explainer.probabilities(images), expected)
    codes = explainer.invert(images)
    assert codes.reconstruction.shape == images.shape and codes.ssim.shape == (3,)
    maps = explainer.explain(images, methods=["difference", "gradcam", "ig"], codes=codes)
    assert {name: m.shape for name, m in maps.items()} == {name: (3, 64, 64) for name in ("difference", "gradcam", "ig")}
    torch.testing.assert_close(explainer.attribute(images, target=1),
                               explainer.explain(images, methods=["latent_ig"])["latent_ig"])


def test_settings_that_start_from_an_encoder_need_one(parts):
    net, generator, settings = parts
    with pytest.raises(ValueError, match="pass encoder="):
        MedXGAN(net, generator, {**settings, "inversion": {**settings["inversion"], "init": "encoder"}},
                preprocess=PREPROCESS, device="cpu")
