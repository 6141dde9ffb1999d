"""Evaluation: every method's heatmaps scored per image, medXGAN's inversion fidelity beside them.

The per-image table is tidy (one row per image x method x metric); the summary is its mean, spread
and count per method and metric. A `random` heatmap is scored too, so chance level is on the page.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import torch

from medxgan import metrics
from medxgan.data.manifest import ImageSet

log = logging.getLogger(__name__)

RANDOM_METHOD = "random"
INVERSION_METHOD = "medxgan inversion"
LOCALISATION = {"pointing_game": metrics.pointing_game, "mass_in_lesion": metrics.mass_in_lesion,
                "mask_auroc": metrics.mask_auroc}


def random_heatmaps(like: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.rand(like.shape, generator=torch.Generator().manual_seed(seed + 4))


def _rows(ids: list[str], method: str, metric: str, values: torch.Tensor) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "method": method, "metric": metric, "value": values.double().numpy()})


def inversion_fidelity(data: ImageSet, latents: dict[str, torch.Tensor]) -> list[pd.DataFrame]:
    """How faithful the inversion is: medXGAN's explanations are only as good as this."""
    called_positive = latents["p_image"] >= 0.5
    values = {
        "reconstruction_mse": metrics.reconstruction_mse(latents["reconstruction"], data.images),
        "reconstruction_ssim": metrics.reconstruction_ssim(latents["reconstruction"], data.images),
        "reconstruction_called_positive": (latents["p_reconstruction"] >= 0.5).float(),
        "negative_called_negative": (latents["p_negative"] < 0.5).float(),
        "classifier_agreement": ((latents["p_reconstruction"] >= 0.5) == called_positive).float(),
    }
    return [_rows(data.ids, INVERSION_METHOD, name, v) for name, v in values.items()]


def evaluate_explanations(classifier, data: ImageSet, heatmaps: dict[str, torch.Tensor],
                          latents: dict[str, torch.Tensor], cfg: dict, seed: int, device) -> pd.DataFrame:
    heatmaps = {**heatmaps, RANDOM_METHOD: random_heatmaps(next(iter(heatmaps.values())), seed)}
    masked = data.has_mask
    if not masked.any():
        log.warning("no test positive has a lesion mask: localisation metrics are skipped, not reported as zero")
    ids = [data.ids[i] for i in masked.nonzero().flatten().tolist()]
    frames = inversion_fidelity(data, latents)
    images = data.images.to(device)
    for method, maps in heatmaps.items():
        if masked.any():
            frames += [_rows(ids, method, name, fn(maps[masked], data.masks[masked])) for name, fn in LOCALISATION.items()]
        for fraction in cfg["perturbation_fractions"]:
            drop = metrics.probability_drop(classifier, images, maps.to(device), fraction).cpu()
            frames.append(_rows(data.ids, method, f"probability_drop_top{round(100 * fraction)}", drop))
    return pd.concat(frames, ignore_index=True)


def summarise(per_image: pd.DataFrame) -> pd.DataFrame:
    grouped = per_image.groupby(["method", "metric"], sort=False)["value"]
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def summary_markdown(results: Path, datasets: list[str]) -> str:
    """The README's results section: classifier, GAN, inversion and localisation, per dataset."""
    lines = ["# medXGAN results", ""]
    for name in datasets:
        root = Path(results) / name
        classifier = json.loads((root / "classifier" / "metrics.json").read_text())
        gan = json.loads((root / "gan" / "summary.json").read_text())
        table = pd.read_csv(root / "metrics.csv")
        hardware = classifier["provenance"]
        lines += [f"## {name}", "",
                  f"- Classifier, test set: accuracy {classifier['test']['accuracy']:.3f}, "
                  f"AUROC {classifier['test']['auroc']:.3f} (n = {classifier['test']['n']})",
                  f"- GAN disentanglement ({gan['disentanglement']['samples']} random z1): "
                  f"G(z1, 0) called negative {gan['disentanglement']['negative_called_negative']:.1%}, "
                  f"G(z1, z2) called positive {gan['disentanglement']['positive_called_positive']:.1%}",
                  f"- Run on {hardware['device']} ({hardware['processor']}, {hardware['cpu_count']} CPUs), "
                  f"torch {hardware['torch']}, seed {hardware['seed']}", ""]
        fidelity = table[table.method == INVERSION_METHOD].set_index("metric")
        lines += ["Inversion of the test positives (mean ± sd):", "",
                  fidelity.apply(lambda r: f"{r['mean']:.3f} ± {r['std']:.3f}", axis=1).to_frame("value").to_markdown(), ""]
        scores = table[table.method != INVERSION_METHOD]
        pivot = scores.assign(cell=scores["mean"].map("{:.3f}".format)).pivot(index="method", columns="metric", values="cell")
        lines += ["Explanations (mean over test positives):", "", pivot.to_markdown(), ""]
    return "\n".join(lines)
