"""Explanations of a frozen classifier C: Grad-CAM, pixel-space IG, and medXGAN's generative family.

Every explainer has one call, `attribute(images, target) -> heatmaps`, returning a non-negative
float32 (N, H, W) tensor on the CPU. As in pytorch-grad-cam, the base class owns the plumbing
(eval mode, frozen weights, device, chunking, channel reduction) and each method overrides one hook.
The generative methods explain through latents (z1, z2) with G(z1, z2) ≈ image: either passed in
from an earlier inversion or computed by an `inverter` callable.

pytorch-grad-cam, captum and torchvision are imported by the methods that use them: together they
take seconds to load, which a job computing another method should not pay.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medxgan.nets.networks import compose
from medxgan.torch_utils import frozen, module_device
from medxgan.tuning import TunedGenerator, lesion_removed

Latents = tuple[Tensor, Tensor]


GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # RGB -> grey, as in the released difference map


LATENT_SHIFT_FLOOR = 0.05  # Latent Shift's search also stops once C's probability is below this (as the original)


def to_grey(images: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, H, W): one channel as is, three channels with the luminance weights."""
    if images.shape[1] == 1:
        return images[:, 0]
    if images.shape[1] == len(GREY_WEIGHTS):
        weights = images.new_tensor(GREY_WEIGHTS).view(1, -1, 1, 1)
        return (images * weights).sum(dim=1)
    raise ValueError(f"grey conversion needs 1 or 3 channels, got {images.shape[1]}")


def _target_probability(classifier: nn.Module, images: Tensor, target: int) -> Tensor:
    return classifier(images).softmax(dim=1)[:, target]


class Explainer:
    """Base class: subclasses implement `_explain(images, target)` on one chunk already on the device.

    OPTIONS maps each constructor option to its key in the config's `explain` section."""

    OPTIONS: dict[str, str] = {}

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


CENTRE_PROBES = 8  # random images whose input gradients locate a Grad-CAM cell's receptive field


