"""Small building blocks shared by the tests."""

import torch
from torch import nn


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
