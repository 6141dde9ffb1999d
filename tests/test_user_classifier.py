"""A classifier the user brings: TorchScript or a state dict, behind the project's interface."""

import sys

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from medxgan.config import ConfigError
from medxgan.explainers import build_explainer
from medxgan.artifacts import load_model, save_model
from medxgan.nets.user import STATE_DICT, TORCHSCRIPT, UserClassifier, from_model_input, import_classifier, to_model_input

DATA_CFG = {"image_size": 32, "channels": 1}
IMAGENET = {"range": [0, 1], "size": 48, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def settings(path, **overrides):
    return {"pretrained": str(path), "arch": "resnet18", "input": IMAGENET, "positive_index": 1, "target_layer": None,
            **overrides}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=2).eval()


@pytest.fixture(scope="module")
def files(resnet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    torch.save(resnet.state_dict(), folder / "resnet.pt")
    save_file(resnet.state_dict(), str(folder / "resnet.safetensors"))
    torch.jit.save(torch.jit.script(resnet), str(folder / "resnet_scripted.pt"))
    return folder


def test_conversion_to_the_models_input_and_back():
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    x = to_model_input(images, IMAGENET)
    assert x.shape == (3, 3, 48, 48)
    # at the image's own size, the conversion is exact both ways
    same_size = {**IMAGENET, "size": 32}
    x = to_model_input(images, same_size)
    grey_01 = (images + 1) / 2
    torch.testing.assert_close(x[:, 0], (grey_01[:, 0] - 0.485) / 0.229)
    torch.testing.assert_close(x[:, 2], (grey_01[:, 0] - 0.406) / 0.225)
    torch.testing.assert_close(from_model_input(x, same_size), images.expand(-1, 3, -1, -1), atol=1e-6, rtol=0)
    # no normalisation, another range, RGB averaged to one channel
    rgb = torch.rand(2, 3, 32, 32) * 2 - 1
    plain = {"range": [0, 255], "size": 32, "channels": 1, "mean": None, "std": None}
    torch.testing.assert_close(to_model_input(rgb, plain), (rgb.mean(1, keepdim=True) + 1) * 127.5)


@pytest.mark.parametrize("name, kind", [("resnet.pt", STATE_DICT), ("resnet.safetensors", STATE_DICT),
                                        ("resnet_scripted.pt", TORCHSCRIPT)])
def test_each_file_kind_gives_the_users_network_behind_the_projects_interface(resnet, files, name, kind, tmp_path):
    classifier, spec = import_classifier(settings(files / name), DATA_CFG)
    assert spec["format"] == kind and len(spec["sha256"]) == 64
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    expected = resnet(to_model_input(images, IMAGENET))
    torch.testing.assert_close(classifier(images), expected, atol=1e-5, rtol=1e-4)
    save_model(classifier, tmp_path / "c.safetensors", spec)  # what the workflow's classifier step writes
    torch.testing.assert_close(load_model(tmp_path / "c.safetensors")(images), expected, atol=1e-5, rtol=1e-4)


def test_positive_index_and_a_single_logit(resnet):
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    swapped = UserClassifier(resnet, IMAGENET, positive_index=0, target_layer=None)
    direct = resnet(to_model_input(images, IMAGENET))
    torch.testing.assert_close(swapped(images), direct.flip(1))
    one_logit = UserClassifier(nn.Sequential(nn.Flatten(), nn.LazyLinear(1)), IMAGENET, 1, None)
    logits = one_logit(images)
    assert logits.shape == (2, 2) and torch.equal(logits[:, 0], torch.zeros(2))
    torch.testing.assert_close(logits.softmax(1)[:, 1], torch.sigmoid(logits[:, 1]))
    three = UserClassifier(nn.Sequential(nn.Flatten(), nn.LazyLinear(3)), IMAGENET, 1, None)
    with pytest.raises(ValueError, match="returns 3 outputs"):
        three(images)


def test_grad_cam_finds_its_layer_by_path_or_as_the_last_convolution(resnet, files):
    classifier, _ = import_classifier(settings(files / "resnet.pt"), DATA_CFG)
    assert classifier.target_layer is classifier.model.layer4[1].conv2  # the last Conv2d
    named, _ = import_classifier(settings(files / "resnet.pt", target_layer="layer3"), DATA_CFG)
    assert named.target_layer is named.model.layer3
    heatmaps = build_explainer("gradcam", named, None, {"batch_size": 4}).attribute(torch.rand(2, 1, 32, 32) * 2 - 1,
                                                                                   target=1)
    assert heatmaps.shape == (2, 32, 32)
    wrong, _ = import_classifier(settings(files / "resnet.pt", target_layer="layer9"), DATA_CFG)
    with pytest.raises(ConfigError, match="'layer9' is not a module"):
        wrong.target_layer
    scripted, _ = import_classifier(settings(files / "resnet_scripted.pt"), DATA_CFG)
    with pytest.raises(ConfigError, match="TorchScript modules do not have"):
        scripted.target_layer


def test_bad_files_and_architectures_are_named(files, tmp_path):
    with pytest.raises(ConfigError, match="is not a file"):
        import_classifier(settings(tmp_path / "missing.pt"), DATA_CFG)
    with pytest.raises(ConfigError, match="does not fit classifier.arch 'resnet34'"):
        import_classifier(settings(files / "resnet.pt", arch="resnet34"), DATA_CFG)
    with pytest.raises(ConfigError, match="neither a torchvision model"):
        import_classifier(settings(files / "resnet.pt", arch="no_such_net"), DATA_CFG)
    with pytest.raises(ConfigError, match="cannot import"):
        import_classifier(settings(files / "resnet.pt", arch="no_such_module:build"), DATA_CFG)


def test_a_factory_builds_the_network(files):
    classifier, spec = import_classifier(settings(files / "resnet.pt", arch="user_networks:binary_resnet18"),
                                         DATA_CFG)
    assert isinstance(classifier.model, torchvision.models.ResNet) and spec["arch"].endswith(":binary_resnet18")


def test_a_changed_torchscript_file_is_refused(resnet, tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(resnet), str(path))
    classifier, spec = import_classifier(settings(path), DATA_CFG)
    save_model(classifier, tmp_path / "c.safetensors", spec)
    other = torchvision.models.resnet18(num_classes=2).eval()
    torch.jit.save(torch.jit.script(other), str(path))
    with pytest.raises(ConfigError, match="has changed since it was imported"):
        load_model(tmp_path / "c.safetensors")


def test_a_file_from_elsewhere_never_chooses_the_code_that_builds_its_classifier(files, tmp_path, monkeypatch):
    # A bundle's classifier spec that names a factory: loading it must not import that module
    # unless the caller names the factory itself.
    classifier, spec = import_classifier(settings(files / "resnet.pt", arch="user_networks:binary_resnet18"), DATA_CFG)
    save_model(classifier, tmp_path / "c.safetensors", {**spec, "arch": "planted_module:run"})
    (tmp_path / "planted_module.py").write_text("import sys\nsys.modules[__name__].ran = True\ndef run():\n    raise SystemExit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for allowed in (None, "user_networks:binary_resnet18"):
        with pytest.raises(ConfigError, match=r"c\.safetensors: its spec's 'arch' names code to import "
                                                 r"\('planted_module:run'\)"):
            load_model(tmp_path / "c.safetensors", allowed_factory=allowed)
    assert "planted_module" not in sys.modules
    save_model(classifier, tmp_path / "trusted.safetensors", spec)  # named by the caller: loads
    loaded = load_model(tmp_path / "trusted.safetensors", allowed_factory="user_networks:binary_resnet18")
    assert isinstance(loaded.model, torchvision.models.ResNet)

