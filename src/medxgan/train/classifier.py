"""The classifier C that medXGAN explains: trained on the real training images, the epoch with the
best validation accuracy kept, and its scores on any split (accuracy, AUROC, confusion matrix).

Batches come from a permutation seeded by (seed, epoch), as in the GAN's loop (`batch_indices`)."""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from medxgan.data.manifest import ImageSet
from medxgan.files import progress
from medxgan.nets.networks import build_classifier
from medxgan.torch_utils import batch_indices

log = logging.getLogger(__name__)


def random_flips(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally and vertically, each with probability 1/2."""
    for dim in (3, 2):
        flip = torch.rand(len(images), generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None].to(images.device), images.flip(dim), images)
    return images


@torch.no_grad()
def evaluate_classifier(classifier: nn.Module, data: ImageSet, device, batch_size: int = 256) -> dict:
    from torchmetrics.functional.classification import (  # slow to import
        binary_auroc,
        binary_confusion_matrix,
    )

    classifier.eval()
    probs = torch.cat([
        classifier(data.images[i:i + batch_size].to(device)).softmax(1)[:, 1].cpu()
        for i in range(0, len(data), batch_size)
    ])
    labels = data.labels
    confusion = binary_confusion_matrix(probs, labels)  # rows: true negative/positive
    return {
        "n": len(data),
        "accuracy": ((probs >= 0.5).long() == labels).float().mean().item(),
        "auroc": binary_auroc(probs, labels).item() if labels.unique().numel() == 2 else None,
        "confusion_matrix": confusion.tolist(),
    }


def train_classifier(train: ImageSet, val: ImageSet, cfg: dict, data_cfg: dict, seed: int, device) -> tuple[nn.Module, dict]:
    """C is trained in fp32 and in the standard memory layout whatever the precision setting: it is
    the network being explained, and any change in rounding during its training gives another
    classifier (trained channels-last, or in bf16, the synthetic-mri C's IG mass in lesion fell
    from 0.44 to 0.14-0.15), for a saving of a few seconds."""
    torch.manual_seed(seed)
    device = torch.device(device)
    spec = {"kind": "classifier", "arch": cfg["arch"], "image_size": data_cfg["image_size"],
            "channels": data_cfg["channels"], "width": cfg["width"]}
    model = build_classifier(cfg["arch"], spec["image_size"], spec["channels"], cfg["width"], cfg["weights"]).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg["lr"], betas=tuple(cfg["betas"]))
    augment_rng = torch.Generator().manual_seed(seed + 1)
    steps_per_epoch = max(1, len(train) // cfg["batch_size"])
    history, best = [], {"val_accuracy": -1.0}
    for epoch in progress(range(cfg["epochs"]), desc="classifier epochs"):
        model.train()
        total = torch.zeros((), device=device)  # summed on the device: no sync per step
        for position in range(steps_per_epoch):
            idx = batch_indices(len(train), cfg["batch_size"], epoch * steps_per_epoch + position, seed)
            images = train.images[idx]
            if cfg["flips"]:
                images = random_flips(images, augment_rng)
            loss = F.cross_entropy(model(images.to(device)), train.labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        val_accuracy = evaluate_classifier(model, val, device)["accuracy"]
        history.append({"epoch": epoch + 1, "train_loss": total.item() / steps_per_epoch, "val_accuracy": val_accuracy})
        log.info("epoch %d: train loss %.4f, val accuracy %.3f", epoch + 1, history[-1]["train_loss"], val_accuracy)
        if val_accuracy > best["val_accuracy"]:  # model selection on the validation split; test stays unseen
            best = {"val_accuracy": val_accuracy, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best["state"])
    model.eval().requires_grad_(False)
    return model, {"spec": spec, "history": history, "selected_epoch": best["epoch"]}
