"""The GAN options beside the paper's design: resize-convolution G, masked G, projection D,
proximity term, mask sparsity."""

import copy

import pytest
import torch

from medxgan.nets.networks import Generator, MaskedGenerator, ProjectionDiscriminator, build_generator
from medxgan.nets.kinds import build_from_spec
from medxgan.artifacts import load_model, save_model
from medxgan.train.gan import GANTrainer, mask_area, proximity

NZ1, NZ2, SIZE = 8, 4, 64
GAN_CFG = {"nz1": NZ1, "nz2": NZ2, "lambda_cls": 1.0, "width": 0.0625, "d_width": 0.0625, "d_dropout": 0.0,
           "upsampling": "transposed", "discriminator": "unconditional", "proximity_weight": 0.0,
           "reconstruction_weight": 0.0, "composition": "plain",
           "mask_sparsity_weight": 0.0, "ema_decay": 0.0, "d_fakes": "own", "lesion_rows": "all", "steps": 2,
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
                                     {"upsampling": "resize"},
                                     {"composition": "masked", "mask_sparsity_weight": 0.5, "proximity_weight": 1.0}])
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
    assert (row["g_mask"] > 0) == (options.get("composition") == "masked")
    assert trainer.d_spec["design"] == options.get("discriminator", "unconditional")


@pytest.mark.parametrize("upsampling", ["transposed", "resize"])
def test_masked_generator_draws_exactly_its_anatomy_when_z2_is_zero(upsampling):
    torch.manual_seed(0)
    generator = MaskedGenerator(NZ1, NZ2, SIZE, channels=1, width=0.0625, upsampling=upsampling).eval()
    z1, z2 = torch.randn(5, NZ1), torch.randn(5, NZ2)
    negative, mask = generator.compose(z1, torch.zeros(5, NZ2))
    assert torch.equal(mask, torch.zeros_like(mask))
    assert torch.equal(negative, generator.anatomy(z1, z2[:, :0]))
    positive, mask = generator.compose(z1, z2)
    assert mask.shape == (5, 1, SIZE, SIZE) and mask.min() >= 0 and mask.max() <= 1 and mask.min() < mask.max()
    # the change z2 makes is the mask times the difference between lesion and anatomy
    lesion = generator.lesion(z1, z2)[:, :1]
    torch.testing.assert_close(positive - negative, mask * (lesion - negative))
    # the mask grows with the scale of z2 (a along G(z1, a z2))
    assert (generator.compose(z1, 0.1 * z2)[1].mean() < generator.compose(z1, z2)[1].mean())


def test_in_training_a_masked_gs_lesion_branch_may_be_drawn_for_the_positive_codes_alone():
    torch.manual_seed(0)
    generator = MaskedGenerator(NZ1, NZ2, SIZE, channels=1, width=0.0625, upsampling="resize")
    generator.lesion_rows = "positive"
    batches = []
    generator.lesion.register_forward_hook(lambda module, inputs, output: batches.append(len(output)))
    rows = torch.tensor([True, False, True, False, False, True])
    z1, z2 = torch.randn(6, NZ1), torch.randn(6, NZ2) * rows[:, None]
    image, mask = generator.compose(z1, z2)
    assert batches == [3]  # L normalised over the three positive codes alone
    anatomy = generator.anatomy(z1, z2[:, :0])
    assert torch.equal(mask[~rows], torch.zeros_like(mask[~rows])) and torch.equal(image[~rows], anatomy[~rows])
    lesion = generator.lesion(z1[rows], z2[rows])
    expected, _ = generator.blend(anatomy[rows], lesion, z2[rows])
    torch.testing.assert_close(image[rows], expected)
    batches.clear()
    image, _ = generator.compose(z1, torch.zeros(6, NZ2))  # a batch of negatives draws no lesion at all
    assert batches == [] and torch.equal(image, generator.anatomy(z1, z2[:, :0]))
    generator.eval()  # outside training every code goes through L, as a saved G has always run
    generator.compose(z1, z2)
    assert batches == [6]


def test_masked_generator_round_trips_through_its_spec(tmp_path):
    generator = build_generator("masked", NZ1, NZ2, SIZE, 1, 0.0625, "resize").eval()
    spec = {"kind": "generator", "nz1": NZ1, "nz2": NZ2, "image_size": SIZE, "channels": 1, "width": 0.0625,
            "upsampling": "resize", "composition": "masked"}
    save_model(generator, tmp_path / "g.safetensors", spec)
    loaded = load_model(tmp_path / "g.safetensors")
    z1, z2 = torch.randn(2, NZ1), torch.randn(2, NZ2)
    assert isinstance(loaded, MaskedGenerator) and torch.allclose(loaded(z1, z2), generator(z1, z2), atol=1e-6)
    with pytest.raises(ValueError, match="unknown generator composition 'stacked'"):
        build_generator("stacked", NZ1, NZ2, SIZE, 1, 0.0625, "resize")


def test_mask_sparsity_prior_pushes_only_the_positives_masks_down():
    mask = torch.tensor([[[[0.5, 0.1]]], [[[0.9, 0.9]]]], requires_grad=True)
    positives = torch.tensor([True, False])
    term = mask_area(mask, positives)
    assert term.item() == pytest.approx(0.3)
    term.backward()
    torch.testing.assert_close(mask.grad, torch.tensor([[[[0.5, 0.5]]], [[[0.0, 0.0]]]]))
    assert mask_area(None, positives).item() == 0.0
    assert mask_area(mask, torch.tensor([False, False])).item() == 0.0


def test_a_wider_anatomy_branch_widens_g0_alone_and_survives_the_trainers_spec(tmp_path):
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 2)).eval().requires_grad_(False)
    cfg = {**GAN_CFG, "composition": "masked", "upsampling": "resize", "anatomy_width": 0.125}
    trainer = GANTrainer(classifier, cfg, {"image_size": SIZE, "channels": 1}, 0, "cpu")
    G, narrow = trainer.G, build_generator("masked", NZ1, NZ2, SIZE, 1, 0.0625, "resize")

    def size(module):
        return sum(p.numel() for p in module.parameters())

    assert size(G.anatomy) > 2 * size(narrow.anatomy) and size(G.lesion) == size(narrow.lesion)
    save_model(G.eval(), tmp_path / "g.safetensors", trainer.g_spec)
    z1, z2 = torch.randn(3, NZ1), torch.randn(3, NZ2)
    torch.testing.assert_close(load_model(tmp_path / "g.safetensors")(z1, z2), G(z1, z2))
    with pytest.raises(ValueError, match="anatomy_width"):  # a plain G has no anatomy branch to widen
        GANTrainer(classifier, {**cfg, "composition": "plain"}, {"image_size": SIZE, "channels": 1}, 0, "cpu")
