"""Per-image tuning of a masked G's lesion branch after the inversion (pivotal tuning, Roich et
al. 2021; the authors' brain demo fine-tuned G by hand for the same reason).

At the inverted codes (z1, z2), a small G draws the anatomy but not the tumour: G(z1, z2) of a
positive image shows a diffuse change of texture under a wide mask, and the difference map
|G(z1, z2) - G(z1, 0)| points at that texture. Tuning L (the branch that draws the lesion and its
mask, `MaskedGenerator`) for each image, with G0 frozen, makes the pair right:

- G(z1, z2) = (1 - m) G0(z1) + m L(z1, z2) is drawn towards x (`mse_weight`), and C calls it positive;
- the mask is the smallest one (`mask_weight` * mean(m)) whose region, replaced in x by G0(z1),
  makes C call x negative (`removal_weight`): it must cover what makes x positive, the lesion;
- L's image is drawn towards x where the mask is (`lesion_weight`) and, weakly, everywhere
  (`image_weight`): where m = 0 and L = G0 neither would get a gradient otherwise, and the tuning
  could not start drawing the lesion.

L is a small generator: in 200 steps it does not draw a tumour's dark core (its error there stays
near G0's). Each image therefore also tunes a residual image added to L's image channels
(`residual_lr`; 0 keeps it at 0): where the mask is, G(z1, z2) can then draw x itself, so the
reconstruction holds the lesion and the difference map is m (x - G0(z1)), C's smallest region times
what G0 changed there. The mask stays L's own, smooth drawing.

The mask is the smallest region C needs, and C is satisfied before the lesion is covered: on
synthetic-cxr, x with the mask's region drawn by G0 is already as negative to C as G0(z1) itself,
while a third of the opacity lies outside the mask. `completion_steps` more steps may then grow the
mask over the rest of the lesion: where x differs from G0(z1) by at least `completion_level` of what
it differs under the mask, in one piece with the mask, and no farther from it than
`completion_reach` times its radius; with `completion_evidence`, only where C's gradient says that
x's pixel, in place of G0's, adds to its positive call (the lesion's faint edge does, G0's misdrawn
anatomy beside it mostly does not). There the mask's price is lifted and it is pulled to 1
(`completion_weight`); elsewhere it keeps its price.

The image's lesion code z2 is tuned with L (`code_lr`): the mask's ceiling is the gate
tanh(2 |z2| / sqrt(nz2)), and an inversion that lands at a z2 of small norm (a tenth of synthetic-cxr's
test positives below 0.35) closes it where no tuning of L can open it. z1 is not tuned.

G(z1, 0) = G0(z1) stays bit-identical: m is 0 at z2 = 0 and G0 is not tuned. Each image's tuned
weights are its own, used only at its own anatomy code (`TunedGenerator`), so the rest of the
latent space keeps G's weights: the locality PTI's regulariser asks for, by construction.
Each image's loss reads only its own weights, and Adam's update is elementwise, so a batch gives
each image the result it would get alone (up to the kernels' rounding at another batch size).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from medxgan.config import ConfigError
from medxgan.files import progress
from medxgan.nets.networks import MaskedGenerator

NEGATIVE, POSITIVE = 0, 1


def check_tunable(G: nn.Module, cfg: dict) -> None:
    """A setting that cannot apply to this G is bad input: `medxgan invert` says so in one line."""
    if cfg["steps"] > 0 and not isinstance(G, MaskedGenerator):
        raise ConfigError("inversion.tuning.steps > 0 tunes a masked G's lesion branch, but this G is "
                         f"{type(G).__name__}: set gan.composition: masked, or inversion.tuning.steps: 0")


RESIDUAL = "residual"  # the name of each image's own image added to L's image channels


def branch_shapes(G: MaskedGenerator) -> dict[str, torch.Size]:
    """The shapes of one image's tuned branch: L's weights, then its residual image."""
    shapes = {name: p.shape for name, p in G.lesion.named_parameters()}
    return shapes | {RESIDUAL: torch.Size((G.channels, G.image_size, G.image_size))}


def as_vectors(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stacked per-image weights (N, ...) by name as one (N, P) tensor, in the branch's parameter order."""
    return torch.cat([p.flatten(1) for p in params.values()], dim=1)


