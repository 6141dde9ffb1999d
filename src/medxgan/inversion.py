"""Inversion: find (z1, z2) with G(z1, z2) close to a real image x and C(G(z1, z2)) close to C(x).

Many images, each with several random restarts, are optimised together in one batch. Every
image's starting codes come from its own seed, and its loss does not depend on the others, so in
exact arithmetic a batch gives each image the result it would get alone. In float32 the CPU's
kernels round differently at another batch size and Adam's steps amplify that (see
benchmarks/rounding.py); a fixed batch composition (`invert_batches`) keeps results bit-identical.
With an encoder E (inversion.init: encoder), each image's first restart starts at E(x) instead
(medxgan.train.encoder).

Under precision "bf16" the networks' forward passes run in bf16 autocast; the loss, Adam's state
and the codes stay in the networks' parameter dtype (float32 in the workflow). Networks converted
to float64 invert in float64: the tests do so where rounding must not move a result (see
`test_inversion.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medxgan.data.manifest import IMAGE_RANGE
from medxgan.files import progress
from medxgan.hardware import autocast
from medxgan.nets.networks import positive_probability
from medxgan.torch_utils import module_device
from medxgan.tuning import check_tunable, generator_for, tune_lesion_branch

POSITIVE_SEARCH_START = 1e-2  # scale of the first z2 of the positive-realisation search


@dataclass
class Inversion:
    z1: torch.Tensor         # (N, nz1)
    z2: torch.Tensor         # (N, nz2)
    loss: torch.Tensor       # (N,) final objective of the kept restart
    p_image: torch.Tensor    # (N,) C's positive probability for x

    def as_tensors(self) -> dict[str, torch.Tensor]:
        return {"z1": self.z1, "z2": self.z2, "loss": self.loss, "p_image": self.p_image}


@dataclass
class InversionRecord:
    """What inverting a set of images leaves for the explanations, scores and figures: each image's
    manifest row, codes, the reconstruction G(z1, z2) and negative realisation G(z1, 0), C's
    positive probability for all three, the reconstruction's error and, once an oracle has judged
    them (`medxgan.train.oracle`), the oracle's probabilities."""

    rows: torch.Tensor              # (N,) manifest rows: they seed each image's restarts
    z1: torch.Tensor                # (N, nz1)
    z2: torch.Tensor                # (N, nz2)
    loss: torch.Tensor              # (N,) the inversion objective of the kept restart
    p_image: torch.Tensor           # (N,) C's positive probability for x, G(z1, z2), G(z1, 0)
    p_reconstruction: torch.Tensor
    p_negative: torch.Tensor
    mse: torch.Tensor               # (N,) of G(z1, z2) against x
    ssim: torch.Tensor
    reconstruction: torch.Tensor    # (N, C, H, W) G(z1, z2)
    negative: torch.Tensor          # (N, C, H, W) G(z1, 0)
    p_oracle_image: torch.Tensor | None = None
    p_oracle_reconstruction: torch.Tensor | None = None
    p_oracle_negative: torch.Tensor | None = None
    lesion_weights: torch.Tensor | None = None  # (N, P) each image's tuned lesion branch (medxgan.tuning)

    @property
    def codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.z1, self.z2

    def drawn_by(self, G: nn.Module) -> nn.Module:
        """G as the maps of these images draw them: with each one's tuned lesion branch where the
        inversion tuned it (`medxgan.tuning`), G itself otherwise."""
        return generator_for(G, self.z1, self.lesion_weights)

    @property
    def judged_by_oracle(self) -> bool:
        return self.p_oracle_image is not None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The record's tensors by field name, those not set left out (what is written to disk)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def subset(self, positions) -> InversionRecord:
        return InversionRecord(**{name: tensor[positions] for name, tensor in self.tensors().items()})

    def with_(self, **changes) -> InversionRecord:
        return replace(self, **changes)