def cell_centres(classifier: nn.Module, layer: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """Where the first and the last cell of `layer`'s map look in the image: ((y, x) of cell (0, 0),
    (y, x) of the bottom-right cell), in pixels, as the centroid of the input gradient of each cell's
    activations over a few random images shaped like `images` (seeded: the same classifier gives the
    same centres). A cell no probe moves (dead activations) keeps pytorch-grad-cam's stretched place."""
    activations = {}
    hook = layer.register_forward_hook(lambda module, inputs, output: activations.update(map=output))
    noise = torch.Generator().manual_seed(0)
    weights = [torch.zeros(images.shape[-2:]), torch.zeros(images.shape[-2:])]
    try:
        for _ in range(CENTRE_PROBES):
            probe = (torch.rand(1, *images.shape[1:], generator=noise) * 2 - 1).to(images).requires_grad_(True)
            classifier(probe)
            first, last = activations["map"][0, :, 0, 0].sum(), activations["map"][0, :, -1, -1].sum()
            for weight, cell in zip(weights, (first, last)):
                gradient, = torch.autograd.grad(cell, probe, retain_graph=True)
                weight += gradient[0].abs().sum(0).cpu()
    finally:
        hook.remove()
    size, cells = images.shape[-2:], activations["map"].shape[-2:]
    rows, columns = (torch.arange(n, dtype=torch.float32) for n in size)
    centres = []
    for weight, cell in zip(weights, (0, -1)):
        if weight.sum() > 0:
            centres.append(torch.stack([(weight.sum(1) * rows).sum(), (weight.sum(0) * columns).sum()]) / weight.sum())
        else:  # the stretch puts cell s at (s + 1/2) H / h - 1/2
            centres.append(torch.tensor([(cell % n + 0.5) * pixels / n - 0.5 for n, pixels in zip(cells, size)]))
    return tuple(centres)


def place_cells(maps: Tensor, first: Tensor, last: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, h, w) cell maps resampled onto the image's (H, W) pixels, each cell at its centre (bilinear
    between centres, the edge cells' values beyond them)."""
    axes = []
    for n, start, end, cells in zip(size, first.tolist(), last.tolist(), maps.shape[-2:]):
        pixels = torch.arange(n, dtype=torch.float32)
        # grid_sample's coordinates: -1 at the first cell's centre, 1 at the last one's
        axes.append(torch.zeros(n) if cells == 1 else 2 * (pixels - start) / (end - start) - 1)
    rows, columns = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([columns, rows], dim=-1).expand(len(maps), -1, -1, -1).to(maps.device)
    return F.grid_sample(maps[:, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]


class GradCAM(Explainer):
    """pytorch-grad-cam on `classifier.target_layer` (each map scaled to [0, 1]), its cells placed
    where they look.

    pytorch-grad-cam stretches the layer's map over the whole image, which puts each cell over its
    receptive field only where the convolutions are padded. The paper's brain CNN pads none: its
    8 x 8 last block looks at pixels 17.5 + 4 s (s = 0..7), the middle 28 of 64, so the stretched map
    lies up to 2.3 times too far from the centre. The map is taken at the layer's own size and each
    cell put at its receptive field's centre, measured on the classifier (`cell_centres`); a padded
    network's centres span the image, where this is the stretch again."""

    def __init__(self, classifier: nn.Module, batch_size: int = 64):
        super().__init__(classifier, batch_size)
        self._centres: tuple[Tensor, Tensor] | None = None

    def _explain(self, images: Tensor, target: int) -> Tensor:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        class LayerSizeGradCAM(pytorch_grad_cam.GradCAM):
            def get_target_width_height(self, input_tensor):  # the map at the layer's own size
                height, width = self.activations_and_grads.activations[0].shape[-2:]
                return width, height

        targets = [ClassifierOutputTarget(target)] * len(images)
        layer = self.classifier.target_layer
        # The input needs a gradient so the target layer's activations carry one with frozen weights.
        with LayerSizeGradCAM(model=self.classifier, target_layers=[layer]) as cam:
            cells = torch.from_numpy(cam(input_tensor=images.detach().requires_grad_(True), targets=targets))
        if self._centres is None:
            self._centres = cell_centres(self.classifier, layer, images)
        return place_cells(cells, *self._centres, images.shape[-2:])


class IntegratedGradients(Explainer):
    """captum's Integrated Gradients of C's softmax probability of `target`, from a constant baseline."""

    OPTIONS = {"n_steps": "ig_steps", "baseline": "ig_baseline"}

    def __init__(self, classifier: nn.Module, batch_size: int = 64, baseline: float = -1.0, n_steps: int = 50):
        super().__init__(classifier, batch_size)
        self.baseline = baseline  # -1.0 is black for images in [-1, 1]
        self.n_steps = n_steps

    def _explain(self, images: Tensor, target: int) -> Tensor:
        return _integrated_gradients(self.classifier, images, self._baseline(images), target, self.n_steps,
                                     self.batch_size)

    def _baseline(self, images: Tensor) -> Tensor | float:
        return self.baseline


class BlurIntegratedGradients(IntegratedGradients):
    """IG from the image's own Gaussian blur: the baseline keeps the anatomy's coarse layout and
    removes only what is sharper than the blur, so the attributions show what fine detail C reads.
    A baseline decides what IG can show; this one is black's strongest rival on medical images."""

    OPTIONS = {"n_steps": "ig_steps", "kernel_size": "ig_blur_kernel", "sigma": "ig_blur_sigma"}

    def __init__(self, classifier: nn.Module, batch_size: int = 64, n_steps: int = 50, kernel_size: int = 11,
                 sigma: float = 5.0):
        super().__init__(classifier, batch_size, n_steps=n_steps)
        self.kernel_size, self.sigma = kernel_size, sigma

    def _baseline(self, images: Tensor) -> Tensor:
        from torchvision.transforms.functional import gaussian_blur

        return gaussian_blur(images, [self.kernel_size] * 2, [self.sigma] * 2)


def _integrated_gradients(classifier: nn.Module, images: Tensor, baselines: Tensor | float, target: int,
                          n_steps: int, batch_size: int) -> Tensor:
    """captum's IG of C's softmax probability of `target` along the straight line from the baselines."""
    from tqdm import TqdmWarning

    with warnings.catch_warnings():  # captum imports tqdm.auto, which warns inside Jupyter without ipywidgets
        warnings.filterwarnings("ignore", category=TqdmWarning)
        import captum.attr

    ig = captum.attr.IntegratedGradients(lambda x: classifier(x).softmax(dim=1))
    return ig.attribute(images, baselines=baselines, target=target, n_steps=n_steps, internal_batch_size=batch_size)


class GenerativeExplainer(Explainer):
    """medXGAN family: explanations from G(z1, z2) and its negative realisation G(z1, 0).

    Subclasses implement `_explain(z1, z2, target)` on one chunk of latents already on the device.
    """

    READS_TUNED_BRANCH = True  # explains with each image's tuned lesion branch, where the inversion tuned it

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

    OPTIONS = {"n_points": "interpolation_points"}

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
    OPTIONS = {"n_steps": "latent_ig_steps", "form": "latent_ig_form"}

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


class RealImageExplainer(GenerativeExplainer):
    """medXGAN explanations of the real image x rather than of its reconstruction G(z1, z2): each ties
    x to G's negative realisation G(z1, 0), so a lesion the reconstruction misses is still explained.
    Subclasses implement `_explain_image(images, z1, z2, target)` on one chunk already on the device."""

    def attribute(self, images: Tensor, target: int = 1, latents: Latents | None = None) -> Tensor:
        return self._heatmap(self.attributions(images, *self._latents(images, latents), target))

    def attributions(self, images: Tensor, z1: Tensor, z2: Tensor, target: int = 1) -> Tensor:
        """Signed (N, C, H, W) attributions on the CPU."""
        return self._per_chunk(lambda x, a, b: self._explain_image(x, a, b, target), images, z1, z2)

    def _explain_image(self, images: Tensor, z1: Tensor, z2: Tensor, target: int) -> Tensor:
        raise NotImplementedError


class CounterfactualIntegratedGradients(RealImageExplainer):
    """captum's IG of C's probability along the straight line from G(z1, 0) to x: the baseline is the
    same patient as G draws them without pathology, so the attributions sum to C(x) - C(G(z1, 0))."""

    OPTIONS = {"n_steps": "ig_steps"}

    def __init__(self, classifier: nn.Module, generator: nn.Module,
                 inverter: Callable[[Tensor], Latents] | None = None, batch_size: int = 64, n_steps: int = 50):
        super().__init__(classifier, generator, inverter, batch_size)
        self.n_steps = n_steps

    def _explain_image(self, images: Tensor, z1: Tensor, z2: Tensor, target: int) -> Tensor:
        baseline = self._baseline(images, z1, z2).to(images.dtype)
        return _integrated_gradients(self.classifier, images, baseline, target, self.n_steps, self.batch_size)

    def _baseline(self, images: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        return self._generate(z1, torch.zeros_like(z2))


class RemovalIntegratedGradients(CounterfactualIntegratedGradients):
    """captum's IG of C's probability along the straight line to x from x with its lesion removed:
    (1 - m) x + m G(z1, 0), where m is the mask of G(z1, z2), the region z2 changes. The baseline
    is x outside the mask and the same patient as G draws them without pathology inside it, so the
    attributions stay inside the mask and sum to C(x) - C(baseline). It is the image the
    lesion-branch tuning asks C to call negative (`medxgan.tuning`). A plain G's z2 may change any
    pixel: its region is the whole image, and the method is ig_counterfactual."""

    def _baseline(self, images: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        negative = super()._baseline(images, z1, z2)
        device = module_device(self.generator)
        with torch.no_grad():
            _, mask = compose(self.generator, z1.to(device), z2.to(device))
        if mask is None:
            return negative
        mask = mask.to(images.device, images.dtype)
        return lesion_removed(images, negative, mask)


class LatentIGToImage(RealImageExplainer):
    """Latent IG along G(z1, a z2) from G(z1, 0) to G(z1, z2), then IG on the straight line from
    G(z1, z2) to x: one path from the negative realisation to the real image, whose attributions sum
    to C(x) - C(G(z1, 0)) (each leg is complete up to its quadrature error)."""

    OPTIONS = {"latent_steps": "latent_ig_steps", "image_steps": "ig_steps"}

    def __init__(self, classifier: nn.Module, generator: nn.Module,
                 inverter: Callable[[Tensor], Latents] | None = None, batch_size: int = 64,
                 latent_steps: int = 50, image_steps: int = 50):
        super().__init__(classifier, generator, inverter, batch_size)
        self.latent_steps, self.image_steps = latent_steps, image_steps
        self.latent_leg = LatentIG(classifier, generator, batch_size=batch_size, n_steps=latent_steps, form="path")

    def _explain_image(self, images: Tensor, z1: Tensor, z2: Tensor, target: int) -> Tensor:
        reconstruction = self._generate(z1, z2).to(images.dtype)
        image_leg = _integrated_gradients(self.classifier, images, reconstruction, target, self.image_steps,
                                          self.batch_size)
        return self.latent_leg._explain(z1, z2, target) + image_leg


class LatentShift(GenerativeExplainer):
    """Latent Shift (Cohen et al., MIDL 2021) in medXGAN's latent space: the codes z = (z1, z2) move
    along -grad_z C(G(z)) (unit length) until C's probability of `target` has dropped by `drop` (or,
    failing that, to where it is lowest within `max_shift`, in units of the codes' N(0, I) scale); the map is the mean absolute change
    between `frames` consecutive images G(z - lambda * g), lambda from 0 to that shift (the
    original's "int" heatmap). Unlike the medXGAN maps, the shift may change z1 too."""

    READS_TUNED_BRANCH = False  # z1 moves off the image's code, where its tuned branch does not apply
    OPTIONS = {"max_shift": "latent_shift_max", "search_steps": "latent_shift_search_steps",
               "drop": "latent_shift_drop", "frames": "latent_shift_frames"}

    def __init__(self, classifier: nn.Module, generator: nn.Module,
                 inverter: Callable[[Tensor], Latents] | None = None, batch_size: int = 64,
                 max_shift: float = 8.0, search_steps: int = 16, drop: float = 0.8, frames: int = 10):
        super().__init__(classifier, generator, inverter, batch_size)
        self.max_shift, self.search_steps, self.drop, self.frames = max_shift, search_steps, drop, frames

    def _explain(self, z1: Tensor, z2: Tensor, target: int) -> Tensor:
        direction = self._descent(z1, z2, target)
        shift = self._shift(z1, z2, direction, target)
        fractions = torch.linspace(0, 1, self.frames, device=z1.device, dtype=z1.dtype)
        images = self._shifted(z1, z2, direction, shift[:, None] * fractions[None, :])
        return to_grey(images.diff(dim=1).abs().mean(dim=1))

    def _descent(self, z1: Tensor, z2: Tensor, target: int) -> Tensor:
        """Unit vectors along -grad_z of C's probability at z = (z1, z2), shape (n, nz1 + nz2)."""
        z = torch.cat([z1, z2], dim=1).requires_grad_(True)
        probability = _target_probability(self.classifier, self.generator(*z.split([z1.shape[1], z2.shape[1]], 1)),
                                          target)
        gradient, = torch.autograd.grad(probability.sum(), z)
        return -gradient / gradient.norm(dim=1, keepdim=True).clamp(min=torch.finfo(gradient.dtype).tiny)

    def _shift(self, z1: Tensor, z2: Tensor, direction: Tensor, target: int) -> Tensor:
        """Per image, the smallest shift on an even grid up to max_shift at which C's probability
        has dropped by `drop` (or below LATENT_SHIFT_FLOOR), else the grid shift where it is lowest."""
        grid = torch.linspace(0, self.max_shift, self.search_steps + 1, device=z1.device, dtype=z1.dtype)
        shifts = grid[None, :].expand(len(z1), -1)
        with torch.no_grad():
            p = _target_probability(self.classifier, self._shifted(z1, z2, direction, shifts).flatten(0, 1),
                                    target).view(len(z1), -1)
        reached = (p <= p[:, :1] - self.drop) | (p < LATENT_SHIFT_FLOOR)
        first = torch.where(reached.any(1), reached.float().argmax(1), p.argmin(1))
        return grid[first]

    def _shifted(self, z1: Tensor, z2: Tensor, direction: Tensor, shifts: Tensor) -> Tensor:
        """(n, k, C, H, W): G at z - shifts[:, j] * direction for every image and its k shifts."""
        n, k = shifts.shape
        z = (torch.cat([z1, z2], dim=1)[:, None, :] + shifts[..., None] * direction[:, None, :]).flatten(0, 1)
        images = self._generate(*z.split([z1.shape[1], z2.shape[1]], dim=1))
        return images.view(n, k, *images.shape[1:])


EXPLAINERS: dict[str, type[Explainer]] = {
    "difference": DifferenceMap,
    "interpolation": Interpolation,
    "latent_ig": LatentIG,
    "ig_counterfactual": CounterfactualIntegratedGradients,
    "ig_removal": RemovalIntegratedGradients,
    "latent_ig_to_image": LatentIGToImage,
    "latent_shift": LatentShift,
    "gradcam": GradCAM,
    "ig": IntegratedGradients,
    "ig_blur": BlurIntegratedGradients,
}


GENERATIVE_METHODS = tuple(name for name, cls in EXPLAINERS.items() if issubclass(cls, GenerativeExplainer))


def build_explainer(method: str, classifier: nn.Module, generator: nn.Module, cfg: dict) -> Explainer:
    """The explainer for `method` with the options of the config's `explain` section."""
    if method not in EXPLAINERS:
        raise ValueError(f"unknown explanation method {method!r}; known: {', '.join(EXPLAINERS)}")
    cls = EXPLAINERS[method]
    options = {"batch_size": cfg["batch_size"]} | {option: cfg[key] for option, key in cls.OPTIONS.items()}
    if method in GENERATIVE_METHODS:
        if isinstance(generator, TunedGenerator) and not cls.READS_TUNED_BRANCH:
            generator = generator.G
        return cls(classifier, generator, **options)
    return cls(classifier, **options)
