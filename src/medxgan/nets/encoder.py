"""The encoder E(x) -> (z1, z2): a learned first guess of an image's codes, which the inversion
refines (its training: `medxgan.train.encoder`)."""

from __future__ import annotations

import torch
from torch import nn

from medxgan.nets.networks import discriminator_layers


class Encoder(nn.Module):
    """The release's discriminator convolutions (batch norm, no dropout) and a linear head onto
    (z1, z2)."""

    def __init__(self, nz1: int, nz2: int, image_size: int = 64, channels: int = 3, width: float = 1.0):
        super().__init__()
        self.nz1, self.nz2 = nz1, nz2
        layers, cin = discriminator_layers(channels, width, dropout=0.0, batch_norm=False)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * (image_size // 8) ** 2, nz1 + nz2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.head(self.features(images).flatten(1))
        return codes[:, :self.nz1], codes[:, self.nz1:]