def from_vectors(vectors: torch.Tensor, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    sizes = [shape.numel() for shape in shapes.values()]
    if RESIDUAL in shapes and vectors.shape[1] == sum(sizes) - shapes[RESIDUAL].numel():
        # a record written before branches carried a residual: its residual is 0
        vectors = torch.cat([vectors, vectors.new_zeros(len(vectors), shapes[RESIDUAL].numel())], dim=1)
    if vectors.shape[1] != sum(sizes):
        raise ValueError(f"tuned lesion branches of {vectors.shape[1]} numbers per image do not fit this G's "
                         f"branch of {sum(sizes)}: the record was written with another G")
    parts = vectors.split(sizes, dim=1)
    return {name: part.reshape(len(vectors), *shape) for (name, shape), part in zip(shapes.items(), parts)}


def with_residual(lesion: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """L's output (image channels, then the mask logit) with a residual added to its image channels."""
    return lesion if residual is None else torch.cat([lesion[:, :-1] + residual, lesion[:, -1:]], dim=1)


def draw_branch(G: MaskedGenerator, params: dict[str, torch.Tensor], z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """L's output for each code with its own weights and residual: params hold one set per code,
    (N, ...); without a RESIDUAL entry, L's output alone."""
    buffers = dict(G.lesion.named_buffers())
    weights = {name: p for name, p in params.items() if name != RESIDUAL}

    def one(p, a, b):
        return functional_call(G.lesion, (p, buffers), (a[None], b[None]))[0]

    return with_residual(vmap(one)(weights, z1, z2), params.get(RESIDUAL))


def lesion_removed(images: torch.Tensor, anatomy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with its masked region drawn as G0 draws it: (1 - m) x + m G0(z1), the image C must call negative."""
    return (1 - mask) * images + mask * anatomy


def tuning_loss(G: MaskedGenerator, C: nn.Module, params: dict[str, torch.Tensor], z1: torch.Tensor,
                z2: torch.Tensor, images: torch.Tensor, anatomy: torch.Tensor, cfg: dict,
                region: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image objective of the tuning (see the module's notes), shape (N,). `region` (N, 1, H, W),
    1 where the completion phase lets the mask grow: no price there, and a pull towards 1."""
    lesion = draw_branch(G, params, z1, z2)
    drawn, mask = G.blend(anatomy, lesion, z2)
    removed = lesion_removed(images, anatomy, mask)
    n = len(images)
    logits = C(torch.cat([drawn, removed]))
    targets = torch.cat([torch.full((n,), POSITIVE), torch.full((n,), NEGATIVE)]).to(images.device)
    cross_entropy = F.cross_entropy(logits.float(), targets, reduction="none")
    branch_error = (lesion[:, :-1] - images).pow(2).mean(dim=1, keepdim=True)
    weight = mask.detach()
    # a floor of one pixel's weight: an empty mask divides by 1, not 0
    lesion_error = (weight * branch_error).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)
    priced = mask if region is None else mask * (1 - region)
    loss = (cfg["mse_weight"] * (drawn - images).pow(2).flatten(1).mean(1) + cross_entropy[:n]
            + cfg["removal_weight"] * cross_entropy[n:] + cfg["mask_weight"] * priced.flatten(1).mean(1)
            + cfg["lesion_weight"] * lesion_error + cfg["image_weight"] * branch_error.flatten(1).mean(1))
    if region is None:
        return loss
    return loss + cfg["completion_weight"] * ((1 - mask).pow(2) * region).flatten(1).mean(1)


def smoothed(values: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) averaged over 3 x 3, as (N, H, W) on the CPU."""
    return F.avg_pool2d(values, 3, stride=1, padding=1, count_include_pad=False)[:, 0].cpu().numpy()


def removal_evidence(C: nn.Module, images: torch.Tensor, anatomy: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per pixel, how much x's value instead of G0(z1)'s adds to C's positive-minus-negative logit, to
    first order at `lesion_removed`: the gradient there times (x - G0(z1)),
    summed over channels and smoothed over 3 x 3, (N, H, W)."""
    removed = lesion_removed(images, anatomy, mask).detach().requires_grad_()
    logits = C(removed).float()
    gradient, = torch.autograd.grad((logits[:, POSITIVE] - logits[:, NEGATIVE]).sum(), removed)
    return smoothed((gradient * (images - anatomy)).sum(dim=1, keepdim=True))


def completion_region(images: torch.Tensor, anatomy: torch.Tensor, mask: torch.Tensor, cfg: dict,
                      evidence: np.ndarray | None = None) -> torch.Tensor:
    """Where the completion phase lets each image's mask grow, (N, 1, H, W) in {0, 1}: the mask's core
    (m > 0.5) and the pixels in one piece with it where |x - G0(z1)| (smoothed over 3 x 3) is at
    least `completion_level` times its median under the core, and `evidence` (N, H, W), where given,
    is above 0, no farther from the core than `completion_reach` times the core's radius (that of a
    disk of its area). Empty where the core is empty."""
    from scipy import ndimage  # imported here: only the completion phase needs it

    difference = smoothed((images - anatomy).abs().mean(dim=1, keepdim=True))
    cores = (mask[:, 0] > 0.5).cpu().numpy()
    region = np.zeros_like(cores)
    for i, (core, change) in enumerate(zip(cores, difference)):
        if not core.any():
            continue
        candidates = change >= cfg["completion_level"] * np.median(change[core])
        if evidence is not None:
            candidates &= evidence[i] > 0
        pieces, _ = ndimage.label(candidates)
        touching = np.unique(pieces[core])
        radius = cfg["completion_reach"] * np.sqrt(core.sum() / np.pi)
        near = ndimage.distance_transform_edt(~core) <= radius
        region[i] = core | (np.isin(pieces, touching[touching > 0]) & near)
    return torch.from_numpy(region)[:, None].to(mask.dtype).to(mask.device)


def tune_lesion_branch(G: MaskedGenerator, C: nn.Module, images: torch.Tensor, z1: torch.Tensor,
                       z2: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's tuned lesion-branch weights, (N, P), and lesion code z2, (N, nz2), on the CPU,
    starting from G's weights and the given z2. `cfg` is inversion.tuning: `steps` steps, then
    `completion_steps` with the mask free to grow over `completion_region`."""
    reference = next(G.parameters())
    images, z1, z2 = (t.to(reference.device, reference.dtype) for t in (images, z1, z2))
    with torch.no_grad():
        anatomy = G.anatomy(z1, z2[:, :0])
    # one copy of L's weights per image, in the plain layout: vmap's batched convolutions run about
    # 1.7x slower on channels-last copies (measured on a 2-core AMD EPYC)
    params = {name: p.detach().expand(len(images), *p.shape).clone(memory_format=torch.contiguous_format)
              .requires_grad_() for name, p in G.lesion.named_parameters()}
    groups = [{"params": list(params.values()), "lr": cfg["lr"]}]
    params[RESIDUAL] = torch.zeros_like(images).requires_grad_(cfg["residual_lr"] > 0)
    code = z2.clone().requires_grad_(cfg["code_lr"] > 0)
    # the residual's own rate: an Adam step moves a pixel by about its rate, so L's 1e-3 would move
    # it a tenth of the [-1, 1] range in 200 steps
    for tensor, lr in ((params[RESIDUAL], cfg["residual_lr"]), (code, cfg["code_lr"])):
        if lr > 0:
            groups.append({"params": [tensor], "lr": lr})
    # fused: one kernel for the whole update; with a copy of L per image, Adam's loop over tensors was
    # about a tenth of each step (one core)
    optimizer = torch.optim.Adam(groups, fused=True)
    region = None
    for step in progress(range(cfg["steps"] + cfg["completion_steps"]), desc="lesion-branch tuning"):
        if step == cfg["steps"] and cfg["completion_steps"] > 0:
            with torch.no_grad():
                _, mask = G.blend(anatomy, draw_branch(G, params, z1, code), code)
            evidence = removal_evidence(C, images, anatomy, mask) if cfg["completion_evidence"] else None
            region = completion_region(images, anatomy, mask, cfg, evidence)
        loss = tuning_loss(G, C, params, z1, code, images, anatomy, cfg, region)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # a sum keeps each image's gradient its own
        optimizer.step()
    return as_vectors({name: p.detach() for name, p in params.items()}).cpu(), code.detach().cpu()


class TunedGenerator(nn.Module):
    """A masked G whose lesion branch draws each tuned image with that image's weights.

    A code whose z1 is one of the tuned images' anatomy codes is drawn with that image's weights
    (so G(z1, a z2) for every a, the difference map's, interpolation's and Latent IG's paths); any
    other z1 with G's own. Latent Shift, which moves z1 itself, therefore sees G.
    """

    def __init__(self, G: MaskedGenerator, z1: torch.Tensor, weights: torch.Tensor):
        super().__init__()
        if len(z1) != len(weights):
            raise ValueError(f"tuned weights for {len(weights)} images given with {len(z1)} anatomy codes")
        self.G, self.nz1, self.nz2 = G, G.nz1, G.nz2
        device = next(G.parameters()).device
        self.codes = z1.to(device)
        self.params = from_vectors(weights.to(device), branch_shapes(G))
        self.buffers = dict(G.lesion.named_buffers())

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return self.compose(z1, z2)[0]

    def compose(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image and its mask, as `MaskedGenerator.compose` gives them."""
        matches = (z1[:, None, :] == self.codes[None].to(z1.dtype)).all(dim=2)
        owner = torch.where(matches.any(dim=1), matches.float().argmax(dim=1), -1)
        order, drawn = [], []
        for image in owner.unique().tolist():  # each code's rows drawn once, with its own branch or G's (-1)
            rows = (owner == image).nonzero().flatten()
            codes = z1[rows], z2[rows]
            drawn.append(self.G.lesion(*codes) if image < 0 else self._draw_tuned(image, *codes))
            order.append(rows)
        lesion = torch.cat(drawn)[torch.cat(order).argsort()]
        return self.G.blend(self.G.anatomy(z1, z2[:, :0]), lesion, z2)

    def _draw_tuned(self, image: int, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        weights = {name: p[image] for name, p in self.params.items() if name != RESIDUAL}
        lesion = functional_call(self.G.lesion, (weights, self.buffers), (z1, z2))
        return with_residual(lesion, self.params[RESIDUAL][image])


def generator_for(G: nn.Module, z1: torch.Tensor, weights: torch.Tensor | None) -> nn.Module:
    """G as the explanations of these images see it: with their tuned lesion branches where an
    inversion tuned them (weights not None), G itself otherwise."""
    return G if weights is None else TunedGenerator(G, z1, weights).eval()
