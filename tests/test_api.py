"""The Python API on a user's own network: MedXGAN(classifier, generator, settings, preprocess=...)."""

import re
import warnings

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
    settings["inversion"].update(init="random", restarts=1, steps=3, tuning={**settings["inversion"]["tuning"], "steps": 0})
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


def test_settings_that_tune_the_lesion_branch_need_a_masked_generator(parts):
    net, generator, settings = parts
    tuned = {**settings, "inversion": {**settings["inversion"], "tuning": {**settings["inversion"]["tuning"], "steps": 1}}}
    with pytest.raises(ValueError, match="inversion.tuning.steps: 0"):
        MedXGAN(net, generator, tuned, preprocess=PREPROCESS, device="cpu")


# --- the gate at the API's entry: one ValueError saying what was expected and what was given -------

EXPECTED = "expected images as a float tensor (N, 1, 64, 64) in [-1, 1], got "
IMAGES = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1


def with_nan(images: torch.Tensor) -> torch.Tensor:
    images = images.clone()
    images[1, 0, 5, 5] = float("nan")
    return images


@pytest.fixture(scope="module")
def explainer(parts):
    net, generator, settings = parts
    return MedXGAN(net, generator, settings, preprocess=PREPROCESS, target_layer="layer4", device="cpu")


@pytest.mark.parametrize("images, given", [
    ((IMAGES + 1) * 127.5, r"values in \[\d.*, 25\d.*\]; ToTensor's \[0, 1\] maps onto \[-1, 1\] by x \* 2 - 1"),
    (((IMAGES + 1) * 127.5).to(torch.uint8), "dtype torch.uint8; ToTensor's"),
    (with_nan(IMAGES), r"NaN or infinite values in image\(s\) 1$"),
    (IMAGES[0], r"shape \(1, 64, 64\); one image needs a batch dimension: images\[None\]$"),
    (IMAGES.repeat(1, 3, 1, 1), r"shape \(2, 3, 64, 64\)$"),
    (IMAGES[:, :, :32, :32], r"shape \(2, 1, 32, 32\)$"),
    (IMAGES[:0], r"an empty batch \(N = 0\)$"),
    (IMAGES.numpy(), "a ndarray; convert it with torch.as_tensor$"),
], ids=["0..255", "uint8", "nan", "no batch", "channels", "size", "empty", "numpy"])
@pytest.mark.parametrize("method", ["attribute", "explain", "invert", "probabilities"])
def test_images_the_networks_cannot_take_are_refused_saying_what_was_given(explainer, images, given, method):
    with pytest.raises(ValueError, match=re.escape(EXPECTED) + given):
        getattr(explainer, method)(images)


def test_a_target_other_than_the_two_classes_is_refused(explainer):
    with pytest.raises(ValueError, match=r"^target must be 0 \(negative\) or 1 \(positive\), got 5$"):
        explainer.attribute(IMAGES, target=5)


def test_images_in_zero_one_get_a_warning_and_images_in_minus_one_one_none(explainer):
    with pytest.warns(UserWarning, match=r"every pixel of these images is >= 0 .* x \* 2 - 1"):
        explainer.probabilities((IMAGES + 1) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer.probabilities(IMAGES)
        explainer.probabilities(IMAGES.double())  # any float dtype, taken as float32
