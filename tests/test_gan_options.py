"""The GAN options beside the paper's design: resize-convolution G, projection D, proximity term."""

import copy

import pytest
import torch

from medxgan.models import Generator, ProjectionDiscriminator, build_from_spec, save_model, load_model
from medxgan.training import GANTrainer, proximity

NZ1, NZ2, SIZE = 8, 4, 64
GAN_CFG = {"nz1": NZ1, "nz2": NZ2, "lambda_cls": 1.0, "width": 0.0625, "d_width": 0.0625, "d_dropout": 0.0,
           "upsampling": "transposed", "discriminator": "unconditional", "proximity_weight": 0.0, "steps": 2,
           "batch_size": 8, "lr": 2e-4, "betas": [0.5, 0.999], "checkpoint_every": 1, "disentanglement_samples": 8}


@pytest.mark.parametrize("size", [64, 128])
def test_resize_generator_draws_the_image_size_and_learns_from_both_codes(size):
    torch.manual_seed(0)
    generator = Generator(NZ1, NZ2, size, channels=3, width=0.0625, upsampling="resize")
    z1, z2 = torch.randn(4, NZ1, requires_grad=True), torch.randn(4, NZ2, requires_grad=True)
    images = generator(z1, z2)
    assert images.shape == (4, 3, size, size) and images.abs().max() <= 1
    images.sum().backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in generator.modules())
    with pytest.raises(ValueError, match="unknown upsampling 'bilinear'"):
        Generator(NZ1, NZ2, size, upsampling="bilinear")


def test_resize_generator_round_trips_through_its_spec(tmp_path):
    generator = Generator(NZ1, NZ2, SIZE, channels=1, width=0.0625, upsampling="resize").eval()
    spec = {"kind": "generator", "nz1": NZ1, "nz2": NZ2, "image_size": SIZE, "channels": 1, "width": 0.0625,
            "upsampling": "resize"}
    save_model(generator, tmp_path / "g.safetensors", spec)
    loaded = load_model(tmp_path / "g.safetensors")
    assert loaded.upsampling == "resize"
    old_spec = {key: value for key, value in spec.items() if key != "upsampling"}  # files from before the option
    assert build_from_spec(old_spec).upsampling == "transposed"


def test_projection_discriminator_shapes_and_class_dependence():
    torch.manual_seed(0)
    discriminator = ProjectionDiscriminator(SIZE, channels=1, width=0.125).eval()  # eval: no power iteration per call
    images = torch.rand(6, 1, SIZE, SIZE) * 2 - 1
    as_negative = discriminator(images, torch.zeros(6, dtype=torch.long))
    as_positive = discriminator(images, torch.ones(6, dtype=torch.long))
    assert as_negative.shape == as_positive.shape == (6,)
    assert not torch.allclose(as_negative, as_positive)  # the same image is judged against its class
    # the class enters only through the projection <embed(y), phi(x)>
    phi = discriminator.features(images).sum(dim=(2, 3))
    embed = discriminator.embed.weight
    torch.testing.assert_close(as_positive - as_negative, phi @ (embed[1] - embed[0]), rtol=1e-4, atol=1e-5)
    # every layer is spectrally normalised: the largest singular value of each weight is about 1
    discriminator.train()
    for _ in range(20):  # power iterations
        discriminator(images, torch.ones(6, dtype=torch.long))
    conv = discriminator.features[0]
    assert torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item() == pytest.approx(1.0, rel=0.05)


def test_proximity_term_pulls_the_positive_towards_its_negative_realisation():
    fake = torch.tensor([[[[0.5, -0.5]]], [[[0.2, 0.2]]]], requires_grad=True)  # two codes, 1x2 images
    negatives = torch.tensor([[[[0.0, 0.0]]]])  # G(z1, 0) of the positive one
    positives = torch.tensor([True, False])
    term = proximity(fake, negatives, positives)
    assert term.item() == pytest.approx(0.5)
    term.backward()
    # d/dfake mean|fake - negative| = sign(fake - negative) / pixels, only for the positive
    torch.testing.assert_close(fake.grad, torch.tensor([[[[0.5, -0.5]]], [[[0.0, 0.0]]]]))
    assert proximity(fake, None, positives).item() == 0.0


@pytest.mark.parametrize("options", [{"discriminator": "projection"}, {"proximity_weight": 1.0},
                                     {"upsampling": "resize"}])
def test_a_gan_step_with_each_option_updates_g_and_records_its_losses(options):
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 2)).eval().requires_grad_(False)
    trainer = GANTrainer(classifier, {**GAN_CFG, **options}, {"image_size": SIZE, "channels": 1}, 0, "cpu")
    before = copy.deepcopy(trainer.G.state_dict())
    trainer.train_step(torch.rand(8, 1, SIZE, SIZE) * 2 - 1, torch.tensor([0, 1] * 4))
    trainer._log_losses()
    assert any(not torch.equal(before[k], v) for k, v in trainer.G.state_dict().items())
    row = dict(zip(GANTrainer.LOSS_COLUMNS, trainer.losses[0]))
    assert (row["g_proximity"] > 0) == (options.get("proximity_weight", 0) > 0)
    assert trainer.d_spec["design"] == options.get("discriminator", "unconditional")
