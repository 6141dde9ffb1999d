"""The pipeline steps: each reads its inputs, calls the library, and writes its outputs atomically.

One function per `medxgan <step>` command and per Snakemake rule. `s` is the step's settings
(see `medxgan.config.dataset_settings`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from medxgan import evaluation, figures, metrics
from medxgan.config import ConfigError
from medxgan.data.manifest import ImageSet, load_split
from medxgan.data.phantoms import write_phantom_dataset
from medxgan.explainers import build_explainer
from medxgan.inversion import invert
from medxgan.models import load_model, positive_probability, save_model
from medxgan.training import GANTrainer, disentanglement_check, evaluate_classifier, train_classifier
from medxgan.utils import atomic_path, pick_device, provenance, save_tensors, seed_everything, write_json

log = logging.getLogger(__name__)


def _load(manifest, split: str, s: dict, label: str | None = None) -> ImageSet:
    d = s["data"]
    return load_split(manifest, split, d["negative"], d["positive"], d["image_size"], d["channels"], label=label)


def _write_csv(frame: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _start(s: dict) -> torch.device:
    seed_everything(s["seed"])
    return pick_device(s["device"])


def prepare(s: dict, out_dir: Path) -> None:
    p = s["phantom"]
    if p is None:
        raise ConfigError("prepare makes the built-in datasets only; this dataset has no 'phantom' settings")
    write_phantom_dataset(p["kind"], Path(out_dir), s["data"]["image_size"], p["counts"], p["positive_fraction"], s["seed"])


def train_classifier_step(s: dict, manifest: Path, out_dir: Path) -> None:
    device = _start(s)
    train, val, test = (_load(manifest, split, s) for split in ("train", "val", "test"))
    model, info = train_classifier(train, val, s["classifier"], s["data"], s["seed"], device)
    report = {split: evaluate_classifier(model, data, device) for split, data in (("val", val), ("test", test))}
    log.info("test accuracy %.3f, AUROC %.3f", report["test"]["accuracy"], report["test"]["auroc"] or float("nan"))
    out_dir = Path(out_dir)
    save_model(model, out_dir / "model.safetensors", info["spec"])
    write_json(out_dir / "metrics.json", {**report, "history": info["history"], "selected_epoch": info["selected_epoch"],
                                          "settings": s,
                                          "provenance": provenance(s["seed"], device)})


def train_gan_step(s: dict, manifest: Path, classifier: Path, out_dir: Path) -> None:
    device = _start(s)
    out_dir = Path(out_dir)
    train = _load(manifest, "train", s)
    trainer = GANTrainer(load_model(classifier, device), s["gan"], s["data"], s["seed"], device)
    trainer.fit(train, out_dir / "checkpoint.pt")
    losses = pd.DataFrame(trainer.losses, columns=GANTrainer.LOSS_COLUMNS)
    check = disentanglement_check(trainer.G.eval(), trainer.C, s["gan"]["disentanglement_samples"], s["seed"], device)
    log.info("disentanglement: %s", check)
    save_model(trainer.G, out_dir / "generator.safetensors", trainer.g_spec)
    save_model(trainer.D, out_dir / "discriminator.safetensors", trainer.d_spec)
    _write_csv(losses, out_dir / "losses.csv")
    figures.save(figures.gan_losses(losses), out_dir / "losses.png")
    write_json(out_dir / "summary.json", {"disentanglement": check, "steps": trainer.step, "settings": s,
                                          "provenance": provenance(s["seed"], device)})


INVERSION_TABLE_COLUMNS = ("loss", "mse", "ssim", "p_image", "p_reconstruction", "p_negative")


def _test_positives(manifest: Path, s: dict) -> ImageSet:
    return _load(manifest, "test", s, label="positive")


def invert_step(s: dict, manifest: Path, classifier: Path, generator: Path, out_dir: Path) -> None:
    device = _start(s)
    C, G = load_model(classifier, device), load_model(generator, device)
    data = _test_positives(manifest, s)
    result = invert(G, C, data.images, data.rows, s["inversion"], s["seed"])
    with torch.no_grad():
        reconstruction = G(result.z1.to(device), result.z2.to(device)).cpu()
        negative = G(result.z1.to(device), torch.zeros_like(result.z2).to(device)).cpu()
        p_reconstruction = positive_probability(C, reconstruction.to(device)).cpu()
        p_negative = positive_probability(C, negative.to(device)).cpu()
    per_image = {**result.as_tensors(), "mse": metrics.reconstruction_mse(reconstruction, data.images),
                 "ssim": metrics.reconstruction_ssim(reconstruction, data.images),
                 "p_reconstruction": p_reconstruction, "p_negative": p_negative}
    table = pd.DataFrame({"id": data.ids, "row": data.rows.numpy(),
                          **{k: per_image[k].numpy() for k in INVERSION_TABLE_COLUMNS}})
    log.info("reconstruction MSE %.4f, SSIM %.3f; C calls %.1f%% of reconstructions positive, %.1f%% of negative "
             "realisations negative", table.mse.mean(), table.ssim.mean(), 100 * (table.p_reconstruction >= 0.5).mean(),
             100 * (table.p_negative < 0.5).mean())
    out_dir = Path(out_dir)
    save_tensors({**per_image, "rows": data.rows, "reconstruction": reconstruction, "negative": negative},
                 out_dir / "latents.safetensors")
    _write_csv(table, out_dir / "inversion.csv")
    write_json(out_dir / "provenance.json", {"manifest": str(Path(manifest).resolve()), "settings": s,
                                             "provenance": provenance(s["seed"], device)})


def load_inversion(path: Path, data: ImageSet) -> dict[str, torch.Tensor]:
    """The inversion results, checked to belong to the same test images (same manifest rows, same order)."""
    result = load_file(str(path))
    if not torch.equal(result["rows"], data.rows):
        raise ValueError(f"{path} was computed on other images than the manifest's test positives: rerun inversion")
    return result


def explain_step(s: dict, manifest: Path, classifier: Path, generator: Path, inversion: Path, method: str, out: Path) -> None:
    device = _start(s)
    C, G = load_model(classifier, device), load_model(generator, device)
    explainer = build_explainer(method, C, G, s["explain"])
    data = _test_positives(manifest, s)
    latents = load_inversion(Path(inversion), data)
    heatmaps = explainer.attribute(data.images, target=1, latents=(latents["z1"], latents["z2"]))
    save_tensors({"heatmaps": heatmaps, "rows": data.rows}, out, {"method": method})


def evaluate_step(s: dict, manifest: Path, classifier: Path, inversion: Path, explanations: list[Path], out_dir: Path) -> None:
    device = _start(s)
    C = load_model(classifier, device)
    data = _test_positives(manifest, s)
    latents = load_inversion(Path(inversion), data)
    heatmaps = load_heatmaps(explanations)
    per_image = evaluation.evaluate_explanations(C, data, heatmaps, latents, s["evaluate"], s["seed"], device)
    summary = evaluation.summarise(per_image, s["evaluate"], s["seed"])
    out_dir = Path(out_dir)
    _write_csv(per_image, out_dir / "metrics_per_image.csv")
    _write_csv(summary, out_dir / "metrics.csv")
    _write_csv(evaluation.compare_methods(per_image), out_dir / "metrics_comparisons.csv")
    write_json(out_dir / "metrics_provenance.json", {"settings": s, "provenance": provenance(s["seed"], device)})


def load_heatmaps(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Method name -> heatmaps, from the files `explain` wrote."""
    heatmaps = {}
    for path in paths:
        with safe_open(str(path), "pt") as f:
            heatmaps[f.metadata()["method"]] = f.get_tensor("heatmaps")
    return heatmaps


