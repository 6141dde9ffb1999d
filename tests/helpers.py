"""Small building blocks shared by the tests."""

import torch

from medxgan.inversion import InversionRecord
from torch import nn


# inversion.tuning switched off (the paper's G as trained), for tests that build the inversion's settings by hand
TUNING_OFF = {"steps": 0, "lr": 1e-3, "residual_lr": 0.0, "code_lr": 0.0, "mse_weight": 1.0, "removal_weight": 1.0,
              "mask_weight": 5.0, "lesion_weight": 10.0, "image_weight": 0.1,
              "completion_steps": 0, "completion_level": 0.5, "completion_reach": 0.25, "completion_evidence": False,
              "completion_weight": 10.0}


def calibrate_batch_norm(model: nn.Module, *inputs: torch.Tensor) -> None:
    """Set batch-norm running statistics from one batch, so a random eval-mode model is not near-constant."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(*inputs)
    model.eval()


class RegionClassifier(nn.Module):
    """Positive logit = `gain` x the mean of rows/cols [lo, hi); negative logit = 0."""

    def __init__(self, lo: int = 8, hi: int = 24, gain: float = 4.0):
        super().__init__()
        self.region = slice(lo, hi)
        self.gain = nn.Parameter(torch.tensor(gain))

    def forward(self, x):
        score = self.gain * x[:, :, self.region, self.region].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(score), score], dim=1)


def calibrate_gan_pair(generator: nn.Module, classifier: nn.Module, n: int = 64) -> None:
    """Batch-norm statistics for G from codes that are half negatives (z2 = 0), as in training, and
    for C from G's images."""
    rng = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(n, generator.nz1, generator=rng), torch.randn(n, generator.nz2, generator=rng)
    z2[: n // 2] = 0
    calibrate_batch_norm(generator, z1, z2)
    with torch.no_grad():
        calibrate_batch_norm(classifier, generator(z1, z2))


def inversion_record(images: torch.Tensor, **fields) -> InversionRecord:
    """An inversion record of `images`: every field a neutral value (a perfect reconstruction that C
    calls positive, a negative realisation it calls negative) unless given."""
    n = len(images)
    neutral = {"rows": torch.arange(n), "z1": torch.zeros(n, 1), "z2": torch.zeros(n, 1), "loss": torch.zeros(n),
               "p_image": torch.ones(n), "p_reconstruction": torch.ones(n), "p_negative": torch.zeros(n),
               "mse": torch.zeros(n), "ssim": torch.ones(n), "reconstruction": images.clone(), "negative": images.clone()}
    return InversionRecord(**(neutral | fields))
