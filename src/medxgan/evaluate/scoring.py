"""Evaluation: every method's heatmaps scored per image, medXGAN's inversion fidelity beside them.

The per-image table is tidy (one row per image x method x metric); the summary is its mean, spread
and count per method and metric. A `random` heatmap is scored too, so chance level is on the page.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medxgan.config import ConfigError
from medxgan.data.manifest import ImageSet
from medxgan.evaluate import checks, metrics, robustness
from medxgan.explainers import GENERATIVE_METHODS, build_explainer
from medxgan.inversion import InversionRecord, negative_counterfactuals, reconstruct
from medxgan.names import INVERSION_METHOD, RANDOM_METHOD, READ_C_DIRECTLY
from medxgan.nets.networks import positive_probability
from medxgan.torch_utils import module_device

log = logging.getLogger(__name__)

CONFIDENCE = 0.95  # of every interval reported
LOCALISATION = {"pointing_game": metrics.pointing_game, "mass_in_lesion": metrics.mass_in_lesion,
                "mask_auroc": metrics.mask_auroc, "relevance_rank_accuracy": metrics.relevance_rank_accuracy}
TOP_K = {"top_k_iou": metrics.top_k_iou, "top_k_dice": metrics.top_k_dice}  # one score per top_k_fractions entry
CURVES = {"deletion": metrics.deletion_curve, "insertion": metrics.insertion_curve}
CURVE_COLUMNS = ("id", "method", "curve", "fraction", "p_positive")


def _percent(fraction: float) -> int:
    return round(100 * fraction)


def random_heatmaps(like: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.rand(like.shape, generator=torch.Generator().manual_seed(seed + 4))


def _rows(ids: list[str], method: str, metric: str, values: torch.Tensor) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "method": method, "metric": metric, "value": values.double().numpy()})


def inversion_fidelity(latents: InversionRecord) -> dict[str, torch.Tensor]:
    """How faithful the inversion is: medXGAN's explanations are only as good as this. With the
    oracle's probabilities in `latents` (see `medxgan.train.oracle`), also whether an independent
    classifier sees in G's images what C sees."""
    called_positive = latents.p_image >= 0.5
    fidelity = {
        "reconstruction_mse": latents.mse,
        "reconstruction_ssim": latents.ssim,
        "reconstruction_called_positive": (latents.p_reconstruction >= 0.5).float(),
        "negative_called_negative": (latents.p_negative < 0.5).float(),
        "classifier_agreement": ((latents.p_reconstruction >= 0.5) == called_positive).float(),
    }
    if latents.judged_by_oracle:
        fidelity |= {
            "oracle_calls_image_positive": (latents.p_oracle_image >= 0.5).float(),
            "oracle_reconstruction_called_positive": (latents.p_oracle_reconstruction >= 0.5).float(),
            "oracle_negative_called_negative": (latents.p_oracle_negative < 0.5).float(),
            # the counterfactual is valid for both judges: C and the oracle see the class change
            "oracle_and_classifier_validity": ((latents.p_reconstruction >= 0.5) & (latents.p_negative < 0.5)
                                               & (latents.p_oracle_reconstruction >= 0.5)
                                               & (latents.p_oracle_negative < 0.5)).float(),
        }
    return fidelity


def lesion_fidelity(data: ImageSet, latents: InversionRecord) -> dict[str, torch.Tensor]:
    """Does the reconstruction get the lesion right, or only the rest of the image? Per masked
    test positive: the squared reconstruction error inside the lesion and outside it, and the
    lesion's share of the image (what a heatmap's mass in lesion is at chance)."""
    masked = data.has_mask
    masks = data.masks[masked].float()
    error = (latents.reconstruction[masked].float() - data.images[masked]).pow(2).mean(dim=1)  # over channels
    inside = masks.flatten(1).sum(1)
    outside = (1 - masks).flatten(1).sum(1)
    return {
        "reconstruction_mse_in_lesion": (error * masks).flatten(1).sum(1) / inside.clamp(min=1),
        "reconstruction_mse_outside_lesion": (error * (1 - masks)).flatten(1).sum(1) / outside.clamp(min=1),
        "lesion_area_share": inside / masks[0].numel(),
    }