def figures_step(s: dict, manifest: Path, classifier: Path, generator: Path, inversion: Path,
                 explanations: list[Path], metrics_csv: Path, out_dir: Path) -> None:
    device = _start(s)
    C, G = load_model(classifier, device), load_model(generator, device)
    data = _test_positives(manifest, s)
    latents = load_inversion(Path(inversion), data)
    heatmaps = load_heatmaps(explanations)
    out_dir = Path(out_dir)
    examples = figures.example_indices(data, s["figures"]["examples"])
    figures.save(figures.pipeline_rows(C, data, latents, heatmaps, examples), out_dir / "pipeline.png")
    figures.save(figures.interpolation_strip(C, G, latents, examples, s["explain"]["interpolation_points"]),
                 out_dir / "interpolation.png")
    figures.save(figures.metrics_bars(pd.read_csv(metrics_csv)), out_dir / "metrics.png")
    figures.save(figures.inversion_quality(data, latents, s["figures"]["examples"]), out_dir / "inversion.png")


def check_step(s: dict, manifest: Path, classifier: Path, generator: Path, inversion: Path, out_dir: Path) -> None:
    device = _start(s)
    C, G = load_model(classifier, device), load_model(generator, device)
    data = _test_positives(manifest, s)
    latents = load_inversion(Path(inversion), data)
    negatives = _load(manifest, "test", s, label="negative")
    out_dir = Path(out_dir)
    sample = torch.arange(min(s["checks"]["images"], len(data)))
    tables = {
        "sanity": evaluation.sanity_table(C, G, data.subset(sample), latents, s),
        "robustness": evaluation.robustness_table(C, G, data.subset(sample), s),
        "counterfactual": evaluation.counterfactual_table(C, data, negatives, latents, s),
    }
    for name, table in tables.items():
        _write_csv(table, out_dir / f"{name}.csv")
    figures.save(figures.sanity_curves(tables["sanity"]), out_dir / "sanity.png")
    figures.save(figures.robustness_curves(tables["robustness"]), out_dir / "robustness.png")
    write_json(out_dir / "provenance.json", {"settings": s, "provenance": provenance(s["seed"], device)})


def summarize_step(results: Path, datasets: list[str], out: Path) -> None:
    frames = []
    for name in datasets:
        table = pd.read_csv(Path(results) / name / "metrics.csv")
        frames.append(table.assign(dataset=name))
    _write_csv(pd.concat(frames), Path(out).with_suffix(".csv"))
    with atomic_path(out) as tmp:
        tmp.write_text(evaluation.summary_markdown(Path(results), datasets))
