"""The Python API: medXGAN on a classifier and a generator in hand, in the spirit of captum.

    from medxgan.api import MedXGAN
    explainer = MedXGAN.from_bundle("results/synthetic-cxr/bundle")
    codes = explainer.invert(images)                  # images: (N, C, H, W) in [-1, 1]
    maps = explainer.explain(images, methods=["difference", "latent_ig", "gradcam", "ig"])
    heatmaps = explainer.attribute(images, target=1)  # Latent IG, as captum's attribute

Every method that takes images checks them first (`check_images`): a float tensor (N, C, H, W) with
the settings' channels and image size, finite, in [-1, 1]. torchvision's `ToTensor` gives [0, 1]:
map it with `x * 2 - 1`.

A user's own network takes `preprocess`, the `classifier.input` settings of the config (range,
size, channels, mean, std): `MedXGAN(my_net, generator, settings, preprocess={...})`.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from pathlib import Path

import torch
from torch import nn

from medxgan.artifacts import load_model
from medxgan.config import SECTIONS, dataset_settings, load_config
from medxgan.explainers import GENERATIVE_METHODS, build_explainer
from medxgan.inversion import InversionRecord, negative_counterfactuals, reconstruct
from medxgan.tuning import check_tunable
from medxgan.names import DEFAULT_METHODS
from medxgan.nets.networks import positive_probability
from medxgan.nets.user import UserClassifier, input_settings
from medxgan.torch_utils import pick_device

RANGE_SLACK = 1e-4  # float rounding of x * 2 - 1 stays inside; 0..255 or mean/std-normalised input does not
TO_RANGE = "ToTensor's [0, 1] maps onto [-1, 1] by x * 2 - 1, 8-bit 0..255 by x / 127.5 - 1"
TARGETS = (0, 1)  # C's negative and positive class


def check_images(images, channels: int, image_size: int) -> torch.Tensor:
    """`images` as G and C take them: float32 (N, channels, image_size, image_size) in [-1, 1].

    Anything else is one ValueError naming what was expected and what was given, before any
    network runs: a wrong range or a NaN does not fail, it silently gives wrong probabilities and
    maps. A batch whose every pixel is >= 0 is allowed with a warning: it is a valid image in
    [-1, 1] (a crop of bright tissue, say), so refusing it would refuse good input, but it is also
    exactly what ToTensor's [0, 1] output looks like, on which C's answers mean nothing.
    """
    expected = f"images as a float tensor (N, {channels}, {image_size}, {image_size}) in [-1, 1]"
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"expected {expected}, got a {type(images).__name__}; convert it with torch.as_tensor")
    if images.dim() != 4 or tuple(images.shape[1:]) != (channels, image_size, image_size):
        one_image = "; one image needs a batch dimension: images[None]" if images.dim() == 3 else ""
        raise ValueError(f"expected {expected}, got shape {tuple(images.shape)}{one_image}")
    if len(images) == 0:
        raise ValueError(f"expected {expected}, got an empty batch (N = 0)")
    if not images.is_floating_point():
        raise ValueError(f"expected {expected}, got dtype {images.dtype}; {TO_RANGE}")
    finite = torch.isfinite(images).flatten(1).all(1)
    if not finite.all():
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"expected {expected}, got NaN or infinite values in image(s) {', '.join(map(str, bad))}")
    low, high = images.min().item(), images.max().item()
    if low < -1 - RANGE_SLACK or high > 1 + RANGE_SLACK:
        raise ValueError(f"expected {expected}, got values in [{low:.4g}, {high:.4g}]; {TO_RANGE}")
    if low >= 0:
        warnings.warn(f"every pixel of these images is >= 0 (values in [{low:.4g}, {high:.4g}]): images in "
                      f"[-1, 1] have dark pixels below 0; if these are in [0, 1], {TO_RANGE}", stacklevel=4)
    return images.float()


def check_target(target) -> int:
    """C's class to explain, 0 (negative) or 1 (positive); a ValueError otherwise."""
    if not (isinstance(target, numbers.Integral) and target in TARGETS):
        raise ValueError(f"target must be 0 (negative) or 1 (positive), got {target!r}")
    return int(target)


def default_settings(config: str | Path = "config/config.yaml", dataset: str | None = None) -> dict:
    """The settings of a dataset of a config file, or its `defaults` (with its seed, device and
    precision) when no dataset is named."""
    loaded = load_config(config)
    if dataset is not None:
        return dataset_settings(loaded, dataset)
    settings = {section: copy.deepcopy(loaded["defaults"][section]) for section in SECTIONS}
    return {**settings, "seed": loaded["seed"], "device": loaded["device"], "precision": loaded["precision"]}


