import copy
import functools

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from medxgan.hardware import channels_last
from medxgan.nets.networks import Discriminator, Generator, SimpleCNN, VGG16Classifier, build_classifier, dcgan_init
from medxgan.artifacts import InputFileError, load_model, save_model
from medxgan.files import load_state_dict
from helpers import calibrate_batch_norm

NZ1, NZ2 = 8, 4


def codes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, NZ1, generator=generator), torch.randn(n, NZ2, generator=generator)


def random_weights(shape, seed: int = 0) -> torch.Tensor:
    """Fixed random weights for a loss, so no gradient vanishes by symmetry (as a plain sum can)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def assert_every_parameter_has_gradient(model: nn.Module) -> None:
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient reached {missing}"


# ---------------------------------------------------------------------------------- generator

@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_shape_range_and_gradients(size, channels):
    torch.manual_seed(0)
    generator = Generator(NZ1, NZ2, size, channels, width=0.0625)
    z1, z2 = (z.requires_grad_() for z in codes(3))
    images = generator(z1, z2)
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert images.std() > 0
    (images * random_weights(images.shape)).sum().backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    assert z2.grad is not None and z2.grad.abs().sum() > 0
    assert_every_parameter_has_gradient(generator)


def test_generator_depends_on_both_codes():
    torch.manual_seed(0)
    generator = Generator(NZ1, NZ2, 64, 1, width=0.0625).eval()
    z1, z2 = codes(2)
    with torch.no_grad():
        base = generator(z1, z2)
        assert not torch.allclose(base, generator(z1, torch.zeros_like(z2)))
        assert not torch.allclose(base, generator(torch.zeros_like(z1), z2))


@pytest.mark.parametrize("size", [32, 96, 256])
def test_generator_rejects_unsupported_sizes(size):
    with pytest.raises(ValueError, match="image_size"):
        Generator(NZ1, NZ2, size, 1, width=0.0625)


# ---------------------------------------------------------------------------------- discriminator

@pytest.mark.parametrize("size", [64, 128])
def test_discriminator_logits_and_gradients(size):
    torch.manual_seed(0)
    discriminator = Discriminator(size, channels=3, width=0.0625)
    images = (torch.rand(4, 3, size, size) * 2 - 1).requires_grad_()
    logits = discriminator(images)
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()
    (logits * random_weights(4)).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert_every_parameter_has_gradient(discriminator)


def test_discriminator_eval_is_deterministic_and_per_image():
    torch.manual_seed(0)
    discriminator = Discriminator(64, channels=1, width=0.0625).eval()
    images = torch.rand(4, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        batch = discriminator(images)
        single = torch.cat([discriminator(images[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)
    assert batch.unique().numel() == 4  # not constant: each image gets its own logit


# ---------------------------------------------------------------------------------- classifiers

@functools.cache
def _narrow_vgg() -> nn.Module:
    torch.manual_seed(0)
    return VGG16Classifier(width=0.0625)  # slow to build: it starts from a full-size VGG


def tiny_classifier(arch: str, channels: int) -> nn.Module:
    if arch == "simple_cnn":
        torch.manual_seed(0)
        return SimpleCNN(64, channels, width=0.25)
    return copy.deepcopy(_narrow_vgg())  # a fresh copy: tests change modes and gradients


@pytest.mark.parametrize("arch", ["simple_cnn", "vgg16"])
@pytest.mark.parametrize("channels", [1, 3])
def test_classifier_logits_and_input_gradients(arch, channels):
    model = tiny_classifier(arch, channels)
    images = (torch.rand(3, channels, 64, 64) * 2 - 1).requires_grad_()
    logits = model(images)
    assert logits.shape == (3, 2)
    assert torch.isfinite(logits).all()
    (logits * random_weights((3, 2))).sum().backward()
    assert images.grad is not None and images.grad.shape == images.shape
    assert images.grad.abs().sum() > 0


def test_vgg_grey_input_is_the_repeated_rgb_input():
    model = tiny_classifier("vgg16", 3).eval()
    grey = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(grey), model(grey.repeat(1, 3, 1, 1)))


def test_vgg_features_are_frozen_and_head_trains():
    model = tiny_classifier("vgg16", 3)
    assert all(not p.requires_grad for p in model.features.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = list(model.head.parameters())
    assert head and all(p.requires_grad for p in head)
    assert {id(p) for p in head} <= {id(p) for p in trainable}
    model(torch.rand(2, 3, 64, 64) * 2 - 1).sum().backward()
    assert all(p.grad is None for p in model.features.parameters())
    assert all(p.grad is not None for p in head)


def test_vgg_features_can_be_left_trainable():
    torch.manual_seed(0)
    model = VGG16Classifier(width=0.0625, freeze_features=False)
    assert all(p.requires_grad for p in model.features.parameters())


@pytest.mark.parametrize("arch", ["simple_cnn", "vgg16"])
def test_target_layer_is_inside_the_network_and_sees_the_forward_pass(arch):
    model = tiny_classifier(arch, 3).eval()
    layer = model.target_layer
    assert any(m is layer for m in model.modules())
    expected = nn.BatchNorm2d if arch == "simple_cnn" else nn.Conv2d
    assert isinstance(layer, expected)
    last = [m for m in model.modules() if isinstance(m, expected)][-1]
    assert layer is last  # the last block: the paper's Grad-CAM layer
    seen = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    try:
        with torch.no_grad():
            model(torch.rand(2, 3, 64, 64))
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0][0] == 2 and len(seen[0]) == 4


def test_build_classifier_picks_the_arch_and_rejects_unknown_ones():
    assert isinstance(build_classifier("simple_cnn", 64, 1, width=0.25), SimpleCNN)
    assert isinstance(build_classifier("vgg16", 64, 3, width=0.0625), VGG16Classifier)
    with pytest.raises(ValueError, match="resnet50"):
        build_classifier("resnet50", 64, 3)


# ---------------------------------------------------------------------------------- initialisation

def test_dcgan_init_draws_conv_and_batch_norm_weights():
    torch.manual_seed(0)
    modules = nn.ModuleList([Generator(NZ1, NZ2, 64, 3, width=0.125), Discriminator(64, 3, width=0.125)])
    convs = [m for m in modules.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    norms = [m for m in modules.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():  # values no default initialisation produces, so the check sees the re-draw
        for m in convs:
            m.weight.fill_(5.0)
        for m in norms:
            m.weight.fill_(-3.0)
            m.bias.fill_(2.0)
    dcgan_init(modules)
    conv_weights = torch.cat([m.weight.flatten() for m in convs])
    norm_weights = torch.cat([m.weight.flatten() for m in norms])
    n, n_norm = conv_weights.numel(), norm_weights.numel()
    # Tolerances: about 5 standard errors for these sample sizes (std of a std estimate ~ s / sqrt(2n)).
    assert n > 10_000 and n_norm > 50
    assert abs(conv_weights.std().item() - 0.02) < 5 * 0.02 / (2 * n) ** 0.5
    assert abs(conv_weights.mean().item()) < 5 * 0.02 / n ** 0.5
    assert abs(norm_weights.mean().item() - 1.0) < 5 * 0.02 / n_norm ** 0.5
    assert 0.01 < norm_weights.std().item() < 0.03
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)


# ---------------------------------------------------------------------------------- saving and loading

def saved_cases():
    # Non-default running statistics, so a round trip that lost them would show.
    torch.manual_seed(0)
    z1, z2 = codes(4)
    images = torch.rand(4, 1, 64, 64) * 2 - 1
    generator = Generator(NZ1, NZ2, 64, 1, width=0.0625)
    calibrate_batch_norm(generator, z1, z2)
    classifier = SimpleCNN(64, 1, width=0.25)
    calibrate_batch_norm(classifier, images)
    discriminator = Discriminator(64, 1, width=0.0625)
    calibrate_batch_norm(discriminator, images)
    return {
        "generator": (generator, {"kind": "generator", "nz1": NZ1, "nz2": NZ2, "image_size": 64, "channels": 1,
                                  "width": 0.0625}, (z1, z2)),
        "classifier": (classifier, {"kind": "classifier", "arch": "simple_cnn", "image_size": 64, "channels": 1,
                                    "width": 0.25}, (images,)),
        "discriminator": (discriminator, {"kind": "discriminator", "image_size": 64, "channels": 1,
                                          "width": 0.0625, "dropout": 0.5}, (images,)),
    }


@pytest.mark.parametrize("kind", ["generator", "classifier", "discriminator"])
def test_save_and_load_model_round_trip(kind, tmp_path):
    model, spec, inputs = saved_cases()[kind]
    path = tmp_path / f"{kind}.safetensors"
    save_model(model, path, spec)
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert not any(m.training for m in loaded.modules())
    assert not any(p.requires_grad for p in loaded.parameters())
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert name == name_b and torch.equal(a, b), name
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in loaded.parameters() if p.dim() == 4)
    channels_last(model)  # same layout, same convolution algorithms: then the outputs are bit-identical
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), model(*inputs))


def test_load_model_reports_a_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "generator.safetensors"
    with pytest.raises(FileNotFoundError, match="generator.safetensors"):
        load_model(path)


def test_load_model_needs_the_spec_metadata(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="spec"):
        load_model(path)


def test_load_state_dict_reads_torch_and_safetensors_files(tmp_path):
    state = {"weight": torch.randn(3, 2), "bias": torch.arange(3)}
    torch.save(state, tmp_path / "weights.pth")
    save_file(state, str(tmp_path / "weights.safetensors"))
    for name in ("weights.pth", "weights.safetensors"):
        loaded = load_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_state_dict(tmp_path / "missing.pth")


UNPICKLED = []


def _record_unpickling(tag):
    UNPICKLED.append(tag)
    return tag


class Payload:
    """An object whose unpickling runs code: a weights file must never be able to do this."""

    def __reduce__(self):
        return _record_unpickling, ("payload ran",)


def test_load_state_dict_refuses_pickled_objects(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"weight": torch.zeros(2), "extra": Payload()}, path)
    UNPICKLED.clear()
    with pytest.raises(InputFileError) as refused:
        load_state_dict(path)
    assert UNPICKLED == []
    # one line naming the file, without torch's advice to retry with weights_only=False
    assert str(refused.value).startswith(f"{path} holds more than tensors, and unpickling it could run code")
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)
    # The same file does run the payload when unpickled without restrictions: the refusal is what prevents it.
    torch.load(path, weights_only=False)
    assert UNPICKLED == ["payload ran"]


@pytest.mark.parametrize("size", [64, 128])
def test_generator_first_layer_as_a_matrix_product_is_the_transposed_convolution(size):
    """Generator.forward computes its first transposed convolution (a 1x1 map) as a matrix product;
    it must give what the layer itself gives, in training and in eval mode."""
    torch.manual_seed(0)
    generator = Generator(NZ1, NZ2, size, channels=3, width=0.0625)
    z1, z2 = torch.randn(4, NZ1), torch.randn(4, NZ2)
    for mode in (True, False):
        generator.train(mode)
        h = generator.project(torch.cat([z1, z2], dim=1)).view(4, generator.c0, 1, 1)
        torch.testing.assert_close(generator(z1, z2), generator.net(h), rtol=0, atol=1e-5)
