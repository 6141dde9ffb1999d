"""Explanations of a frozen classifier C: Grad-CAM, pixel-space IG, and medXGAN's generative family.

Every explainer has one call, `attribute(images, target) -> heatmaps`, returning a non-negative
float32 (N, H, W) tensor on the CPU. As in pytorch-grad-cam, the base class owns the plumbing
(eval mode, frozen weights, device, chunking, channel reduction) and each method overrides one hook.
The generative methods explain through latents (z1, z2) with G(z1, z2) ≈ image: either passed in
from an earlier inversion or computed by an `inverter` callable.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator

import pytorch_grad_cam
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn
from tqdm import TqdmWarning

with warnings.catch_warnings():  # captum imports tqdm.auto, which warns inside Jupyter without ipywidgets
    warnings.filterwarnings("ignore", category=TqdmWarning)
    import captum.attr

Latents = tuple[Tensor, Tensor]
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # RGB -> grey, as in the released difference map


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and no weight gradients inside the block; every flag is restored afterwards."""
    submodules = [m for module in modules for m in module.modules()]
    parameters = [p for module in modules for p in module.parameters()]
    modes = [m.training for m in submodules]
    grad_flags = [p.requires_grad for p in parameters]
    try:
        for m in submodules:
            m.training = False
        for p in parameters:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in zip(submodules, modes):
            m.training = mode
        for p, flag in zip(parameters, grad_flags):
            p.requires_grad_(flag)


def to_grey(images: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, H, W): one channel as is, three channels with the luminance weights."""
    if images.shape[1] == 1:
        return images[:, 0]
    if images.shape[1] == len(GREY_WEIGHTS):
        weights = images.new_tensor(GREY_WEIGHTS).view(1, -1, 1, 1)
        return (images * weights).sum(dim=1)
    raise ValueError(f"grey conversion needs 1 or 3 channels, got {images.shape[1]}")


def module_device(module: nn.Module) -> torch.device:
    """Device of the module's first parameter (CPU for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _target_probability(classifier: nn.Module, images: Tensor, target: int) -> Tensor:
    return classifier(images).softmax(dim=1)[:, target]