def twin_fidelity(data: ImageSet, latents: InversionRecord) -> dict[str, torch.Tensor]:
    """Is the negative realisation G(z1, 0) the same patient without the lesion? Per test positive with
    a healthy twin and a mask: the squared error of G(z1, 0) against the twin inside the lesion (did
    the lesion go?) and outside it (did the rest stay?)."""
    judged = data.has_twin & data.has_mask
    inside, outside = metrics.squared_error_in_and_outside(latents.negative[judged], data.twins[judged],
                                                           data.masks[judged])
    return {"negative_twin_mse_in_lesion": inside, "negative_twin_mse_outside_lesion": outside}


def twin_agreement(heatmaps: torch.Tensor, data: ImageSet) -> dict[str, torch.Tensor]:
    """Agreement of each heatmap of a test positive with a healthy twin with what its lesion truly
    changed, |x - twin|: rank correlation, and the heatmap's share on the changed pixels."""
    twinned = data.has_twin
    differences = metrics.twin_difference(data.images[twinned], data.twins[twinned])
    return {"twin_difference_spearman": metrics.twin_difference_spearman(heatmaps[twinned], differences),
            "twin_difference_mass": metrics.twin_difference_mass(heatmaps[twinned], differences)}


def twin_scores(data: ImageSet, heatmaps: dict[str, torch.Tensor],
                latents: InversionRecord) -> list[pd.DataFrame]:
    """The rows of the twin judges (`twin_fidelity`, `twin_agreement` per method), for the test positives
    that have a healthy twin; none, silently, where none has (most data has no twins)."""
    def ids_where(chosen: torch.Tensor) -> list[str]:
        return [data.ids[i] for i in chosen.nonzero().flatten().tolist()]

    frames = []
    if (data.has_twin & data.has_mask).any():
        frames += [_rows(ids_where(data.has_twin & data.has_mask), INVERSION_METHOD, name, v)
                   for name, v in twin_fidelity(data, latents).items()]
    if data.has_twin.any():
        for method, maps in heatmaps.items():
            frames += [_rows(ids_where(data.has_twin), method, name, v)
                       for name, v in twin_agreement(maps.cpu(), data).items()]
    return frames


