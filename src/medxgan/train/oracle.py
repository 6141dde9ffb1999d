"""The oracle: a second classifier, trained apart from C, that judges what G draws.

medXGAN's generator is trained until C calls G(z1, z2) positive and G(z1, 0) negative. That can
be met by drawing the lesion, or by any cue C happens to react to. An independent classifier
separates the two: if G draws lesions, the oracle agrees with C about G's images; if G exploits
C's cues, it does not (the oracle check of the counterfactual-explanation literature). The oracle
differs from C in architecture and seed, and sees only the real training images.
"""

from __future__ import annotations

import torch
from torch import nn

from medxgan.config import ConfigError
from medxgan.data.manifest import ImageSet
from medxgan.inversion import InversionRecord
from medxgan.nets.networks import positive_probability
from medxgan.torch_utils import module_device
from medxgan.train.classifier import train_classifier


def oracle_seed(seed: int, cfg: dict) -> int:
    return seed + cfg["seed_offset"]


def check_independent(oracle_cfg: dict, classifier_cfg: dict) -> None:
    """An oracle with C's architecture would share C's inductive biases: refuse it."""
    if oracle_cfg["arch"] == classifier_cfg["arch"]:
        raise ConfigError(f"oracle.arch ({oracle_cfg['arch']}) must differ from classifier.arch: an oracle of the "
                          "same architecture shares C's blind spots")
    if oracle_cfg["seed_offset"] == 0:
        raise ConfigError("oracle.seed_offset must not be 0: the oracle needs its own seed")


def train_oracle(train: ImageSet, val: ImageSet, cfg: dict, classifier_cfg: dict, data_cfg: dict, seed: int,
                 device) -> tuple[nn.Module, dict]:
    """Train the oracle like C (same loop, model selection on validation), with its own
    architecture, width, schedule and seed, from random weights."""
    check_independent(cfg, classifier_cfg)
    settings = {key: cfg[key] for key in ("arch", "width", "epochs", "batch_size", "lr", "betas", "flips")}
    return train_classifier(train, val, {**settings, "weights": None}, data_cfg, oracle_seed(seed, cfg), device)


@torch.no_grad()
def oracle_probabilities(oracle: nn.Module, images: torch.Tensor, latents: InversionRecord,
                         batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The oracle's positive probability for each real image, its reconstruction G(z1, z2) and its
    negative realisation G(z1, 0): the oracle's fields of the inversion record."""
    device = module_device(oracle)

    def probabilities(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([positive_probability(oracle, part.to(device)).cpu() for part in batch.split(batch_size)])

    return {"p_oracle_image": probabilities(images),
            "p_oracle_reconstruction": probabilities(latents.reconstruction),
            "p_oracle_negative": probabilities(latents.negative)}
