"""The encoder E(x) -> (z1, z2): a learned first guess of an image's codes, to start the inversion.

E is trained after G, with G frozen, on two terms each step:
- G's own samples, whose codes are known: MSE(E(G(z)), z), with z2 = 0 for negative codes;
- real training images, whose codes are not: image_weight * MSE(G(E(x)), x).
The first teaches E the code space G was trained on, the second pulls it towards codes that
reconstruct real images. The optimisation-based inversion then refines E's guess (inversion.init:
encoder), so fewer steps reach the reconstruction that random restarts need many more for.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from medxgan.data.manifest import ImageSet
from medxgan.files import progress
from medxgan.nets.encoder import Encoder
from medxgan.torch_utils import batch_indices, sample_codes

log = logging.getLogger(__name__)


def encoder_losses(E: Encoder, G: nn.Module, real: torch.Tensor, labels: torch.Tensor,
                   noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The code term on G's samples (codes for `labels`) and the image term on `real`. Both go
    through E in one pass, so E's batch-norm statistics in training are those of the mixture its
    running statistics (used in eval mode) average."""
    device = real.device
    z1, z2 = (z.to(device) for z in sample_codes(labels, E.nz1, E.nz2, noise))
    with torch.no_grad():
        samples = G(z1, z2)
    e1, e2 = E(torch.cat([samples, real]))
    n = len(samples)
    code_loss = F.mse_loss(torch.cat([e1[:n], e2[:n]], 1), torch.cat([z1, z2], 1))
    image_loss = F.mse_loss(G(e1[n:], e2[n:]), real)
    return code_loss, image_loss


@torch.no_grad()
def reconstruction_mse(E: Encoder, G: nn.Module, data: ImageSet, device, batch_size: int = 256) -> float:
    """Mean MSE(G(E(x)), x) over a set: how good a start E gives the inversion."""
    E.eval()
    total = 0.0
    for start in range(0, len(data), batch_size):
        images = data.images[start:start + batch_size].to(device)
        total += F.mse_loss(G(*E(images)), images, reduction="sum").item()
    return total / data.images.numel()


def train_encoder(G: nn.Module, train: ImageSet, val: ImageSet, cfg: dict, data_cfg: dict, seed: int,
                  device) -> tuple[Encoder, dict]:
    """E trained against the frozen G (in eval mode: its batch-norm statistics are fixed)."""
    torch.manual_seed(seed)
    device = torch.device(device)
    G = G.to(device).eval().requires_grad_(False)
    spec = {"kind": "encoder", "nz1": G.nz1, "nz2": G.nz2, "image_size": data_cfg["image_size"],
            "channels": data_cfg["channels"], "width": cfg["width"]}
    E = Encoder(G.nz1, G.nz2, spec["image_size"], spec["channels"], cfg["width"]).to(device)
    optimizer = torch.optim.Adam(E.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]))
    noise = torch.Generator().manual_seed(seed + 4)
    history, report_every = [], max(1, cfg["steps"] // 10)
    for step in progress(range(cfg["steps"]), desc="encoder steps"):
        E.train()
        real = train.images[batch_indices(len(train), cfg["batch_size"], step, seed)].to(device)
        labels = torch.randint(0, 2, (len(real),), generator=noise)
        code_loss, image_loss = encoder_losses(E, G, real, labels, noise)
        optimizer.zero_grad(set_to_none=True)
        (code_loss + cfg["image_weight"] * image_loss).backward()
        optimizer.step()
        if (step + 1) % report_every == 0 or step + 1 == cfg["steps"]:
            history.append({"step": step + 1, "code_mse": code_loss.item(), "train_image_mse": image_loss.item()})
            log.info("step %d: code MSE %.4f, image MSE %.4f", step + 1, code_loss.item(), image_loss.item())
    E.eval().requires_grad_(False)
    return E, {"spec": spec, "history": history, "val_reconstruction_mse": reconstruction_mse(E, G, val, device)}
