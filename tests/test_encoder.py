"""The encoder E(x) -> (z1, z2) and the inversion it starts."""

import pytest
import torch

from medxgan.data.manifest import load_split
from medxgan.data.phantoms import PHANTOMS, write_phantom_dataset
from medxgan.nets.encoder import Encoder
from medxgan.train.encoder import encoder_losses, reconstruction_mse, train_encoder
from medxgan.inversion import invert
from medxgan.nets.networks import Generator, SimpleCNN, dcgan_init
from medxgan.artifacts import load_model, save_model
from helpers import TUNING_OFF

NZ1, NZ2, SIZE = 8, 4, 64
DATA_CFG = {"image_size": SIZE, "channels": 1}
ENCODER_CFG = {"width": 0.125, "steps": 60, "batch_size": 16, "lr": 1e-3, "betas": [0.9, 0.999], "image_weight": 1.0}
INVERSION_CFG = {"init": "encoder", "restarts": 1, "steps": 0, "lr": 0.05, "mse_weight": 10.0,
                 "local_weight": 0.0, "local_patches": [4, 8], "bce_weight": 1.0,
                 "batch_size": 8, "tuning": TUNING_OFF}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    manifest = write_phantom_dataset("synthetic-mri", tmp_path_factory.mktemp("phantoms") / "mri", SIZE,
                                     {"train": 48, "val": 16}, 0.5, seed=0)
    kind = PHANTOMS["synthetic-mri"]
    return {split: load_split(manifest, split, kind.negative, kind.positive, SIZE, 1) for split in ("train", "val")}


@pytest.fixture(scope="module")
def generator():
    """A random G whose images differ between codes, as a trained G's do: its batch-norm statistics
    are those of its own activations, and its last layer is scaled up (unscaled, a random G of this
    width draws nearly the same image for every code)."""
    torch.manual_seed(0)
    G = Generator(NZ1, NZ2, SIZE, channels=1, width=0.0625)
    dcgan_init(G)
    with torch.no_grad():
        for _ in range(30):
            G(torch.randn(64, NZ1), torch.randn(64, NZ2))
        G.net[-2].weight *= 40
    return G.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def trained(generator, splits):
    return train_encoder(generator, splits["train"], splits["val"], ENCODER_CFG, DATA_CFG, seed=0, device="cpu")


def test_encoder_maps_images_to_both_codes():
    E = Encoder(NZ1, NZ2, SIZE, channels=1, width=0.125)
    z1, z2 = E(torch.zeros(3, 1, SIZE, SIZE))
    assert z1.shape == (3, NZ1) and z2.shape == (3, NZ2)


def test_training_step_fits_the_codes_of_gs_own_samples(generator, splits, trained):
    """The code term on G's samples, for the same fixed batch, falls well below the untrained E's."""
    E, _ = trained
    real, labels = splits["train"].images[:16], torch.tensor([0, 1] * 8)
    torch.manual_seed(1)
    untrained = Encoder(NZ1, NZ2, SIZE, channels=1, width=0.125).eval()
    before, _ = encoder_losses(untrained, generator, real, labels, torch.Generator().manual_seed(5))
    after, _ = encoder_losses(E, generator, real, labels, torch.Generator().manual_seed(5))
    assert after < 0.7 * before


def test_training_step_reaches_e_and_never_g(generator, splits):
    E = Encoder(NZ1, NZ2, SIZE, channels=1, width=0.125)
    code_loss, image_loss = encoder_losses(E, generator, splits["train"].images[:8], torch.tensor([0, 1] * 4),
                                           torch.Generator().manual_seed(0))
    (code_loss + image_loss).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in E.head.parameters())
    assert all(p.grad is None for p in generator.parameters())


def test_negative_codes_teach_z2_zero(generator, splits):
    """For negative labels G's codes have z2 = 0: the code term then penalises any z2 E predicts."""
    E = Encoder(NZ1, NZ2, SIZE, channels=1, width=0.125).eval()
    with torch.no_grad():
        E.head.bias[NZ1:] = 3.0  # E predicts z2 = 3 for every image
        negatives, _ = encoder_losses(E, generator, splits["train"].images[:8], torch.zeros(8, dtype=torch.long),
                                      torch.Generator().manual_seed(0))
        E.head.bias[NZ1:] = 0.0
        zeroed, _ = encoder_losses(E, generator, splits["train"].images[:8], torch.zeros(8, dtype=torch.long),
                                   torch.Generator().manual_seed(0))
    assert negatives > zeroed + 1.0


def test_training_is_seeded_and_reports_its_fidelity(generator, splits, trained):
    E, report = trained
    again, _ = train_encoder(generator, splits["train"], splits["val"], ENCODER_CFG, DATA_CFG, seed=0, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(E.state_dict().values(), again.state_dict().values()))
    assert report["val_reconstruction_mse"] == pytest.approx(reconstruction_mse(E, generator, splits["val"], "cpu"))
    assert report["history"][-1]["step"] == ENCODER_CFG["steps"]


def test_inversion_starts_at_the_encoders_codes(generator, splits, trained, tmp_path):
    E, report = trained
    save_model(E, tmp_path / "encoder.safetensors", report["spec"])
    E = load_model(tmp_path / "encoder.safetensors")
    images = splits["val"].images[:5]
    C = SimpleCNN(SIZE, 1, width=0.25).eval().requires_grad_(False)
    result = invert(generator, C, images, torch.arange(5), INVERSION_CFG, seed=0, encoder=E)  # 0 steps: the start
    z1, z2 = E(images)
    assert torch.allclose(result.z1, z1) and torch.allclose(result.z2, z2)
    random = invert(generator, C, images, torch.arange(5), {**INVERSION_CFG, "init": "random"}, seed=0)
    assert not torch.allclose(random.z1, z1)


def test_inversion_refuses_a_missing_or_unwanted_encoder(generator, trained):
    C = SimpleCNN(SIZE, 1, width=0.25).eval().requires_grad_(False)
    images = torch.zeros(2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="init is 'encoder', but an encoder was not given"):
        invert(generator, C, images, torch.arange(2), INVERSION_CFG, seed=0)
    with pytest.raises(ValueError, match="init is 'random', but an encoder was given"):
        invert(generator, C, images, torch.arange(2), {**INVERSION_CFG, "init": "random"}, seed=0, encoder=trained[0])