class Explainer:
    """Base class: subclasses implement `_explain(images, target)` on one chunk already on the device."""

    def __init__(self, classifier: nn.Module, batch_size: int = 64):
        self.classifier = classifier
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return module_device(self.classifier)

    def attribute(self, images: Tensor, target: int = 1, **kwargs) -> Tensor:
        """Heatmaps (N, H, W) for `target`. Extra keyword arguments (e.g. latents) are for the
        generative methods, so one call works for every explainer; pixel-space methods ignore them."""
        return self._per_chunk(lambda chunk: self._heatmap(self._explain(chunk, target)), images)

    def _explain(self, images: Tensor, target: int) -> Tensor:
        """(n, H, W) or (n, C, H, W) maps for one chunk."""
        raise NotImplementedError

    def _models(self) -> tuple[nn.Module, ...]:
        return (self.classifier,)

    @staticmethod
    def _heatmap(maps: Tensor) -> Tensor:
        """Channel reduction: |maps| summed over channels when there are channels."""
        if maps.dim() == 4:
            maps = maps.abs().sum(dim=1)
        return maps.float()

    def _per_chunk(self, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
        """fn on chunks of `batch_size` rows of the inputs, on the device, with the models frozen;
        results concatenated on the CPU."""
        chunks = zip(*(x.split(self.batch_size) for x in inputs))
        with frozen(*self._models()), torch.enable_grad():
            return torch.cat([fn(*(x.to(self.device) for x in chunk)).detach().cpu() for chunk in chunks])


class GradCAM(Explainer):
    """pytorch-grad-cam on `classifier.target_layer`, upsampled to the image size (each map scaled to [0, 1])."""

    def _explain(self, images: Tensor, target: int) -> Tensor:
        targets = [ClassifierOutputTarget(target)] * len(images)
        # The input needs a gradient so the target layer's activations carry one with frozen weights.
        images = images.detach().requires_grad_(True)
        with pytorch_grad_cam.GradCAM(model=self.classifier, target_layers=[self.classifier.target_layer]) as cam:
            return torch.from_numpy(cam(input_tensor=images, targets=targets))


class IntegratedGradients(Explainer):
    """captum's Integrated Gradients of C's softmax probability of `target`, from a constant baseline."""

    def __init__(self, classifier: nn.Module, batch_size: int = 64, baseline: float = -1.0, n_steps: int = 50):
        super().__init__(classifier, batch_size)
        self.baseline = baseline  # -1.0 is black for images in [-1, 1]
        self.n_steps = n_steps

    def _explain(self, images: Tensor, target: int) -> Tensor:
        ig = captum.attr.IntegratedGradients(lambda x: self.classifier(x).softmax(dim=1))
        return ig.attribute(images, baselines=self.baseline, target=target, n_steps=self.n_steps,
                            internal_batch_size=self.batch_size)


class GenerativeExplainer(Explainer):
    """medXGAN family: explanations from G(z1, z2) and its negative realisation G(z1, 0).

    Subclasses implement `_explain(z1, z2, target)` on one chunk of latents already on the device.
    """

    def __init__(self, classifier: nn.Module, generator: nn.Module,
                 inverter: Callable[[Tensor], Latents] | None = None, batch_size: int = 64):
        super().__init__(classifier, batch_size)
        self.generator = generator
        self.inverter = inverter

    def attribute(self, images: Tensor, target: int = 1, latents: Latents | None = None) -> Tensor:
        z1, z2 = self._latents(images, latents)
        return self._per_chunk(lambda a, b: self._heatmap(self._explain(a, b, target)), z1, z2)

    def _explain(self, z1: Tensor, z2: Tensor, target: int) -> Tensor:
        raise NotImplementedError

    def _models(self) -> tuple[nn.Module, ...]:
        return (self.classifier, self.generator)

    def _latents(self, images: Tensor, latents: Latents | None) -> Latents:
        if latents is None:
            if self.inverter is None:
                raise ValueError(f"{type(self).__name__} needs latents=(z1, z2) from an inversion "
                                 "or an inverter to compute them")
            latents = self.inverter(images)
        z1, z2 = latents
        if not len(z1) == len(z2) == len(images):
            raise ValueError(f"latents for {len(z1)}/{len(z2)} images given for {len(images)} images")
        return z1, z2

    def _generate(self, z1: Tensor, z2: Tensor) -> Tensor:
        """G(z1, z2) in chunks of `batch_size`, without gradients, on the classifier's device."""
        device = module_device(self.generator)
        with torch.no_grad():
            return torch.cat([self.generator(a.to(device), b.to(device)).to(self.device)
                              for a, b in zip(z1.split(self.batch_size), z2.split(self.batch_size))])


class DifferenceMap(GenerativeExplainer):
    """|G(z1, z2) - G(z1, 0)| in grey."""

    def _explain(self, z1: Tensor, z2: Tensor, target: int) -> Tensor:
        return to_grey((self._generate(z1, z2) - self._generate(z1, torch.zeros_like(z2))).abs())


class Interpolation(GenerativeExplainer):
    """Images along G(z1, a z2), a = 0 ... 1 in `n_points` even steps; heatmap = their accumulated
    absolute step-to-step difference in grey (equals the difference map for n_points = 2)."""

    def __init__(self, classifier: nn.Module, generator: nn.Module,
                 inverter: Callable[[Tensor], Latents] | None = None, batch_size: int = 64, n_points: int = 11):
        super().__init__(classifier, generator, inverter, batch_size)
        self.n_points = n_points

    def path(self, z1: Tensor, z2: Tensor) -> Tensor:
        """(N, n_points, C, H, W) images G(z1, a z2) on the CPU."""
        return self._per_chunk(self._path, z1, z2)

    def _path(self, z1: Tensor, z2: Tensor) -> Tensor:
        alphas = torch.linspace(0, 1, self.n_points, device=z2.device, dtype=z2.dtype)
        path_z1 = z1.repeat_interleave(self.n_points, dim=0)
        path_z2 = (alphas[None, :, None] * z2[:, None, :]).flatten(0, 1)
        images = self._generate(path_z1, path_z2)
        return images.view(len(z1), self.n_points, *images.shape[1:])

    def _explain(self, z1: Tensor, z2: Tensor, target: int) -> Tensor:
        return to_grey(self._path(z1, z2).diff(dim=1).abs().sum(dim=1))


class LatentIG(GenerativeExplainer):
    """Latent Integrated Gradients: C's gradient integrated along x_i = G(z1, (i/m) z2), i = 0 ... m.

    form="path": sum_i 0.5 (g_i + g_{i+1}) * (x_{i+1} - x_i), exact IG along the generated path
    (trapezoid rule; attributions sum to about p(x_m) - p(x_0)).
    form="endpoint": the released code, mean_i g_i * (x_m - x_0); not complete in general.
    g_i is the gradient of C's probability of the given target at x_i, with respect to x_i only.
    """

    FORMS = ("path", "endpoint")

    def __init__(self, classifier: nn.Module, generator: nn.Module,
                 inverter: Callable[[Tensor], Latents] | None = None, batch_size: int = 64,
                 n_steps: int = 50, form: str = "path"):
        super().__init__(classifier, generator, inverter, batch_size)
        if form not in self.FORMS:
            raise ValueError(f"unknown Latent IG form {form!r} (expected one of {self.FORMS})")
        self.n_steps, self.form = n_steps, form

    def attributions(self, z1: Tensor, z2: Tensor, target: int = 1) -> Tensor:
        """Signed (N, C, H, W) attributions on the CPU."""
        return self._per_chunk(lambda a, b: self._explain(a, b, target), z1, z2)

    def _explain(self, z1: Tensor, z2: Tensor, target: int) -> Tensor:
        trapezoid_sum, gradient_sum, start, previous = 0.0, 0.0, None, None
        for x, grad in self._path_gradients(z1, z2, target):
            gradient_sum = gradient_sum + grad.sum(dim=1)
            start = x[:, 0] if start is None else start
            if previous is not None:  # join this stretch of the path to the end of the previous one
                x, grad = torch.cat([previous[0], x], dim=1), torch.cat([previous[1], grad], dim=1)
            trapezoid_sum = trapezoid_sum + (0.5 * (grad[:, 1:] + grad[:, :-1]) * x.diff(dim=1)).sum(dim=1)
            previous = x[:, -1:], grad[:, -1:]
        if self.form == "path":
            return trapezoid_sum
        return gradient_sum / (self.n_steps + 1) * (x[:, -1] - start)

    def _path_gradients(self, z1: Tensor, z2: Tensor, target: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Consecutive stretches (x, grad), each (n, k, C, H, W), of the path's points and gradients,
        with n * k <= batch_size so memory stays bounded."""
        n = len(z1)
        alphas = torch.linspace(0, 1, self.n_steps + 1, device=z2.device, dtype=z2.dtype)
        for stretch in alphas.split(max(1, self.batch_size // n)):
            k = len(stretch)
            x = self._generate(z1.repeat_interleave(k, dim=0), (stretch[None, :, None] * z2[:, None, :]).flatten(0, 1))
            x.requires_grad_(True)
            grad, = torch.autograd.grad(_target_probability(self.classifier, x, target).sum(), x)
            yield x.detach().view(n, k, *x.shape[1:]), grad.view(n, k, *x.shape[1:])


EXPLAINERS: dict[str, type[Explainer]] = {
    "difference": DifferenceMap,
    "interpolation": Interpolation,
    "latent_ig": LatentIG,
    "gradcam": GradCAM,
    "ig": IntegratedGradients,
}
GENERATIVE_METHODS = tuple(name for name, cls in EXPLAINERS.items() if issubclass(cls, GenerativeExplainer))


def build_explainer(method: str, classifier: nn.Module, generator: nn.Module, cfg: dict) -> Explainer:
    """The explainer for `method` with the options of the config's `explain` section."""
    if method not in EXPLAINERS:
        raise ValueError(f"unknown explanation method {method!r}; known: {', '.join(EXPLAINERS)}")
    options = {"batch_size": cfg["batch_size"]}
    if method == "interpolation":
        options["n_points"] = cfg["interpolation_points"]
    elif method == "latent_ig":
        options.update(n_steps=cfg["latent_ig_steps"], form=cfg["latent_ig_form"])
    elif method == "ig":
        options.update(n_steps=cfg["ig_steps"], baseline=cfg["ig_baseline"])
    if method in GENERATIVE_METHODS:
        return EXPLAINERS[method](classifier, generator, **options)
    return EXPLAINERS[method](classifier, **options)
