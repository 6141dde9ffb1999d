"""Files given to a step by hand are checked before use: each wrong file is named in one line."""

from pathlib import Path

import pytest
import torch

from medxgan.config import ConfigError
from medxgan.pipeline import cli
from medxgan.data.manifest import load_split
from medxgan.data.phantoms import write_phantom_dataset
from medxgan.artifacts import InputFileError, load_model, save_model
from medxgan.nets.networks import build_classifier, build_generator
from medxgan.artifacts import read_inversion
from medxgan.inversion import InversionRecord
from medxgan.files import save_tensors

DATA = {"image_size": 64, "channels": 1, "negative": "no_tumor", "positive": "tumor"}
LABELS = [DATA["negative"], DATA["positive"]]


def save_generator(path: Path, image_size: int = 64, channels: int = 1, labels=LABELS) -> Path:
    spec = {"kind": "generator", "nz1": 4, "nz2": 2, "image_size": image_size, "channels": channels, "width": 0.0625,
            "composition": "plain", "upsampling": "resize", "labels": labels}
    save_model(build_generator("plain", 4, 2, image_size, channels, 0.0625, "resize"), path, spec)
    return path


def save_classifier(path: Path) -> Path:
    spec = {"kind": "classifier", "arch": "simple_cnn", "image_size": 64, "channels": 1, "width": 0.25, "labels": LABELS}
    save_model(build_classifier("simple_cnn", 64, 1, 0.25), path, spec)
    return path


def test_a_matching_generator_loads(tmp_path):
    G = load_model(save_generator(tmp_path / "g.safetensors"), role="generator", data=DATA)
    assert G(torch.zeros(1, 4), torch.zeros(1, 2)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("make, message", [
    (lambda p: save_classifier(p), r"g\.safetensors holds a classifier, not a generator"),
    (lambda p: save_generator(p, image_size=128), r"g\.safetensors: a generator for 128-px images, this run's data\.image_size is 64"),
    (lambda p: save_generator(p, channels=3), r"g\.safetensors: a generator for 3-channel images, this run's data\.channels is 1"),
    (lambda p: save_generator(p, labels=["normal", "opacity"]),
     r"g\.safetensors: a generator trained on 'normal' vs 'opacity', this run's dataset is 'no_tumor' vs 'tumor'"),
])
def test_a_wrong_generator_file_is_named_with_what_it_is(tmp_path, make, message):
    path = tmp_path / "g.safetensors"
    make(path)
    with pytest.raises(InputFileError, match=message):
        load_model(path, role="generator", data=DATA)


def test_a_truncated_weights_file_is_named(tmp_path):
    path = save_generator(tmp_path / "g.safetensors")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputFileError, match=r"g\.safetensors is not a readable safetensors weights file"):
        load_model(path, role="generator", data=DATA)


@pytest.mark.parametrize("spec, message", [("{not json", "is not JSON"), ("[1, 2]", "is not a JSON object")])
def test_a_spec_that_is_no_json_object_is_named(tmp_path, spec, message):
    path = tmp_path / "g.safetensors"
    save_tensors({"w": torch.zeros(1)}, path, {"spec": spec})
    with pytest.raises(InputFileError, match=rf"g\.safetensors: the model spec in its metadata {message}"):
        load_model(path, role="generator", data=DATA)


def test_a_spec_of_no_known_kind_is_named(tmp_path):
    path = tmp_path / "g.safetensors"
    save_tensors({"w": torch.zeros(1)}, path, {"spec": '{"kind": "pickle"}'})
    with pytest.raises(ConfigError, match=r"g\.safetensors: its spec's 'kind' is 'pickle', none of classifier, "):
        load_model(path)


def test_a_classifier_given_as_the_generator_stops_the_step_in_one_line(tmp_path, capsys):
    manifest = write_phantom_dataset("synthetic-mri", tmp_path / "mri", 64, {"train": 4, "val": 2, "test": 2}, 0.5, seed=0)
    wrong = save_classifier(tmp_path / "classifier.safetensors")
    code = cli.main(["train-encoder", "--config", str(Path(__file__).parents[1] / "config" / "config.yaml"),
                     "--dataset", "synthetic-mri", "--manifest", str(manifest), "--generator", str(wrong),
                     "--out-dir", str(tmp_path / "encoder")])
    assert code == 2 and capsys.readouterr().err == f"medxgan: error: {wrong} holds a classifier, not a generator\n"
    assert not (tmp_path / "encoder").exists()


def test_an_inversion_of_other_images_is_refused(tmp_path):
    manifest = write_phantom_dataset("synthetic-mri", tmp_path / "mri", 64, {"train": 4, "val": 2, "test": 6}, 0.5, seed=0)
    data = load_split(manifest, "test", "no_tumor", "tumor", 64, 1, label="positive")
    other = tmp_path / "latents.safetensors"
    record = InversionRecord(data.rows + 1, *[torch.zeros(len(data)) for _ in range(9)], torch.zeros(len(data), 1, 64, 64))
    save_tensors(record.tensors(), other)
    with pytest.raises(InputFileError, match=r"latents\.safetensors was computed on other images"):
        read_inversion(other, data)
    save_tensors({"heatmaps": torch.zeros(len(data), 64, 64)}, other)
    with pytest.raises(InputFileError, match=r"latents\.safetensors holds no inversion results"):
        read_inversion(other, data)
