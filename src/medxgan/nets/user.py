"""A classifier the user brings, in place of the one the workflow trains.

`classifier.pretrained` names either a TorchScript file, or a state dict (`.safetensors`, or a
`.pt`/`.pth` loadable with `weights_only=True`) together with `classifier.arch`: a torchvision
model name (`resnet18`) or a `module:function` factory that returns the untrained network.

The rest of the project sees a `UserClassifier`: it takes the project's images ([-1, 1], the
dataset's size and channels), converts them to what the user's network expects
(`classifier.input`, see `to_model_input`), and returns two logits, [negative, positive], taken
from the network's outputs at `classifier.positive_index`.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medxgan.config import ConfigError
from medxgan.files import file_sha256

TORCHSCRIPT = "torchscript"
STATE_DICT = "state_dict"
PROJECT_RANGE = (-1.0, 1.0)


def input_settings(cfg: dict, data_cfg: dict) -> dict:
    """`classifier.input` completed from the dataset's settings: range, size, channels, mean, std."""
    given = cfg.get("input") or {}
    return {"range": list(given.get("range", PROJECT_RANGE)), "size": given.get("size") or data_cfg["image_size"],
            "channels": given.get("channels") or data_cfg["channels"], "mean": given.get("mean"),
            "std": given.get("std")}