def localisation(heatmaps: torch.Tensor, masks: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """Agreement of each heatmap with its lesion mask, for the metrics named in cfg['metrics']."""
    chosen = cfg["metrics"]
    scores = {name: fn(heatmaps, masks) for name, fn in LOCALISATION.items() if name in chosen}
    for name, fn in TOP_K.items():
        if name in chosen:
            for fraction in cfg["top_k_fractions"]:
                scores[name.replace("top_k", f"top{_percent(fraction)}")] = fn(heatmaps, masks, fraction)
    return scores


def faithfulness(classifier, images: torch.Tensor, heatmaps: torch.Tensor,
                 cfg: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """What C does when the pixels a heatmap ranks first are taken away or shown first.

    Returns per-image scores and, per curve kind, the (N, steps + 1) deletion/insertion curves.
    """
    chosen = cfg["metrics"]
    scores = {}
    if "probability_drop" in chosen:
        scores = {f"probability_drop_top{_percent(f)}": metrics.probability_drop(classifier, images, heatmaps, f)
                  for f in cfg["perturbation_fractions"]}
    kinds = [kind for kind in CURVES if f"{kind}_auc" in chosen]
    baseline = metrics.baseline_image(images, cfg["faithfulness_baseline"]) if kinds else None
    curves = {kind: CURVES[kind](classifier, images, heatmaps, baseline, cfg["curve_steps"]) for kind in kinds}
    scores |= {f"{kind}_auc": metrics.curve_auc(curve) for kind, curve in curves.items()}
    return scores, curves


def _curve_rows(ids: list[str], method: str, kind: str, curves: torch.Tensor) -> pd.DataFrame:
    points = curves.shape[1]
    return pd.DataFrame({"id": np.repeat(ids, points), "method": method, "curve": kind,
                         "fraction": np.tile(np.linspace(0.0, 1.0, points), len(ids)),
                         "p_positive": curves.flatten().double().cpu().numpy()})


def evaluate_explanations(classifier, data: ImageSet, heatmaps: dict[str, torch.Tensor],
                          latents: InversionRecord, cfg: dict, seed: int,
                          device) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy per-image scores, and the tidy deletion/insertion curves (one row per image x
    method x curve x fraction of pixels swapped)."""
    heatmaps = {**heatmaps, RANDOM_METHOD: random_heatmaps(next(iter(heatmaps.values())), seed)}
    masked = data.has_mask
    if not masked.any():
        log.warning("no test positive has a lesion mask: localisation metrics are skipped, not reported as zero")
    masked_ids = [data.ids[i] for i in masked.nonzero().flatten().tolist()]
    frames = [_rows(data.ids, INVERSION_METHOD, name, v) for name, v in inversion_fidelity(latents).items()]
    if masked.any():
        frames += [_rows(masked_ids, INVERSION_METHOD, name, v) for name, v in lesion_fidelity(data, latents).items()]
    curve_frames = []
    images = data.images.to(device)
    for method, maps in heatmaps.items():
        if masked.any():
            scores = localisation(maps[masked], data.masks[masked], cfg)
            frames += [_rows(masked_ids, method, name, v) for name, v in scores.items()]
        scores, curves = faithfulness(classifier, images, maps.to(device), cfg)
        frames += [_rows(data.ids, method, name, v.cpu()) for name, v in scores.items()]
        curve_frames += [_curve_rows(data.ids, method, kind, curve) for kind, curve in curves.items()]
    frames += twin_scores(data, heatmaps, latents)
    curves = pd.concat(curve_frames, ignore_index=True) if curve_frames else pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.concat(frames, ignore_index=True), curves


def summarise(per_image: pd.DataFrame, cfg: dict, seed: int) -> pd.DataFrame:
    """Mean, sd, n and a bootstrap confidence interval of the mean, per method and metric."""
    rows = []
    for (method, metric), values in per_image.groupby(["method", "metric"], sort=False)["value"]:
        low, high = metrics.bootstrap_ci(values, cfg["bootstrap_resamples"], CONFIDENCE, seed)
        rows.append({"method": method, "metric": metric, "mean": values.mean(), "std": values.std(),
                     "n": values.count(), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


# The numbers `dvc metrics show` and `dvc metrics diff` compare (metrics.json beside metrics.csv).
HEADLINE_METRICS = ("pointing_game", "mass_in_lesion", "mask_auroc", "deletion_auc", "insertion_auc")
HEADLINE_INVERSION = ("reconstruction_ssim", "reconstruction_mse", "oracle_reconstruction_called_positive",
                      "oracle_negative_called_negative", "oracle_and_classifier_validity")
HEADLINE_DIGITS = 4


def _rounded(value) -> float | None:
    """A number for JSON, rounded; NaN and None (no interval for one image, no AUROC) as null."""
    return None if value is None or pd.isna(value) else round(float(value), HEADLINE_DIGITS)


def headline(summary: pd.DataFrame, classifier: dict | None = None) -> dict:
    """The headline numbers of a dataset's summary (metrics.csv), nested for DVC's metrics: C's test
    accuracy and AUROC from its metrics.json (`classifier`, when given), the inversion's fidelity,
    then per explanation method (in the summary's order) the localisation and faithfulness scores,
    each as {mean, ci_low, ci_high}. Metrics the summary lacks are left out."""
    def scores(rows: pd.DataFrame, names: tuple[str, ...]) -> dict:
        by_metric = rows.drop_duplicates("metric").set_index("metric")
        return {name: {key: _rounded(by_metric.loc[name, key]) for key in ("mean", "ci_low", "ci_high")}
                for name in names if name in by_metric.index}

    numbers = {}
    if classifier is not None:
        numbers["classifier"] = {"test": {key: _rounded(classifier["test"].get(key)) for key in ("accuracy", "auroc")}}
    inversion = scores(summary[summary.method == INVERSION_METHOD], HEADLINE_INVERSION)
    if inversion:
        numbers["inversion"] = inversion
    for method in summary.method.drop_duplicates():
        method_scores = scores(summary[summary.method == method], HEADLINE_METRICS)
        if method != INVERSION_METHOD and method_scores:
            numbers[method] = method_scores
    return numbers


def adjusted_p_values(p_values: pd.Series) -> pd.Series:
    """Benjamini-Hochberg adjusted p-values (false discovery rate) over every test of the table;
    NaN (nothing to test) stays NaN and does not count as a test."""
    from scipy.stats import false_discovery_control

    tested = p_values.notna()
    adjusted = pd.Series(np.nan, index=p_values.index)
    if tested.any():
        adjusted[tested] = false_discovery_control(p_values[tested].to_numpy(), method="bh")
    return adjusted


def compare_methods(per_image: pd.DataFrame) -> pd.DataFrame:
    """Paired Wilcoxon signed-rank p-values between every two methods, per metric, over the same
    images, and beside them the Benjamini-Hochberg adjusted ones: a dataset's table holds well over
    a hundred tests, so the raw p-values alone overstate what is significant."""
    scores = per_image[per_image.method != INVERSION_METHOD]
    rows = []
    for metric, part in scores.groupby("metric", sort=False):
        table = part.pivot(index="id", columns="method", values="value")
        for a, b in itertools.combinations(table.columns, 2):
            rows.append({"metric": metric, "method_a": a, "method_b": b,
                         "mean_difference": (table[a] - table[b]).mean(),
                         "p_value": metrics.paired_wilcoxon(table[a], table[b])})
    comparisons = pd.DataFrame(rows)
    return comparisons.assign(p_value_bh=adjusted_p_values(comparisons.p_value)) if rows else comparisons


# ---------------------------------------------------------------------------------- checks

SANITY_METHODS = READ_C_DIRECTLY  # see checks.sanity_check


def heatmaps_for(method: str, C, G, images: torch.Tensor, s: dict,
                 latents: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """One method's heatmaps of the images whose codes are `latents` (None for pixel-space methods)."""
    return build_explainer(method, C, G, s["explain"]).attribute(images, target=1, latents=latents)


def sanity_table(C, G, data: ImageSet, latents: InversionRecord, s: dict) -> pd.DataFrame:
    """Cascading randomisation of C for the methods that read C; latents stay those of the trained C.
    Empty, with a warning, for a classifier whose layers cannot be re-initialised (TorchScript)."""
    if not checks.parameterised_layers(C):
        log.warning("the sanity check needs C's Linear/Conv2d/BatchNorm2d layers, which a TorchScript classifier "
                    "does not expose: skipped")
        return pd.DataFrame(columns=["layer", "step", "image", "spearman", "ssim", "method"])
    record = latents.subset(slice(len(data)))
    codes, G = record.codes, record.drawn_by(G)
    frames = []
    for method in [m for m in SANITY_METHODS if m in s["explain"]["methods"]]:
        def explain(model, method=method):
            return heatmaps_for(method, model, G, data.images, s, latents=codes)
        frames.append(checks.sanity_check(explain, C, s["seed"]).assign(method=method))
    return pd.concat(frames, ignore_index=True)


def robustness_table(C, G, data: ImageSet, s: dict, encoder=None,
                     record: InversionRecord | None = None) -> pd.DataFrame:
    """Similarity of each method's heatmaps under input noise, and its max-sensitivity.

    A medXGAN heatmap of a noisy image comes from that image's own inversion, run as the inversion
    step runs (from `encoder` where inversion.init asks for it); the inversions are shared by the
    generative methods, and every perturbed copy is inverted in one call (an image's inversion does
    not depend on the others in its batch, up to the kernels' rounding). `record`, the inversion
    step's record of these images, stands for their clean inversion (and sigma 0's, the same
    images): one inversion fewer. The clean maps also stand for sigma 0's and max-sensitivity's
    reference, so sigma 0's row is 1 wherever the map is not constant.
    """
    cfg = s["checks"]
    sigmas = [0.0, *cfg["noise_sigmas"]]
    inversions = {} if record is None else {_image_key(data.images): record}
    if any(method in GENERATIVE_METHODS for method in s["explain"]["methods"]):
        perturbed = [robustness.add_noise(data.images, sigma, s["seed"]) for sigma in sigmas]
        perturbed += robustness.sensitivity_samples(data.images, cfg["sensitivity_radius"],
                                                    cfg["sensitivity_samples"], s["seed"])
        inversions.update(_invert_together([data.images, *perturbed], inversions, C, G, data.rows, s, encoder))

    def explain_with(method):
        # each distinct image set explained once: the clean images come back as sigma 0 and as
        # max-sensitivity's reference, and every explainer is deterministic
        done = {}

        def explain(images):
            key = _image_key(images)
            if key in done:
                return done[key]
            if method in GENERATIVE_METHODS:
                record = inversions[key]
                done[key] = heatmaps_for(method, C, record.drawn_by(G), images, s, latents=record.codes)
            else:
                done[key] = heatmaps_for(method, C, G, images, s, latents=None)
            return done[key]
        return explain

    frames = []
    for method in s["explain"]["methods"]:
        explain = explain_with(method)
        noise = robustness.noise_robustness(explain, data.images, sigmas, s["seed"])
        sensitivity = robustness.max_sensitivity(explain, data.images, cfg["sensitivity_radius"],
                                                 cfg["sensitivity_samples"], s["seed"])
        frames += [noise.assign(method=method),
                   pd.DataFrame({"sigma": float("nan"), "image": range(len(data)), "metric": "max_sensitivity",
                                 "value": sensitivity.double().numpy(), "method": method})]
    return pd.concat(frames, ignore_index=True)


def _invert_together(image_sets: list[torch.Tensor], done: dict[str, InversionRecord], C, G, rows: torch.Tensor,
                     s: dict, encoder) -> dict[str, InversionRecord]:
    """The record of each image set not in `done` (keyed by `_image_key`), from one inversion of all
    of them: one tuning of a few dozen images instead of one per set of a few."""
    missing = {}
    for images in image_sets:
        key = _image_key(images)
        if key not in done:
            missing.setdefault(key, images)
    if not missing:
        return {}
    together = reconstruct(G, C, torch.cat(list(missing.values())), rows.repeat(len(missing)), s["inversion"],
                           s["seed"], s["precision"], encoder)
    size = len(rows)
    return {key: together.subset(slice(i * size, (i + 1) * size)) for i, key in enumerate(missing)}


def _image_key(images: torch.Tensor) -> str:
    return hashlib.sha256(images.numpy().tobytes()).hexdigest()


def feature_spaces(C, s: dict) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The feature spaces the Fréchet distance is measured in, by the name its rows carry: C's
    penultimate features (where C has a Linear layer to hook: not a TorchScript classifier);
    Inception v3's too when checks.inception_weights names its weights file."""
    spaces = {}
    try:
        checks.last_linear(C)
        spaces["classifier_features"] = lambda images: checks.penultimate_features(C, images)
    except ValueError as error:
        log.warning("no Fréchet distance in C's features: %s", error)
    weights = s["checks"]["inception_weights"]
    if weights:
        if not Path(weights).is_file():
            raise ConfigError(f"checks.inception_weights: file not found: {weights}")
        inception = checks.load_inception(weights).to(module_device(C))
        spaces["inception"] = lambda images: checks.inception_features(inception, images)
    return spaces


def negative_counterfactual_rows(C, G, negatives: ImageSet, s: dict, encoder=None) -> list[dict]:
    """Rows of the counterfactual table for the first checks.images negative test images C calls
    negative: how often the positive-realisation search makes C call G(z1, z2*) positive, and how
    large that change is (mean |G(z1, z2*) - G(z1, 0)|, and |z2*|)."""
    with torch.no_grad():
        p = positive_probability(C, negatives.images.to(module_device(C))).cpu()
    called_negative = negatives.subset((p < 0.5).nonzero().flatten()[:s["checks"]["images"]])
    if not len(called_negative):
        return []
    result = negative_counterfactuals(G, C, called_negative.images, called_negative.rows, s["inversion"], s["seed"],
                                      s["precision"], encoder)
    per_image = {"negatives_made_positive": result["flipped"].float(), "negatives_change_l1": result["change_l1"],
                 "negatives_z2_norm": result["z2_norm"]}
    return [{"metric": name, "mean": v.mean().item(),
             **dict(zip(("ci_low", "ci_high"), metrics.bootstrap_ci(v, seed=s["seed"])))} for name, v in per_image.items()]


def counterfactual_table(C, positives: ImageSet, negatives: ImageSet, latents: InversionRecord,
                         s: dict) -> pd.DataFrame:
    """medXGAN's counterfactuals: validity (share of G(z1, 0) that C calls negative), proximity of
    G(z1, 0) to G(z1, z2), and realism as the Fréchet distance between generated and real test images
    in each feature space (named in the row), with the distance between real negatives and real
    positives for scale."""
    per_image = {"validity": (latents.p_negative < 0.5).float(),
                 **{f"proximity_{name}": v for name, v in checks.proximity(latents.negative,
                                                                         latents.reconstruction).items()}}
    rows = [{"metric": name, "mean": v.mean().item(),
             **dict(zip(("ci_low", "ci_high"), metrics.bootstrap_ci(v, seed=s["seed"])))} for name, v in per_image.items()]
    image_sets = {"reconstructions": latents.reconstruction, "negative_realisations": latents.negative,
                  "real_positives": positives.images, "real_negatives": negatives.images}
    for space, features_of in feature_spaces(C, s).items():
        features = {name: features_of(images) for name, images in image_sets.items()}
        for generated, real in (("reconstructions", "real_positives"), ("negative_realisations", "real_negatives"),
                                ("real_negatives", "real_positives")):
            distance = checks.frechet_distance(features[generated], features[real])
            rows.append({"metric": f"frechet_distance_{space}:{generated}_vs_{real}", "mean": distance})
    return pd.DataFrame(rows)