def reconstruction_mse(reconstructions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return (reconstructions - images).pow(2).flatten(1).mean(dim=1).cpu()


def reconstruction_ssim(reconstructions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    # imported here: torchmetrics takes about 3 s to load, which jobs without SSIM should not pay
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(reconstructions, images, data_range=IMAGE_RANGE,
                                               reduction="none").cpu()


def starting_codes(rows: torch.Tensor, restarts: int, nz1: int, nz2: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z1, z2 ~ N(0, I) for each (image, restart), drawn from a generator seeded by the image's row."""
    z1, z2 = [], []
    for row in rows.tolist():
        rng = torch.Generator().manual_seed(seed * 1_000_003 + row)
        z1.append(torch.randn(restarts, nz1, generator=rng))
        z2.append(torch.randn(restarts, nz2, generator=rng))
    return torch.cat(z1), torch.cat(z2)


def worst_patch_error(squared_error: torch.Tensor, patches: list[int]) -> torch.Tensor:
    """Per sample: the largest mean squared error over any patch of each size in `patches` (pixels,
    non-overlapping), averaged over the sizes. A lesion of 2% of the image adds little to the whole
    image's mean error; inside a patch of its size it dominates."""
    error = squared_error.mean(dim=1, keepdim=True)
    return torch.stack([F.avg_pool2d(error, size).flatten(1).amax(dim=1) for size in patches]).mean(dim=0)


def inversion_loss(G: nn.Module, C: nn.Module, z1, z2, images, p_target, cfg: dict,
                   precision: str = "fp32") -> torch.Tensor:
    """Per-sample objective, in the codes' dtype: mse_weight * MSE(G(z), x) + bce_weight * BCE(C(G(z)),
    C(x)), plus local_weight * the worst patch's MSE (`worst_patch_error`) where local_weight > 0."""
    with autocast(z1.device, precision):
        generated = G(z1, z2)
        logits = C(generated)
    squared_error = (generated.to(z1.dtype) - images).pow(2)
    p = logits.to(z1.dtype).softmax(dim=1)[:, 1].clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(p, p_target, reduction="none")
    loss = cfg["mse_weight"] * squared_error.flatten(1).mean(1) + cfg["bce_weight"] * bce
    if cfg["local_weight"] > 0:
        loss = loss + cfg["local_weight"] * worst_patch_error(squared_error, cfg["local_patches"])
    return loss


def check_encoder(cfg: dict, encoder: nn.Module | None) -> None:
    """An encoder is given exactly when inversion.init asks for one."""
    if (cfg["init"] == "encoder") != (encoder is not None):
        advice = "train one with `medxgan train-encoder`, pass it with --encoder" if encoder is None else "drop it"
        raise ValueError(f"inversion.init is {cfg['init']!r}, but an encoder was {'not ' * (encoder is None)}given: {advice}")


def invert_batch(G: nn.Module, C: nn.Module, images: torch.Tensor, rows: torch.Tensor, cfg: dict, seed: int,
                 precision: str = "fp32", encoder: nn.Module | None = None, negative: bool = False) -> Inversion:
    """The best codes of each image over its restarts. `negative`: z2 is held at 0 and only z1 is
    searched, the anatomy of an image C calls negative (see `positive_realisation`)."""
    check_encoder(cfg, encoder)
    device, dtype = module_device(G), next(G.parameters()).dtype
    restarts = cfg["restarts"]
    images = images.to(device, dtype)
    with torch.no_grad():
        p_image = positive_probability(C, images)  # full precision: the target of every precision
    targets = images.repeat_interleave(restarts, 0)
    p_target = p_image.repeat_interleave(restarts, 0)
    z1, z2 = (code.to(dtype) for code in starting_codes(rows, restarts, G.nz1, G.nz2, seed))
    if encoder is not None:  # the first restart of each image starts at E(x)
        with torch.no_grad():
            z1[::restarts], z2[::restarts] = (code.to(dtype).cpu() for code in encoder(images))
    if negative:
        z2.zero_()
    z1, z2 = z1.to(device).requires_grad_(), z2.to(device).requires_grad_(not negative)
    optimizer = torch.optim.Adam([z1] if negative else [z1, z2], lr=cfg["lr"])
    best_loss = torch.full((len(z1),), float("inf"), device=device, dtype=dtype)
    best_z1, best_z2 = z1.detach().clone(), z2.detach().clone()
    for step in range(cfg["steps"] + 1):
        loss = inversion_loss(G, C, z1, z2, targets, p_target, cfg, precision)
        with torch.no_grad():  # keep each sample's best codes so far (torch.where: no device sync)
            improved = loss < best_loss
            best_loss = torch.where(improved, loss, best_loss)
            best_z1 = torch.where(improved[:, None], z1, best_z1)
            best_z2 = torch.where(improved[:, None], z2, best_z2)
        if step == cfg["steps"]:  # the last pass only scores the final codes
            break
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # a sum keeps each sample's gradient independent of the batch
        optimizer.step()
    best_loss = best_loss.view(-1, restarts)
    keep = best_loss.argmin(1) + torch.arange(len(images), device=device) * restarts
    return Inversion(best_z1[keep].cpu(), best_z2[keep].cpu(), best_loss.min(1).values.cpu(), p_image.cpu())


def invert_batches(G: nn.Module, C: nn.Module, images: torch.Tensor, rows: torch.Tensor, cfg: dict,
                   seed: int, precision: str = "fp32", encoder: nn.Module | None = None,
                   negative: bool = False) -> Iterator[tuple[slice, Inversion]]:
    """Invert `cfg['batch_size']` images at a time, with a progress bar; yield each batch's positions
    and result.

    Batches start at multiples of the batch size, so a chunk of the images that starts on such a
    multiple is cut into the same batches as the whole set, and gets bit-identical results.
    """
    for network in (G, C, encoder):
        if network is not None:
            network.eval().requires_grad_(False)
    size = cfg["batch_size"]
    for start in progress(range(0, len(images), size), desc="inversion batches"):
        batch = slice(start, start + size)
        yield batch, invert_batch(G, C, images[batch], rows[batch], cfg, seed, precision, encoder, negative)


def invert(G: nn.Module, C: nn.Module, images: torch.Tensor, rows: torch.Tensor, cfg: dict, seed: int,
           precision: str = "fp32", encoder: nn.Module | None = None, negative: bool = False) -> Inversion:
    """Invert all images, `cfg['batch_size']` at a time, with a progress bar."""
    parts = [result for _, result in invert_batches(G, C, images, rows, cfg, seed, precision, encoder, negative)]
    return Inversion(*(torch.cat([getattr(p, name) for p in parts]) for name in ("z1", "z2", "loss", "p_image")))


def reconstruct(G: nn.Module, C: nn.Module, images: torch.Tensor, rows: torch.Tensor, cfg: dict, seed: int,
                precision: str = "fp32", encoder: nn.Module | None = None) -> InversionRecord:
    """Invert the images (`invert_batches`), tune each one's lesion branch where inversion.tuning
    asks for it (`medxgan.tuning`), and record their reconstructions, negative realisations and
    scores: the one path the pipeline's invert step and `MedXGAN.invert` share. Everything is
    computed one inversion batch at a time, so a chunk gets exactly the numbers the whole set gets.
    The images and scores kept are float32, whatever precision the search ran in."""
    check_tunable(G, cfg["tuning"])
    device, parts = module_device(G), []
    for batch, result in invert_batches(G, C, images, rows, cfg, seed, precision, encoder):
        weights, lesion_code = (tune_lesion_branch(G, C, images[batch], result.z1, result.z2, cfg["tuning"])
                                if cfg["tuning"]["steps"] > 0 else (None, result.z2))
        z1, z2 = result.z1.to(device), lesion_code.to(device)
        with torch.no_grad():
            reconstruction = generator_for(G, result.z1, weights)(z1, z2).cpu()
            negative = G(z1, torch.zeros_like(z2)).cpu()
            p_reconstruction = positive_probability(C, reconstruction.to(device)).cpu()
            p_negative = positive_probability(C, negative.to(device)).cpu()
        parts.append(InversionRecord(
            rows[batch], result.z1, lesion_code, result.loss, result.p_image, p_reconstruction, p_negative,
            reconstruction_mse(reconstruction, images[batch]), reconstruction_ssim(reconstruction, images[batch]),
            reconstruction, negative, lesion_weights=weights))
    return InversionRecord(**{name: torch.cat([part.tensors()[name] for part in parts])
                              for name in parts[0].tensors()})


def positive_realisation(G: nn.Module, C: nn.Module, z1: torch.Tensor, cfg: dict, seed: int,
                         precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """For anatomies z1 of images C calls negative: z2* with C calling G(z1, z2*) positive, and
    whether it was found. Adam descends -log p_C(positive | G(z1, z2)) from z2 near 0, and each
    image keeps the first z2 at which C says positive: the smallest change along that path, what
    C would take as pathology in this anatomy. Without a flip within `cfg['positive_steps']`, z2*
    is the last z2. The start is a tiny seeded draw, not exactly 0, where a masked G's gate has no
    gradient."""
    device = module_device(G)
    start = torch.randn(len(z1), G.nz2, generator=torch.Generator().manual_seed(seed)) * POSITIVE_SEARCH_START
    z1, z2 = z1.to(device), start.to(device).requires_grad_()
    optimizer = torch.optim.Adam([z2], lr=cfg["positive_lr"])
    found = torch.zeros(len(z1), dtype=torch.bool, device=device)
    chosen = z2.detach().clone()
    for step in range(cfg["positive_steps"] + 1):
        with autocast(device, precision):
            logits = C(G(z1, z2))
        log_p = logits.float().log_softmax(dim=1)[:, 1]
        with torch.no_grad():
            flips = (log_p >= math.log(0.5)) & ~found
            chosen = torch.where(flips[:, None], z2, chosen)
            found |= flips
        if step == cfg["positive_steps"]:
            break
        optimizer.zero_grad(set_to_none=True)
        (-log_p * ~found).sum().backward()  # images that flipped stop moving
        optimizer.step()
    return torch.where(found[:, None], chosen, z2.detach()).cpu(), found.cpu()


def negative_counterfactuals(G: nn.Module, C: nn.Module, images: torch.Tensor, rows: torch.Tensor, cfg: dict,
                             seed: int, precision: str = "fp32",
                             encoder: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """What C would take as pathology in images it calls negative: each image inverted with z2 held
    at 0 (its anatomy z1, reconstruction G(z1, 0)), then its positive realisation G(z1, z2*)
    (`positive_realisation`); the map is |G(z1, z2*) - G(z1, 0)| averaged over channels. `cfg` is
    the inversion section."""
    codes = invert(G, C, images, rows, cfg, seed, precision, encoder, negative=True)
    z2, flipped = positive_realisation(G, C, codes.z1, cfg, seed, precision)
    device = module_device(G)
    with torch.no_grad():
        z1 = codes.z1.to(device)
        negative, positive = G(z1, torch.zeros_like(z2).to(device)), G(z1, z2.to(device))
        p_negative, p_positive = positive_probability(C, negative), positive_probability(C, positive)
    difference = (positive - negative).abs().mean(dim=1).cpu()
    return {"z1": codes.z1, "z2": z2, "flipped": flipped, "p_image": codes.p_image, "negative": negative.cpu(),
            "positive": positive.cpu(), "p_negative": p_negative.cpu(), "p_positive": p_positive.cpu(),
            "difference": difference, "change_l1": difference.flatten(1).mean(1), "z2_norm": z2.norm(dim=1)}