def _per_channel(values, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def to_model_input(images: torch.Tensor, spec: dict) -> torch.Tensor:
    """The project's images ([-1, 1], N x C x H x W) as the user's network expects them: rescaled to
    `range`, resized (bilinear) to `size`, grey repeated to three channels or RGB averaged to one,
    then normalised with `mean` and `std` (per channel), when given. Differentiable throughout, so
    C's gradients reach the images as they do for a built-in classifier."""
    low, high = spec["range"]
    x = (images - PROJECT_RANGE[0]) / (PROJECT_RANGE[1] - PROJECT_RANGE[0]) * (high - low) + low
    if x.shape[-1] != spec["size"] or x.shape[-2] != spec["size"]:
        x = F.interpolate(x, size=(spec["size"], spec["size"]), mode="bilinear", align_corners=False)
    if x.shape[1] != spec["channels"]:
        x = x.expand(-1, spec["channels"], -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
    if spec["mean"] is not None:
        x = (x - _per_channel(spec["mean"], x)) / _per_channel(spec["std"], x)
    return x


def from_model_input(x: torch.Tensor, spec: dict) -> torch.Tensor:
    """The inverse of `to_model_input` at the model's size and channels: its inputs back in [-1, 1]."""
    if spec["mean"] is not None:
        x = x * _per_channel(spec["std"], x) + _per_channel(spec["mean"], x)
    low, high = spec["range"]
    return (x - low) / (high - low) * (PROJECT_RANGE[1] - PROJECT_RANGE[0]) + PROJECT_RANGE[0]


def last_convolution(model: nn.Module) -> str:
    """The module path of the network's last Conv2d: Grad-CAM's default layer."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise ConfigError("the classifier has no Conv2d layer for Grad-CAM: name one with classifier.target_layer")
    return names[-1]


class UserClassifier(nn.Module):
    """The user's network behind the project's interface: [-1, 1] images in, [negative, positive]
    logits out, `target_layer` for Grad-CAM."""

    def __init__(self, model: nn.Module, input_spec: dict, positive_index: int, target_layer: str | None):
        super().__init__()
        self.model, self.input_spec, self.positive_index = model, input_spec, positive_index
        self.target_layer_name = target_layer

    @property
    def target_layer(self) -> nn.Module:
        if isinstance(self.model, torch.jit.ScriptModule):
            raise ConfigError("Grad-CAM needs forward hooks, which TorchScript modules do not have: give the "
                              "classifier as a state dict with classifier.arch, or drop gradcam from explain.methods")
        name = self.target_layer_name or last_convolution(self.model)
        try:
            return self.model.get_submodule(name)
        except AttributeError as error:
            raise ConfigError(f"classifier.target_layer {name!r} is not a module of the classifier") from error

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(to_model_input(images, self.input_spec))
        if out.ndim == 1 or out.shape[1] == 1:  # one logit: sigmoid(l) = softmax([0, l])[1]
            logit = out.reshape(len(out))
            return torch.stack([torch.zeros_like(logit), logit], dim=1)
        if out.shape[1] != 2:
            raise ValueError(f"the classifier returns {out.shape[1]} outputs: medxgan explains a binary classifier "
                             "(one logit, or two with classifier.positive_index naming the positive one)")
        return out[:, [1 - self.positive_index, self.positive_index]]


def file_format(path: Path) -> str:
    """TorchScript (a zip archive with code/ and constants.pkl) or a state dict."""
    import zipfile

    if path.suffix != ".safetensors" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any("/code/" in name for name in archive.namelist()):
                return TORCHSCRIPT
    return STATE_DICT


ANY_FACTORY = True  # the run's own files, written from the user's own config: its factory may be imported


def network(arch: str, outputs: int, allowed_factory: str | bool = ANY_FACTORY) -> nn.Module:
    """An untrained network: a torchvision model with `outputs` classes, or a `module:function` factory's.

    A factory is code: it is imported only from the user's own config (`allowed_factory` True) or
    where the caller names that very factory. Files from elsewhere (a bundle) never choose code."""
    if ":" in arch:
        if allowed_factory is not ANY_FACTORY and arch != allowed_factory:
            raise ConfigError(f"its spec's 'arch' names code to import ({arch!r}), which a file from elsewhere, such "
                              f"as a bundle, may not do: if you trust {arch}, name it yourself (explain-images "
                              f"--classifier-factory {arch}; MedXGAN.from_bundle(..., classifier_factory={arch!r}))")
        module_name, function = arch.split(":", 1)
        try:
            factory = getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"classifier.arch {arch!r}: cannot import {function} from {module_name} ({error})") from error
        return factory()
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ConfigError(f"classifier.arch {arch!r} is neither a torchvision model nor a module:function factory")
    return torchvision.models.get_model(arch, weights=None, num_classes=outputs)


def output_count(state: dict[str, torch.Tensor]) -> int:
    """How many outputs the file's network has: the rows of its last weight matrix (the head)."""
    matrices = [tensor for name, tensor in state.items() if name.endswith("weight") and tensor.ndim == 2]
    if not matrices:
        raise ConfigError("the classifier's state dict has no linear layer to read its outputs from")
    return matrices[-1].shape[0]


def user_spec(cfg: dict, data_cfg: dict) -> dict:
    """The spec stored with the imported classifier, from which `build` rebuilds it."""
    from medxgan.files import load_state_dict

    path = Path(cfg["pretrained"]).resolve()
    if not path.is_file():
        raise ConfigError(f"classifier.pretrained: {path} is not a file")
    spec = {"kind": "user_classifier", "source": str(path), "sha256": file_sha256(path), "format": file_format(path),
            "input": input_settings(cfg, data_cfg), "positive_index": cfg["positive_index"],
            "target_layer": cfg["target_layer"], "arch": cfg["arch"]}
    if spec["format"] == STATE_DICT:
        spec["outputs"] = output_count(load_state_dict(path))
    return spec


def build(spec: dict, allowed_factory: str | bool = ANY_FACTORY) -> UserClassifier:
    """The classifier a spec describes, with untrained weights for a state dict (the caller loads them)
    and the user's own TorchScript file, checked against its recorded checksum, otherwise.
    `allowed_factory`: see `network`."""
    if spec["format"] == TORCHSCRIPT:
        path = Path(spec["source"])
        if not path.is_file() or file_sha256(path) != spec["sha256"]:
            raise ConfigError(f"the TorchScript classifier {path} is missing or has changed since it was imported "
                              "(its SHA-256 differs): rerun the workflow's train_classifier step")
        with warnings.catch_warnings():  # torch deprecates TorchScript; users still export their models with it
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    else:
        model = network(spec["arch"], spec["outputs"], allowed_factory)
    return UserClassifier(model, spec["input"], spec["positive_index"], spec["target_layer"])


def import_classifier(cfg: dict, data_cfg: dict) -> tuple[UserClassifier, dict]:
    """The user's classifier with its weights, frozen, and its spec."""
    from medxgan.files import load_state_dict

    spec = user_spec(cfg, data_cfg)
    classifier = build(spec)
    if spec["format"] == STATE_DICT:
        try:
            classifier.model.load_state_dict(load_state_dict(spec["source"]))
        except RuntimeError as error:
            raise ConfigError(f"{spec['source']} does not fit classifier.arch {spec['arch']!r}: {error}") from error
    return classifier.eval().requires_grad_(False), spec
