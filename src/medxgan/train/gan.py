"""Training: the classifier C, then medXGAN's G and D against the frozen C.

Both loops draw their batches from a permutation seeded by (seed, epoch), so the batch at any step
is known without replaying the run; that is what lets a killed GAN run resume exactly.

Under precision "bf16" the GAN's forward passes run in bf16 autocast; losses, gradients of the
float32 weights and Adam's state stay float32 (mixed precision in the usual sense).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medxgan.data.manifest import ImageSet
from medxgan.files import atomic_path, progress
from medxgan.hardware import autocast, channels_last
from medxgan.nets.encoder import Encoder
from medxgan.nets.networks import build_discriminator, build_generator, compose, dcgan_init
from medxgan.torch_utils import batch_indices, sample_codes

log = logging.getLogger(__name__)

# The averaged G's batch-norm statistics are measured afresh on this many batches of random codes:
# the live G's statistics belong to other weights.
AVERAGE_STATISTICS_BATCHES = 20


def proximity(fake: torch.Tensor, negatives: torch.Tensor | None, positives: torch.Tensor) -> torch.Tensor:
    """mean |G(z1, z2) - G(z1, 0)| over the positive codes' pixels (`positives` marks them in
    `fake`; `negatives` are their G(z1, 0)): z2 should change only what the class change needs.
    Zero without negatives (the term is off, or the batch has no positives)."""
    if negatives is None or len(negatives) == 0:
        return torch.zeros((), device=fake.device)
    return (fake[positives].float() - negatives.float()).abs().mean()


def mask_area(mask: torch.Tensor | None, positives: torch.Tensor) -> torch.Tensor:
    """The sparsity prior on a masked generator's mask: its mean over the positive codes' pixels
    (zero for a plain generator, or a batch without positives)."""
    if mask is None or not positives.any():
        return torch.zeros((), device=positives.device)
    return mask[positives].float().mean()


def reconstruction_terms(G: nn.Module, E: Encoder, C: nn.Module, real: torch.Tensor,
                         labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What G and E learn from real images (as ICAM and StylEx train them): E(x) gives each image's
    codes, z2 held at 0 for negatives, so only z2 may carry what makes a positive one. Returns
    MSE(G(E(x)), x); C's cross-entropy on the positives' reconstructions (class positive) and on
    their G(z1, 0) (class negative); and the mask area over the positives' reconstructions.
    Reconstructions go through G in their own pass: batch norm then normalises G's samples alone,
    as D sees them (one joint pass lets G draw samples that pass only beside reconstructions)."""
    positives = labels == 1
    z1, z2 = E(real)
    z2 = z2 * positives[:, None].to(z2.dtype)
    out, mask = compose(G, torch.cat([z1, z1[positives]]), torch.cat([z2, torch.zeros_like(z2[positives])]))
    n = len(real)
    reconstruction, cleared = out[:n], out[n:]
    mse = F.mse_loss(reconstruction.float(), real)
    classes = torch.cat([torch.ones_like(labels[positives]), torch.zeros_like(labels[positives])])
    cls = (F.cross_entropy(C(torch.cat([reconstruction[positives], cleared])).float(), classes)
           if positives.any() else torch.zeros((), device=real.device))
    return mse, cls, mask_area(None if mask is None else mask[:n], positives)


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a network's weights and buffers, identifying it in a checkpoint."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class GANTrainer:
    """G and D trained against a frozen classifier C, checkpointed atomically so a killed run resumes."""

    def __init__(self, classifier: nn.Module, cfg: dict, data_cfg: dict, seed: int, device, precision: str = "fp32"):
        self.cfg, self.seed, self.device, self.precision = cfg, seed, torch.device(device), precision
        size, channels = data_cfg["image_size"], data_cfg["channels"]
        torch.manual_seed(seed)
        self.g_spec = {"kind": "generator", "nz1": cfg["nz1"], "nz2": cfg["nz2"], "image_size": size,
                       "channels": channels, "width": cfg["width"], "upsampling": cfg["upsampling"],
                       "composition": cfg["composition"]}
        anatomy_width = cfg.get("anatomy_width")
        if anatomy_width is not None:  # only where set: the specs of other generators stay as they were
            self.g_spec["anatomy_width"] = anatomy_width
        self.d_spec = {"kind": "discriminator", "design": cfg["discriminator"], "image_size": size,
                       "channels": channels, "width": cfg["d_width"], "dropout": cfg["d_dropout"]}
        self.G = build_generator(cfg["composition"], cfg["nz1"], cfg["nz2"], size, channels, cfg["width"],
                                 cfg["upsampling"], anatomy_width).to(self.device)
        if cfg["composition"] == "masked":
            self.G.lesion_rows = cfg["lesion_rows"]
        self.D = build_discriminator(cfg["discriminator"], size, channels, cfg["d_width"], cfg["d_dropout"]).to(self.device)
        dcgan_init(self.G)
        if cfg["discriminator"] == "unconditional":  # the spectrally normalised D keeps PyTorch's initialisation
            dcgan_init(self.D)
        # With a reconstruction term, an encoder (D's layers, D's width) is trained beside G.
        self.E = (Encoder(cfg["nz1"], cfg["nz2"], size, channels, cfg["d_width"]).to(self.device)
                  if cfg["reconstruction_weight"] > 0 else None)
        self.C = classifier.to(self.device).eval().requires_grad_(False)
        channels_last(*(m for m in (self.G, self.D, self.C, self.E) if m is not None))
        betas = tuple(cfg["betas"])
        learned = [*self.G.parameters(), *(self.E.parameters() if self.E is not None else ())]
        self.opt_g = torch.optim.Adam(learned, lr=cfg["lr"], betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg["lr"], betas=betas)
        self.noise = torch.Generator().manual_seed(seed + 2)
        # StyleGAN's G_ema: an exponential moving average of G's weights, kept beside G, is the G it keeps
        self.G_average = copy.deepcopy(self.G).requires_grad_(False) if cfg["ema_decay"] > 0 else None
        self.step = 0
        self.losses: list[list[float]] = []  # one row of LOSS_COLUMNS per step
        self._unlogged: list[torch.Tensor] = []  # the rows since the last checkpoint, still on the device

    LOSS_COLUMNS = ("step", "d_loss", "g_adversarial", "g_classifier", "g_proximity", "g_mask", "g_reconstruction",
                    "d_real", "d_fake")

    def train_step(self, real: torch.Tensor, labels: torch.Tensor) -> None:
        cfg, dev = self.cfg, self.device
        real, labels = real.to(dev), labels.to(dev)
        shared = cfg["d_fakes"] == "shared"
        if shared:  # D judges the images G's step then improves: one pass of G per step
            g_codes = self._codes(labels)
            with autocast(dev, self.precision):
                fake, negative, mask = self._fakes(*g_codes, labels)
            d_fake_images, fake_labels = fake.detach(), labels
        else:  # D's own fakes with uniformly drawn labels (as in the release)
            fake_labels = torch.randint(0, 2, (len(labels),), generator=self.noise).to(dev)
            with torch.no_grad(), autocast(dev, self.precision):  # no graph back to G's weights
                d_fake_images = self.G(*self._codes(fake_labels))
        # D: real vs fake; a projection D judges each image against its class.
        with autocast(dev, self.precision):
            d_real, d_fake = self.D(real, labels).float(), self.D(d_fake_images, fake_labels).float()
        d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        # G: fool D, and make C agree with the class the code encodes (labels follow the real batch).
        with autocast(dev, self.precision):
            if not shared:
                fake, negative, mask = self._fakes(*self._codes(labels), labels)
            d_out, c_logits = self.D(fake, labels).float(), self.C(fake).float()
        g_adv = F.binary_cross_entropy_with_logits(d_out, torch.ones_like(d_out))
        g_cls = F.cross_entropy(c_logits, labels)  # on logits: the release applied softmax twice
        g_prox = proximity(fake, negative, labels == 1)
        g_mask = mask_area(mask, labels == 1)
        g_loss = (g_adv + cfg["lambda_cls"] * g_cls + cfg["proximity_weight"] * g_prox
                  + cfg["mask_sparsity_weight"] * g_mask)
        g_rec = torch.zeros((), device=dev)
        if self.E is not None:
            with autocast(dev, self.precision):
                g_rec, rec_cls, rec_mask = reconstruction_terms(self.G, self.E, self.C, real, labels)
            g_loss = (g_loss + cfg["reconstruction_weight"] * g_rec + cfg["lambda_cls"] * rec_cls
                      + cfg["mask_sparsity_weight"] * rec_mask)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        if self.G_average is not None:
            with torch.no_grad():
                for average, weight in zip(self.G_average.parameters(), self.G.parameters()):
                    average.lerp_(weight, 1.0 - cfg["ema_decay"])
        self.step += 1
        self._unlogged.append(torch.stack([d_loss, g_adv, g_cls, g_prox, g_mask, g_rec, torch.sigmoid(d_real).mean(),
                                           torch.sigmoid(d_fake).mean()]).detach())

    def _codes(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (z1, z2) for `labels` from the run's noise generator, on the device."""
        z1, z2 = sample_codes(labels.cpu(), self.cfg["nz1"], self.cfg["nz2"], self.noise)
        return z1.to(self.device), z2.to(self.device)

    @torch.no_grad()
    def generator(self) -> nn.Module:
        """The trained G, in eval mode: G itself, or with `ema_decay` its weights' moving average, whose
        batch-norm statistics are measured on AVERAGE_STATISTICS_BATCHES batches of codes drawn as in
        training (seeded: the same run keeps the same G)."""
        if self.G_average is None:
            return self.G.eval()
        G, cfg = self.G_average.train(), self.cfg
        norms = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the batches below
        codes = torch.Generator().manual_seed(self.seed + 4)
        for _ in range(AVERAGE_STATISTICS_BATCHES):
            labels = torch.randint(0, 2, (cfg["batch_size"],), generator=codes)
            z1, z2 = sample_codes(labels, cfg["nz1"], cfg["nz2"], codes)
            with autocast(self.device, self.precision):
                compose(G, z1.to(self.device), z2.to(self.device))
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        return G.eval()

    def _fakes(self, z1: torch.Tensor, z2: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """G(z1, z2); when the proximity term is on, the positives' G(z1, 0), from the same forward
        pass so both see the same batch-norm statistics (None, and not computed, when it is off);
        and a masked generator's mask for G(z1, z2) (None for a plain generator)."""
        with_negatives = self.cfg["proximity_weight"] > 0
        if with_negatives:
            positives = labels == 1
            z1, z2 = torch.cat([z1, z1[positives]]), torch.cat([z2, torch.zeros_like(z2[positives])])
        out, mask = compose(self.G, z1, z2)
        n = len(labels)
        return out[:n], (out[n:] if with_negatives else None), (None if mask is None else mask[:n])

    def _log_losses(self) -> None:
        """Move the loss rows since the last call to `losses`: one device sync per checkpoint, not per step."""
        if self._unlogged:
            first = self.step - len(self._unlogged) + 1
            values = torch.stack(self._unlogged).cpu().tolist()
            self.losses += [[first + i, *row] for i, row in enumerate(values)]
            self._unlogged = []

    def fit(self, train: ImageSet, checkpoint: Path) -> None:
        checkpoint = Path(checkpoint)
        if checkpoint.is_file():
            self.resume(checkpoint)
        bar = progress(total=self.cfg["steps"], initial=self.step, desc="GAN steps")
        while self.step < self.cfg["steps"]:
            idx = batch_indices(len(train), self.cfg["batch_size"], self.step, self.seed)
            self.train_step(train.images[idx], train.labels[idx])
            bar.update(1)
            if self.step % self.cfg["checkpoint_every"] == 0 or self.step == self.cfg["steps"]:
                self._log_losses()
                _, d_loss, g_adv, g_cls, g_prox, g_mask, g_rec, d_real, d_fake = self.losses[-1]
                bar.set_postfix(d=f"{d_loss:.3f}", g=f"{g_adv:.3f}", cls=f"{g_cls:.3f}")
                log.info("step %d: D %.3f, G adv %.3f, G cls %.4f, G proximity %.4f, G mask %.4f, G reconstruction "
                         "%.4f, D(x) %.2f, D(G(z)) %.2f", self.step, d_loss, g_adv, g_cls, g_prox, g_mask, g_rec,
                         d_real, d_fake)
                self.save_checkpoint(checkpoint)
        bar.close()

    def _state(self) -> dict:
        state = {"step": self.step, "G": self.G.state_dict(), "D": self.D.state_dict(),
                 "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                 "noise_rng": self.noise.get_state(), "torch_rng": torch.get_rng_state(),
                 "losses": self.losses, "settings": self._resume_key()}
        if self.G_average is not None:
            state["G_average"] = self.G_average.state_dict()
        return state if self.E is None else {**state, "E": self.E.state_dict()}

    NOT_IN_RESUME_KEY = ("steps", "checkpoint_every", "disentanglement_samples")

    def _resume_key(self) -> dict:
        """What a checkpoint must share with this run to be resumed: the training settings (the step
        count may grow) and the classifier it was trained against."""
        settings = {k: v for k, v in self.cfg.items() if k not in self.NOT_IN_RESUME_KEY}
        return {"seed": self.seed, **settings, "generator": self.g_spec, "classifier": state_digest(self.C)}

    def save_checkpoint(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self._state(), tmp)

    def resume(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as error:  # a truncated or foreign file
            aside = path.with_name(path.name + ".unreadable")
            path.replace(aside)
            log.warning("checkpoint %s cannot be read (%s): moved to %s, starting afresh", path, error, aside)
            return
        if state["settings"] != self._resume_key():
            log.warning("checkpoint %s was written with other settings: starting afresh", path)
            return
        if state["step"] > self.cfg["steps"]:
            log.warning("checkpoint %s is past the requested %d steps: starting afresh", path, self.cfg["steps"])
            return
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.E is not None:
            self.E.load_state_dict(state["E"])
        if self.G_average is not None:
            self.G_average.load_state_dict(state["G_average"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.noise.set_state(state["noise_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.losses = state["step"], state["losses"]
        log.info("resumed from %s at step %d", path, self.step)


@torch.no_grad()
def disentanglement_check(G: nn.Module, C: nn.Module, n: int, seed: int, device, draws: int = 3,
                          batch_size: int = 256) -> dict:
    """The paper's check: n random z1, decoded with z2 = 0 and with `draws` random z2 each.

    Returns the share C labels negative (z2 = 0) and positive (random z2).
    """
    G.eval()
    rng = torch.Generator().manual_seed(seed + 3)
    z1 = torch.randn(n, G.nz1, generator=rng)
    z2 = torch.randn(n * draws, G.nz2, generator=rng)

    def positive_share(a, b):
        return torch.cat([(C(G(a[i:i + batch_size].to(device), b[i:i + batch_size].to(device))).argmax(1) == 1).cpu()
                          for i in range(0, len(a), batch_size)]).float().mean().item()

    return {"samples": n, "positive_draws_per_sample": draws,
            "negative_called_negative": 1.0 - positive_share(z1, torch.zeros(n, G.nz2)),
            "positive_called_positive": positive_share(z1.repeat_interleave(draws, 0), z2)}
