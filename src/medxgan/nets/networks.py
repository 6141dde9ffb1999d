"""The networks: medXGAN's generator and discriminator, and the two classifiers of the paper.

Images are tensors in [-1, 1] of shape (N, C, H, W). Classifiers return logits of shape (N, 2),
class 0 = negative, class 1 = positive, and expose `target_layer` (their last convolution block)
for Grad-CAM.
"""

from __future__ import annotations

import torch
from torch import nn

from medxgan.config import ConfigError
from medxgan.files import load_state_dict

CLASSIFIER_ARCHS = ("simple_cnn", "vgg16", "residual_cnn")


VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _ch(channels: int, width: float) -> int:
    return max(1, round(channels * width))


UPSAMPLINGS = ("transposed", "resize")


COMPOSITIONS = ("plain", "masked")


DISCRIMINATORS = ("unconditional", "projection")


class Generator(nn.Module):
    """G(z1, z2): the release's AC-GAN-style generator, with a channel-width multiplier.

    z1 encodes anatomy, z2 pathology (exactly 0 for negatives). Output 64x64 or 128x128, tanh.
    upsampling="transposed" is the release's stack of stride-2 transposed convolutions (1 -> 5 ->
    13 -> 29 -> 64), which leaves a checkerboard pattern; "resize" projects to 4x4 and doubles the
    size with nearest-neighbour resizing followed by a 3x3 convolution (Odena et al. 2016), which
    has no checkerboard by construction.
    """

    def __init__(self, nz1: int, nz2: int, image_size: int = 64, channels: int = 3, width: float = 1.0,
                 upsampling: str = "transposed"):
        super().__init__()
        if image_size not in (64, 128):
            raise ValueError(f"generator image_size must be 64 or 128, got {image_size}")
        if upsampling not in UPSAMPLINGS:
            raise ValueError(f"unknown upsampling {upsampling!r} (expected one of {', '.join(UPSAMPLINGS)})")
        self.nz1, self.nz2, self.image_size, self.upsampling = nz1, nz2, image_size, upsampling
        c0, c1, c2, c3, c4 = (_ch(c, width) for c in (768, 384, 256, 192, 64))
        if upsampling == "transposed":
            self.c0 = c0
            self.project = nn.Linear(nz1 + nz2, c0)
            self.net = nn.Sequential(*self._transposed(c0, c1, c2, c3, c4, channels), nn.Tanh())
        else:
            self.project = nn.Linear(nz1 + nz2, c1 * 16)
            self.net = nn.Sequential(nn.Unflatten(1, (c1, 4, 4)), nn.BatchNorm2d(c1), nn.ReLU(True),
                                     *self._resized(c1, c2, c3, c4, channels), nn.Tanh())

    def _transposed(self, c0, c1, c2, c3, c4, channels) -> list[nn.Module]:
        def up(cin, cout):  # spatial size s -> 2s + 3
            return [nn.ConvTranspose2d(cin, cout, 5, 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

        layers = up(c0, c1) + up(c1, c2) + up(c2, c3)  # 1 -> 5 -> 13 -> 29
        if self.image_size == 128:
            return layers + up(c3, c4) + [nn.ConvTranspose2d(c4, channels, 8, 2)]  # 29 -> 61 -> 128
        return layers + [nn.ConvTranspose2d(c3, channels, 8, 2)]  # 29 -> 64

    def _resized(self, c1, c2, c3, c4, channels) -> list[nn.Module]:
        def up(cin, cout):  # spatial size s -> 2s
            return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(cout), nn.ReLU(True)]

        plan = [c1, c2, c3, c4] + ([c4] if self.image_size == 128 else []) + [c4]  # 4 -> 8 -> ... -> image_size
        layers = [layer for cin, cout in zip(plan, plan[1:]) for layer in up(cin, cout)]
        return layers + [nn.Conv2d(c4, channels, 3, 1, 1)]

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z1, z2], dim=1))
        if self.upsampling == "resize":
            return self.net(h)
        # The first transposed convolution sees a 1x1 map: it is one matrix product, which runs 4-19x
        # faster than the convolution kernel on a CPU (benchmarks/layers.py); same weights, same result.
        first = self.net[0]
        k = first.kernel_size[0]
        x = (h @ first.weight.flatten(1)).view(len(h), first.out_channels, k, k)
        return self.net[1:](x)


