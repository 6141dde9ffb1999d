"""End to end: the workflow explains a classifier the user trained, given as a state dict or as TorchScript."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from workflow_runs import snakemake

from medxgan.data.phantoms import write_phantom_dataset


def _train_briefly(net, manifest: Path, spec: dict) -> None:
    """A few epochs of the user's own training, on phantoms the workflow never sees."""
    from medxgan.data.manifest import load_split
    from medxgan.nets.user import to_model_input

    data = load_split(manifest, "train", "normal", "opacity", 64, 1)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(2):
        for start in range(0, len(data), 16):
            logits = net(to_model_input(data.images[start:start + 16], spec))
            loss = torch.nn.functional.cross_entropy(logits, data.labels[start:start + 16])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()


@pytest.fixture(scope="module")
def user_resnet(tmp_path_factory) -> dict:
    """A torchvision ResNet-18 trained briefly on the CXR phantom, saved as a state dict and as TorchScript."""
    import torchvision
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("user-classifier")
    manifest = write_phantom_dataset("synthetic-cxr", folder / "data", 64, {"train": 64, "val": 16, "test": 16}, 0.5,
                                     seed=7)
    spec = {"range": [0, 1], "size": 64, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2)
    _train_briefly(net, manifest, spec)
    save_file(net.state_dict(), str(folder / "resnet18.safetensors"))
    torch.jit.save(torch.jit.script(net), str(folder / "resnet18_scripted.pt"))
    return {"input": spec, "state_dict": folder / "resnet18.safetensors", "torchscript": folder / "resnet18_scripted.pt"}


@pytest.mark.parametrize("kind", ["state_dict", "torchscript"])
def test_dag_explains_the_users_own_classifier(workdir: Path, user_resnet: dict, kind: str):
    config_file = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["datasets"] = {"synthetic-cxr": config["datasets"]["synthetic-cxr"]}
    classifier = {"pretrained": str(user_resnet[kind]), "arch": "resnet18", "input": user_resnet["input"],
                  "target_layer": "layer4"}
    config["datasets"]["synthetic-cxr"]["classifier"] = classifier
    methods = ["difference", "latent_ig", "ig"] + (["gradcam"] if kind == "state_dict" else [])  # no hooks in TorchScript
    config["datasets"]["synthetic-cxr"]["explain"] = {"methods": methods}
    config_file.write_text(yaml.safe_dump(config))
    root = workdir / "results" / "synthetic-cxr"
    run = snakemake(workdir, "--cores", "2", "results/synthetic-cxr/metrics.csv", "results/synthetic-cxr/checks/robustness.csv")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((root / "classifier" / "metrics.json").read_text())
    assert report["history"] == [] and report["test"]["n"] == 16  # imported, not trained, and still scored
    assert "epoch" not in (root / "logs" / "train_classifier.log").read_text()
    metrics = pd.read_csv(root / "metrics.csv")
    assert set(methods) <= set(metrics.method)
    assert metrics.query("method == 'medxgan inversion' and metric == 'reconstruction_ssim'")["mean"].notna().all()
    sanity = pd.read_csv(root / "checks" / "sanity.csv")
    assert sanity.empty == (kind == "torchscript")  # TorchScript layers cannot be re-initialised
