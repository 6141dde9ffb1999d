"""The oracle: a classifier of another architecture and seed than C, judging G's images."""

import pytest
import torch

from helpers import inversion_record
from medxgan.config import ConfigError
from medxgan.data.manifest import load_split
from medxgan.data.phantoms import PHANTOMS, write_phantom_dataset
from medxgan.nets.networks import ResidualCNN, SimpleCNN, positive_probability
from medxgan.train.oracle import check_independent, oracle_probabilities, train_oracle
from medxgan.train.classifier import train_classifier

SIZE = 64
DATA_CFG = {"image_size": SIZE, "channels": 1}
CLASSIFIER_CFG = {"arch": "simple_cnn", "width": 0.5, "weights": None, "epochs": 1, "batch_size": 8, "lr": 1e-3,
                  "betas": [0.5, 0.999], "flips": True}
ORACLE_CFG = {"arch": "residual_cnn", "width": 0.5, "epochs": 1, "batch_size": 8, "lr": 1e-3, "betas": [0.5, 0.999],
              "flips": True, "seed_offset": 1000}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    manifest = write_phantom_dataset("synthetic-mri", tmp_path_factory.mktemp("oracle") / "mri", SIZE,
                                     {"train": 32, "val": 8}, 0.5, seed=0)
    kind = PHANTOMS["synthetic-mri"]
    return {split: load_split(manifest, split, kind.negative, kind.positive, SIZE, 1) for split in ("train", "val")}


def test_the_oracle_is_another_network_trained_with_another_seed(phantoms):
    oracle, info = train_oracle(phantoms["train"], phantoms["val"], ORACLE_CFG, CLASSIFIER_CFG, DATA_CFG, 0, "cpu")
    classifier, _ = train_classifier(phantoms["train"], phantoms["val"], CLASSIFIER_CFG, DATA_CFG, 0, "cpu")
    assert isinstance(oracle, ResidualCNN) and isinstance(classifier, SimpleCNN)
    assert info["spec"]["arch"] == "residual_cnn"
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in oracle.modules())  # no layer pattern shared with C
    # its seed is seed + seed_offset: the same training with that seed gives the same weights
    same, _ = train_classifier(phantoms["train"], phantoms["val"], {**ORACLE_CFG, "weights": None}, DATA_CFG, 1000, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(oracle.state_dict().values(), same.state_dict().values()))
    other, _ = train_oracle(phantoms["train"], phantoms["val"], {**ORACLE_CFG, "seed_offset": 7}, CLASSIFIER_CFG,
                            DATA_CFG, 0, "cpu")
    assert not all(torch.equal(a, b) for a, b in zip(oracle.state_dict().values(), other.state_dict().values()))


def test_an_oracle_like_c_is_refused():
    with pytest.raises(ConfigError, match=r"oracle\.arch \(simple_cnn\) must differ from classifier\.arch"):
        check_independent({**ORACLE_CFG, "arch": "simple_cnn"}, CLASSIFIER_CFG)
    with pytest.raises(ConfigError, match="seed_offset must not be 0"):
        check_independent({**ORACLE_CFG, "seed_offset": 0}, CLASSIFIER_CFG)


def test_oracle_probabilities_of_images_reconstructions_and_negatives():
    torch.manual_seed(0)
    oracle = ResidualCNN(channels=1, width=0.25).eval()
    images = torch.rand(5, 1, SIZE, SIZE) * 2 - 1
    latents = inversion_record(images, reconstruction=images.flip(3), negative=-images)
    probabilities = oracle_probabilities(oracle, images, latents, batch_size=2)
    with torch.no_grad():
        assert torch.allclose(probabilities["p_oracle_image"], positive_probability(oracle, images))
        assert torch.allclose(probabilities["p_oracle_negative"], positive_probability(oracle, -images))
    assert all(p.shape == (5,) for p in probabilities.values())