class MaskedGenerator(nn.Module):
    """G(z1, z2) = (1 - m) * G0(z1) + m * L(z1, z2): z2 acts only through a soft mask m.

    G0 draws the anatomy from z1 alone, L the pathology and the mask's logits from both codes (two
    release-style generators of the same width). The mask is gated by |z2|, so m = 0 when z2 = 0
    by construction: the negative realisation G(z1, 0) is exactly G0(z1), and a change is confined
    to where m is non-zero (the attention masks of GANimation-style editors). A sparsity prior on m
    lives in G's loss (gan.mask_sparsity_weight).
    """

    GATE_SCALE = 2.0  # gate = tanh(GATE_SCALE * |z2| / sqrt(nz2)): about 0.96 for a typical N(0, I) draw

    def __init__(self, nz1: int, nz2: int, image_size: int = 64, channels: int = 3, width: float = 1.0,
                 upsampling: str = "transposed", anatomy_width: float | None = None):
        super().__init__()
        self.nz1, self.nz2, self.image_size, self.channels, self.upsampling = nz1, nz2, image_size, channels, upsampling
        # G0 may be wider than L: its anatomy is what the difference map reads beside every lesion
        self.anatomy = Generator(nz1, 0, image_size, channels, anatomy_width or width, upsampling)
        self.lesion = Generator(nz1, nz2, image_size, channels + 1, width, upsampling)  # + the mask channel

    # In training, "positive" draws L for the codes with z2 != 0 alone (gan.lesion_rows; GANTrainer sets
    # it): elsewhere the mask is 0, so the image is G0(z1) either way and only L's batch statistics differ.
    lesion_rows = "all"

    def compose(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image and its mask m, shape (N, 1, H, W), in [0, 1]."""
        anatomy = self.anatomy(z1, z2[:, :0])
        return self.blend(anatomy, self._lesion(z1, z2, anatomy), z2)

    def _lesion(self, z1: torch.Tensor, z2: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.lesion_rows == "positive"):
            return self.lesion(z1, z2)
        rows = (z2 != 0).any(dim=1)
        lesion = anatomy.new_zeros(len(z1), self.channels + 1, *anatomy.shape[2:])  # ignored: the mask is 0 there
        if rows.any():
            lesion = lesion.index_put((rows,), self.lesion(z1[rows], z2[rows]).to(lesion.dtype))
        return lesion

    def blend(self, anatomy: torch.Tensor, lesion: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image and mask from G0's anatomy and L's output (its image channels and mask logit),
        gated by |z2|: where a caller draws L with other weights (`medxgan.tuning`)."""
        gate = torch.tanh(self.GATE_SCALE * z2.norm(dim=1) / self.nz2 ** 0.5)
        mask = (lesion[:, -1:] + 1) / 2 * gate[:, None, None, None]  # L's tanh output, moved to [0, 1]
        return (1 - mask) * anatomy + mask * lesion[:, :-1], mask

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return self.compose(z1, z2)[0]


def compose(G: nn.Module, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """G(z1, z2) and the mask of where z2 acts, for a G that composes one (a masked G, or one whose
    lesion branch `medxgan.tuning` tuned per image); None for a plain G, whose z2 may act anywhere."""
    return G.compose(z1, z2) if hasattr(G, "compose") else (G(z1, z2), None)


def build_generator(composition: str, nz1: int, nz2: int, image_size: int, channels: int, width: float,
                    upsampling: str, anatomy_width: float | None = None) -> nn.Module:
    """G of the given composition; `anatomy_width` (a masked G's G0, None: `width`) is refused for a plain G."""
    if composition == "plain":
        if anatomy_width is not None:
            raise ConfigError("gan.anatomy_width is the width of a masked G's anatomy branch G0: set "
                              "gan.composition: masked, or gan.anatomy_width: null")
        return Generator(nz1, nz2, image_size, channels, width, upsampling)
    if composition == "masked":
        return MaskedGenerator(nz1, nz2, image_size, channels, width, upsampling, anatomy_width)
    raise ValueError(f"unknown generator composition {composition!r} (expected one of {', '.join(COMPOSITIONS)})")


def discriminator_layers(channels: int, width: float, dropout: float, batch_norm: bool) -> tuple[list[nn.Module], int]:
    """The release's six 3x3 convolutions (strides 2, 1, 2, 1, 2, 1) with leaky ReLU; returns the
    layers and the channels of the last one."""
    plan = [(16, 2), (32, 1), (64, 2), (128, 1), (256, 2), (512, 1)]
    layers, cin = [], channels
    for i, (cout, stride) in enumerate(plan):
        cout = _ch(cout, width)
        layers.append(nn.Conv2d(cin, cout, 3, stride, 1))
        if batch_norm and i > 0:
            layers.append(nn.BatchNorm2d(cout))
        layers += [nn.LeakyReLU(0.2, True), nn.Dropout(dropout)]
        cin = cout
    return layers, cin


class Discriminator(nn.Module):
    """D(x): real vs fake only (no class head), as in the paper. Returns logits of shape (N,);
    `labels` are accepted and ignored, so both discriminators share one call."""

    def __init__(self, image_size: int = 64, channels: int = 3, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        layers, cin = discriminator_layers(channels, width, dropout, batch_norm=True)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * (image_size // 8) ** 2, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + <embed(y), phi(x)>: the projection discriminator (Miyato and Koyama
    2018), so generated positives must match real positives, not just real images.

    phi is the release's convolution stack without batch norm, summed over space; every layer is
    spectrally normalised (Miyato et al. 2018), the stabiliser a class-aware D needs against a
    small G. Returns logits of shape (N,) for class labels y (0 negative, 1 positive).
    """

    def __init__(self, image_size: int = 64, channels: int = 3, width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        layers, cin = discriminator_layers(channels, width, dropout, batch_norm=False)
        norm = nn.utils.parametrizations.spectral_norm
        self.features = nn.Sequential(*(norm(m) if isinstance(m, nn.Conv2d) else m for m in layers))
        self.head = norm(nn.Linear(cin, 1))
        self.embed = norm(nn.Embedding(2, cin))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        phi = self.features(x).sum(dim=(2, 3))
        return self.head(phi).squeeze(1) + (self.embed(labels) * phi).sum(dim=1)


def build_discriminator(design: str, image_size: int, channels: int, width: float, dropout: float) -> nn.Module:
    if design == "unconditional":
        return Discriminator(image_size, channels, width, dropout)
    if design == "projection":
        return ProjectionDiscriminator(image_size, channels, width, dropout)
    raise ValueError(f"unknown discriminator {design!r} (expected one of {', '.join(DISCRIMINATORS)})")


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), batch-norm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class SimpleCNN(nn.Module):
    """The paper's brain classifier: three conv -> ReLU -> BN -> MaxPool -> Dropout blocks."""

    def __init__(self, image_size: int = 64, channels: int = 3, width: float = 1.0, dropout: float = 0.2):
        super().__init__()
        c1, c2, c3 = _ch(16, width), _ch(32, width), _ch(32, width)

        def block(cin, cout, k):
            return [nn.Conv2d(cin, cout, k), nn.ReLU(), nn.BatchNorm2d(cout), nn.MaxPool2d(2), nn.Dropout(dropout)]

        self.features = nn.Sequential(*block(channels, c1, 3), *block(c1, c2, 6), *block(c2, c3, 6))
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, channels, image_size, image_size)).numel()
        self.head = nn.Linear(n_flat, 2)

    @property
    def target_layer(self) -> nn.Module:
        return self.features[-3]  # the last block's BatchNorm, before pooling: full-resolution activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class ResidualCNN(nn.Module):
    """A small residual network: a stride-2 stem, three torchvision ResNet basic blocks (16, 32, 64
    channels, the last two with stride 2), global average pooling and a linear head.

    It shares no layer pattern with SimpleCNN (residual connections, batch norm before the
    activation, no max-pooling, no dropout), which is what the oracle needs: a second opinion that
    does not react to the same cues by construction.
    """

    def __init__(self, channels: int = 3, width: float = 1.0):
        from torchvision.models.resnet import BasicBlock  # torchvision takes 1.5 s to load: only where used

        super().__init__()
        c1, c2, c3 = _ch(16, width), _ch(32, width), _ch(64, width)

        def block(cin: int, cout: int, stride: int) -> nn.Module:
            shortcut = None if cin == cout and stride == 1 else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            return BasicBlock(cin, cout, stride, downsample=shortcut)

        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 3, 2, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            block(c1, c1, 1), block(c1, c2, 2), block(c2, c3, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, 2))

    @property
    def target_layer(self) -> nn.Module:
        return self.features[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class VGG16Classifier(nn.Module):
    """The paper's COVID classifier: VGG16 with frozen convolutions and a new 4096->1024->256->64->2 head.

    With width < 1 the network is narrowed (no pretrained weights then) so a CPU run stays small.
    Grayscale inputs are repeated to three channels.
    """

    def __init__(self, width: float = 1.0, weights: str | None = None, freeze_features: bool = True):
        from torchvision.models.vgg import VGG, make_layers  # torchvision takes 1.5 s to load: only where used

        super().__init__()
        cfg = [v if v == "M" else _ch(v, width) for v in VGG16_LAYERS]
        fc = _ch(4096, width)
        vgg = VGG(make_layers(cfg), num_classes=1000, init_weights=True)
        if width != 1.0:
            vgg.classifier[0] = nn.Linear(cfg[-2] * 7 * 7, fc)
            vgg.classifier[3] = nn.Linear(fc, fc)
        if weights:
            if width != 1.0:
                raise ValueError("pretrained VGG16 weights need classifier width 1.0")
            vgg.load_state_dict(load_state_dict(weights))
        self.features, self.avgpool = vgg.features, vgg.avgpool
        self.fc = nn.Sequential(*list(vgg.classifier.children())[:-1])  # keep FC layers, drop the 1000-way layer
        self.head = nn.Sequential(
            nn.Linear(fc, 1024), nn.ReLU(True), nn.Linear(1024, 256), nn.ReLU(True),
            nn.Linear(256, 64), nn.ReLU(True), nn.Linear(64, 2),
        )
        if freeze_features:
            self.features.requires_grad_(False)

    @property
    def target_layer(self) -> nn.Module:
        return self.features[-3]  # the last convolution (not its in-place ReLU, which breaks hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.head(self.fc(self.avgpool(self.features(x)).flatten(1)))


def build_classifier(arch: str, image_size: int, channels: int, width: float = 1.0,
                     weights: str | None = None) -> nn.Module:
    if arch == "simple_cnn":
        return SimpleCNN(image_size=image_size, channels=channels, width=width)
    if arch == "vgg16":
        return VGG16Classifier(width=width, weights=weights)
    if arch == "residual_cnn":
        return ResidualCNN(channels=channels, width=width)
    raise ValueError(f"unknown classifier arch {arch!r} (expected one of {', '.join(CLASSIFIER_ARCHS)})")


def positive_probability(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """C's probability of the positive class, shape (N,)."""
    return classifier(images).softmax(dim=1)[:, 1]