class MedXGAN:
    """A classifier C and its medXGAN generator G (and encoder E, where the inversion starts from one),
    with the settings that say how to invert and explain."""

    def __init__(self, classifier: nn.Module, generator: nn.Module, settings: dict, *, encoder: nn.Module | None = None,
                 preprocess: dict | None = None, positive_index: int = 1, target_layer: str | None = None,
                 device: str | torch.device | None = None):
        self.settings = settings
        self.reference = None  # a bundle's test positives' reconstruction MSE (medxgan.bundle.read_reference)
        self.device = torch.device(device) if device else pick_device(settings.get("device", "auto"))
        if preprocess is not None:  # the user's own network: convert the project's images to its input
            spec = input_settings({"input": preprocess}, settings["data"])
            classifier = UserClassifier(classifier, spec, positive_index, target_layer)
        self.classifier = classifier.to(self.device).eval().requires_grad_(False)
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        self.encoder = None if encoder is None else encoder.to(self.device).eval().requires_grad_(False)
        if self.encoder is None and settings["inversion"]["init"] == "encoder":
            raise ValueError("the settings' inversion starts from an encoder (inversion.init: encoder): pass encoder=")
        check_tunable(self.generator, settings["inversion"]["tuning"])

    @classmethod
    def from_bundle(cls, path: str | Path, device: str | torch.device | None = None,
                    classifier_factory: str | None = None) -> "MedXGAN":
        """The networks and settings of a trained bundle (`results/{dataset}/bundle`, see medxgan.bundle).
        A bundle is data and never chooses code: a classifier built by a user factory
        (`module:function`) loads only when `classifier_factory` names that factory. Its files,
        settings and networks are checked first (medxgan.bundle.read_bundle; each network fits the
        settings' data); a bundle that fails a check raises a ValueError naming the file."""
        from medxgan.bundle import CLASSIFIER, ENCODER, GENERATOR, BundleError, read_bundle, read_reference

        path = Path(path)
        settings = read_bundle(path)
        device = torch.device(device) if device else pick_device(settings.get("device", "auto"))
        if settings["inversion"]["init"] == "encoder" and not (path / ENCODER).is_file():
            raise BundleError(f"{path}: its settings start the inversion from an encoder, and it holds no {ENCODER}")
        data = settings["data"]
        classifier = load_model(path / CLASSIFIER, device, "classifier", data, allowed_factory=classifier_factory)
        generator = load_model(path / GENERATOR, device, "generator", data, allowed_factory=None)
        encoder = load_model(path / ENCODER, device, "encoder", data, allowed_factory=None) \
            if (path / ENCODER).is_file() else None
        explainer = cls(classifier, generator, settings, encoder=encoder, device=device)
        explainer.reference = read_reference(path)
        return explainer

    @property
    def image_size(self) -> int:
        return self.settings["data"]["image_size"]

    def _checked(self, images) -> torch.Tensor:
        return check_images(images, self.settings["data"]["channels"], self.image_size)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """C's positive-class probability per image, shape (N,)."""
        images = self._checked(images)
        with torch.no_grad():
            return positive_probability(self.classifier, images.to(self.device)).cpu()

    def invert(self, images: torch.Tensor, rows: torch.Tensor | None = None) -> InversionRecord:
        """Codes z1, z2 with G(z1, z2) close to each image; the reconstruction G(z1, z2), the negative
        realisation G(z1, 0), C's probabilities for all three, and the reconstruction's MSE and SSIM
        (the invert step's record). `rows` seed each image's random starts (default 0..N-1)."""
        return self._invert(self._checked(images), rows)

    def _invert(self, images: torch.Tensor, rows: torch.Tensor | None = None) -> InversionRecord:
        rows = torch.arange(len(images)) if rows is None else rows
        s = self.settings
        return reconstruct(self.generator, self.classifier, images, rows, s["inversion"], s["seed"],
                           s.get("precision", "fp32"), self.encoder)

    def positive_realisations(self, images: torch.Tensor, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """For images C calls negative: the anatomy's reconstruction G(z1, 0), the smallest change
        G(z1, z2*) that C calls positive, and their difference map (medxgan.inversion.negative_counterfactuals)."""
        images = self._checked(images)
        rows = torch.arange(len(images)) if rows is None else rows
        s = self.settings
        return negative_counterfactuals(self.generator, self.classifier, images, rows, s["inversion"], s["seed"],
                                        s.get("precision", "fp32"), self.encoder)

    def explain(self, images: torch.Tensor, methods=DEFAULT_METHODS, target: int = 1,
                codes: InversionRecord | None = None) -> dict[str, torch.Tensor]:
        """Heatmaps (N, H, W) of each method; the generative ones reuse `codes` from `invert` when
        given, and invert the images once otherwise."""
        images, target = self._checked(images), check_target(target)
        if codes is None and any(method in GENERATIVE_METHODS for method in methods):
            codes = self._invert(images)
        latents = None if codes is None else codes.codes  # pixel-space methods ignore them
        G = self.generator if codes is None else codes.drawn_by(self.generator)
        return {method: build_explainer(method, self.classifier, G, self.settings["explain"])
                .attribute(images, target=target, latents=latents) for method in methods}

    def attribute(self, images: torch.Tensor, target: int = 1) -> torch.Tensor:
        """Latent IG heatmaps (N, H, W) for `target`: C's gradient integrated along G(z1, a z2)."""
        return self.explain(images, methods=("latent_ig",), target=target)["latent_ig"]
