"""A trained bundle: what it takes to explain new images with a dataset's trained networks.

`results/{dataset}/bundle/` holds C (for a user's TorchScript classifier: its weights, with the
path and SHA-256 of the user's file it needs), G, the encoder where the inversion starts from one,
the settings that invert and explain, a model card, and SHA256SUMS over all of them. Copy the
folder to share it; `verify` refuses a bundle whose files changed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from medxgan.artifacts import read_spec
from medxgan.files import file_sha256

CLASSIFIER, GENERATOR, ENCODER = "classifier.safetensors", "generator.safetensors", "encoder.safetensors"
SETTINGS, CARD, CHECKSUMS = "settings.json", "MODEL_CARD.md", "SHA256SUMS"


def model_card(dataset: str, settings: dict, spec: dict, classifier: dict, gan: dict,
               inversion_ssim: float | None) -> str:
    """A short Markdown card: data, splits, metrics, seeds, versions, hardware. `spec` is C's, as
    stored in its weights file; `classifier` and `gan` are the reports of their steps."""
    test, provenance = classifier["test"], gan["provenance"]
    lines = [f"# medXGAN bundle: {dataset}", "",
             f"- Classes: negative `{settings['data']['negative']}`, positive `{settings['data']['positive']}`; "
             f"images {settings['data']['image_size']} px, {settings['data']['channels']} channel(s), in [-1, 1].",
             f"- Classifier: {spec['arch']}"
             + (f" (imported from {spec['source']}, SHA-256 {spec['sha256'][:12]}…)"
                if spec["kind"] == "user_classifier" else " (trained by the workflow)")
             + f"; validation n = {classifier['val']['n']}, test n = {test['n']}: accuracy {test['accuracy']:.3f}"
             + (f", AUROC {test['auroc']:.3f}" if test["auroc"] is not None else "") + ".",
             f"- Generator: {gan['steps']} GAN steps; disentanglement check: C calls "
             f"{gan['disentanglement']['negative_called_negative']:.1%} of G(z1, 0) negative and "
             f"{gan['disentanglement']['positive_called_positive']:.1%} of G(z1, z2) positive.",
             f"- Inversion: starts `{settings['inversion']['init']}`, {settings['inversion']['restarts']} restart(s) x "
             f"{settings['inversion']['steps']} steps" + (f"; test positives' reconstruction SSIM {inversion_ssim:.3f}"
                                                        if inversion_ssim is not None else "") + ".",
             f"- Seed {settings['seed']}; medxgan {provenance['medxgan']}, torch {provenance['torch']}; "
             f"G trained on {provenance.get('cuda_device') or provenance.get('processor')} "
             f"({provenance.get('precision')}).", ""]
    return "\n".join(lines)


def write_bundle(dataset: str, results: Path, settings: dict, out: Path) -> None:
    """Gather the dataset's networks, settings and card into `out`, written whole or not at all."""
    results, out = Path(results), Path(out)
    files = {CLASSIFIER: results / "classifier" / "model.safetensors", GENERATOR: results / "gan" / "generator.safetensors"}
    if settings["inversion"]["init"] == "encoder":
        files[ENCODER] = results / "encoder" / "model.safetensors"
    for source in files.values():
        if not source.is_file():
            raise FileNotFoundError(f"bundle for {dataset}: {source} is missing; run the workflow first")
    classifier = json.loads((results / "classifier" / "metrics.json").read_text())
    gan = json.loads((results / "gan" / "summary.json").read_text())
    ssim = _mean_ssim(results / "inversion" / "inversion.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for name, source in files.items():
            shutil.copyfile(source, tmp / name)
        (tmp / SETTINGS).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        (tmp / CARD).write_text(model_card(dataset, settings, read_spec(files[CLASSIFIER]), classifier, gan, ssim))
        sums = [f"{file_sha256(tmp / name)}  {name}" for name in sorted(p.name for p in tmp.iterdir())]
        (tmp / CHECKSUMS).write_text("\n".join(sums) + "\n")
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(new: Path, old: Path) -> None:
    """Put `new` where `old` is: the old folder is moved aside first, so a failure leaves one of them whole."""
    aside = old.with_name(f".{old.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    if old.exists():
        old.rename(aside)
    new.rename(old)
    shutil.rmtree(aside, ignore_errors=True)


def _mean_ssim(table: Path) -> float | None:
    if not table.is_file():
        return None
    import pandas as pd

    return float(pd.read_csv(table)["ssim"].mean())


def verify(path: Path) -> None:
    """Every file SHA256SUMS lists is there, unchanged."""
    path = Path(path)
    sums = path / CHECKSUMS
    if not sums.is_file():
        raise FileNotFoundError(f"{path} is not a medxgan bundle: no {CHECKSUMS}")
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        file = path / name
        if not file.is_file() or file_sha256(file) != digest:
            raise ValueError(f"bundle {path}: {name} is missing or has changed since the bundle was written")
