"""The evaluation step's tables: per-image scores, summaries with intervals, paired comparisons."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import RegionClassifier, inversion_record
from medxgan.inversion import InversionRecord
from medxgan.data.manifest import ImageSet
from medxgan.evaluate.scoring import HEADLINE_METRICS, adjusted_p_values, compare_methods, evaluate_explanations, headline, summarise
from medxgan.names import INVERSION_METHOD, RANDOM_METHOD

SIZE, N = 16, 6
ALL_METRICS = ["pointing_game", "mass_in_lesion", "mask_auroc", "relevance_rank_accuracy", "top_k_iou", "top_k_dice",
               "probability_drop", "deletion_auc", "insertion_auc"]
CFG = {"metrics": ALL_METRICS, "perturbation_fractions": [0.1], "top_k_fractions": [0.1],
       "faithfulness_baseline": "mean", "curve_steps": 4, "bootstrap_resamples": 200}


def image_set(with_masks: bool) -> ImageSet:
    images = torch.rand(N, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    masks = torch.zeros(N, SIZE, SIZE, dtype=torch.bool)
    masks[:, 4:10, 4:10] = with_masks
    return ImageSet(images, torch.ones(N, dtype=torch.long), masks, torch.full((N,), with_masks),
                    [f"img{i}" for i in range(N)], torch.arange(N))


def latents(data: ImageSet) -> InversionRecord:
    p = torch.linspace(0.2, 0.9, N)
    return inversion_record(data.images, mse=torch.full((N,), 0.01), ssim=torch.full((N,), 0.9), p_image=p,
                            p_reconstruction=p, p_negative=1 - p)


def heatmaps(data: ImageSet) -> dict[str, torch.Tensor]:
    on_lesion = data.masks.float() + 0.01 * torch.rand(N, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return {"on_lesion": on_lesion, "elsewhere": 1 - on_lesion}


def test_scores_every_method_and_the_random_reference():
    data = image_set(with_masks=True)
    table, curves = evaluate_explanations(RegionClassifier(4, 10), data, heatmaps(data), latents(data), CFG, seed=0,
                                          device="cpu")
    assert set(table.method) == {"on_lesion", "elsewhere", RANDOM_METHOD, INVERSION_METHOD}
    means = table.groupby(["method", "metric"])["value"].mean()
    assert means["on_lesion", "pointing_game"] == 1.0 and means["elsewhere", "pointing_game"] == 0.0
    assert means["on_lesion", "deletion_auc"] < means["elsewhere", "deletion_auc"]
    assert means[INVERSION_METHOD, "classifier_agreement"] == 1.0
    assert (table.groupby(["method", "metric"]).size() == N).all()
    assert {"top10_iou", "top10_dice", "probability_drop_top10", "insertion_auc"} <= set(table.metric)
    # the stored curves are the ones the AUCs were computed from: one point per step, 0 to 1
    assert (curves.groupby(["id", "method", "curve"]).size() == CFG["curve_steps"] + 1).all()
    deletion = curves[(curves.method == "on_lesion") & (curves.curve == "deletion")]
    area = deletion.groupby("id").apply(lambda c: np.trapezoid(c.p_positive, c.fraction), include_groups=False)
    assert area.mean() == pytest.approx(means["on_lesion", "deletion_auc"], abs=1e-6)


def test_only_the_configured_metrics_are_computed():
    data = image_set(with_masks=True)
    cfg = {**CFG, "metrics": ["pointing_game", "deletion_auc"]}
    table, curves = evaluate_explanations(RegionClassifier(4, 10), data, heatmaps(data), latents(data), cfg, 0, "cpu")
    scored = set(table[table.method != INVERSION_METHOD].metric)
    assert scored == {"pointing_game", "deletion_auc"}
    assert set(curves.curve) == {"deletion"}


def test_without_masks_localisation_is_skipped_not_zero(caplog):
    data = image_set(with_masks=False)
    with caplog.at_level(logging.WARNING):
        table, _ = evaluate_explanations(RegionClassifier(4, 10), data, heatmaps(data), latents(data), CFG, 0, "cpu")
    assert "localisation metrics are skipped" in caplog.text
    assert not table.metric.isin(["pointing_game", "mass_in_lesion", "mask_auroc", "top10_iou"]).any()
    assert "deletion_auc" in set(table.metric)


def test_localisation_pairs_each_heatmap_with_its_own_mask_by_id():
    """Only images 0 and 2 of 3 have masks: their scores must come from their own heatmaps, not from
    the first two heatmaps in the batch. Each heatmap is built so its scores are known."""
    masks = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True  # image 0's lesion: top left
    masks[2, 8:12, 8:12] = True  # image 2's lesion: elsewhere; image 1 has none
    has_mask = torch.tensor([True, False, True])
    images = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    data = ImageSet(images, torch.ones(3, dtype=torch.long), masks, has_mask, ["a", "b", "c"], torch.arange(3))
    maps = torch.zeros(3, SIZE, SIZE)
    maps[0, 0:4, 0:4] = 1.0  # all of it on image 0's lesion: pointing 1, mass 1
    maps[1, 12:16, 0:4] = 1.0  # image 1: away from both lesions (scored against image 2's, it would give 0, 0)
    maps[2, 8:12, 8:12] = 2.0  # image 2: the peak on its lesion (16 px x 2) and as much mass outside it
    maps[2, 0:2, 0:16] = 1.0  # (32 px x 1): pointing 1, mass 1/2
    codes = inversion_record(images)
    cfg = {**CFG, "metrics": ["pointing_game", "mass_in_lesion"]}
    table, _ = evaluate_explanations(RegionClassifier(4, 10), data, {"built": maps}, codes, cfg, seed=0, device="cpu")
    scores = table[table.method == "built"].set_index(["metric", "id"]).value
    assert scores["pointing_game"].to_dict() == {"a": 1.0, "c": 1.0}
    assert scores["mass_in_lesion"].to_dict() == pytest.approx({"a": 1.0, "c": 0.5})
    fidelity = table[table.method == INVERSION_METHOD].set_index(["metric", "id"]).value
    assert fidelity["lesion_area_share"].to_dict() == pytest.approx({"a": 16 / SIZE**2, "c": 16 / SIZE**2})


def test_summary_interval_brackets_the_mean():
    data = image_set(with_masks=True)
    table, _ = evaluate_explanations(RegionClassifier(4, 10), data, heatmaps(data), latents(data), CFG, 0, "cpu")
    summary = summarise(table, CFG, seed=0)
    assert ((summary.ci_low <= summary["mean"] + 1e-12) & (summary["mean"] <= summary.ci_high + 1e-12)).all()
    assert summary.equals(summarise(table, CFG, seed=0))


def test_comparisons_pair_images_by_id():
    per_image = pd.DataFrame({
        "id": [f"i{k}" for k in range(8)] * 2,
        "method": ["a"] * 8 + ["b"] * 8,
        "metric": "m",
        "value": list(range(8)) + [v + 1 for v in range(8)][::-1],  # b's rows in reverse id order
    })
    per_image.loc[8:, "id"] = per_image.loc[8:, "id"].iloc[::-1].to_numpy()
    comparison = compare_methods(per_image)
    assert len(comparison) == 1
    assert comparison.mean_difference.iloc[0] == pytest.approx(-1.0)
    assert comparison.p_value.iloc[0] < 0.05
    assert comparison.p_value_bh.iloc[0] == pytest.approx(comparison.p_value.iloc[0])  # one test: nothing to adjust


def test_adjusted_p_values_control_the_false_discovery_rate_and_skip_untested():
    raw = pd.Series([0.01, 0.04, float("nan"), 0.03, 0.5])
    adjusted = adjusted_p_values(raw)
    # Benjamini-Hochberg over the 4 tests: p_(i) * m / i, made monotone from the top
    assert adjusted.tolist()[:2] == pytest.approx([0.04, 0.04 * 4 / 3])
    assert pd.isna(adjusted[2]) and adjusted[3] == pytest.approx(0.04 * 4 / 3) and adjusted[4] == pytest.approx(0.5)
    assert (adjusted.dropna() >= raw.dropna()).all()


def test_lesion_fidelity_separates_the_error_inside_the_lesion_from_the_rest():
    data = image_set(with_masks=True)
    codes = latents(data)
    codes.reconstruction[:, :, 4:10, 4:10] += 0.5  # wrong only inside the lesion
    per_image, _ = evaluate_explanations(RegionClassifier(), data, heatmaps(data), codes, CFG, seed=0, device="cpu")
    fidelity = per_image[per_image.method == INVERSION_METHOD].groupby("metric").value
    assert fidelity.mean()["reconstruction_mse_in_lesion"] == pytest.approx(0.25)
    assert fidelity.mean()["reconstruction_mse_outside_lesion"] == pytest.approx(0.0, abs=1e-12)
    assert fidelity.mean()["lesion_area_share"] == pytest.approx(36 / SIZE**2)
    assert fidelity.count()["lesion_area_share"] == N


def test_oracle_verdicts_appear_only_with_an_oracle():
    data = image_set(with_masks=False)
    codes = latents(data)  # C: p = 0.2 ... 0.9 for images and reconstructions, 1 - p for negatives
    without, _ = evaluate_explanations(RegionClassifier(), data, heatmaps(data), codes, CFG, seed=0, device="cpu")
    assert not without.metric.str.startswith("oracle").any()
    oracle = {"p_oracle_image": torch.ones(N), "p_oracle_reconstruction": torch.tensor([0.9, 0.9, 0.9, 0.2, 0.9, 0.9]),
              "p_oracle_negative": torch.full((N,), 0.1)}
    per_image, _ = evaluate_explanations(RegionClassifier(), data, heatmaps(data), codes.with_(**oracle), CFG, seed=0,
                                         device="cpu")
    rows = per_image[per_image.method == INVERSION_METHOD].set_index(["metric", "id"]).value
    assert rows["oracle_reconstruction_called_positive"].tolist() == [1, 1, 1, 0, 1, 1]
    assert rows["oracle_negative_called_negative"].tolist() == [1] * N
    # valid for both judges only where C also calls the reconstruction positive and the negative negative
    c_valid = (codes.p_reconstruction >= 0.5) & (codes.p_negative < 0.5)
    assert rows["oracle_and_classifier_validity"].tolist() == (c_valid & torch.tensor([1, 1, 1, 0, 1, 1]).bool()).float().tolist()


def test_headline_numbers_are_the_summary_s_means_and_intervals_nested_for_dvc():
    """metrics.json (DVC's metrics): C's test scores, the inversion's fidelity and each method's
    localisation and faithfulness, as {mean, ci_low, ci_high} rounded to 4 decimals; nothing else."""
    data = image_set(with_masks=True)
    codes = latents(data).with_(p_oracle_image=torch.ones(N), p_oracle_reconstruction=torch.ones(N),
                                 p_oracle_negative=torch.zeros(N))
    per_image, _ = evaluate_explanations(RegionClassifier(4, 10), data, heatmaps(data), codes, CFG, 0, "cpu")
    summary = summarise(per_image, CFG, seed=0)
    numbers = headline(summary, {"test": {"accuracy": 0.912345, "auroc": None, "n": 16}, "provenance": {"cpu": "x"}})
    assert list(numbers) == ["classifier", "inversion", "on_lesion", "elsewhere", RANDOM_METHOD]
    assert numbers["classifier"] == {"test": {"accuracy": 0.9123, "auroc": None}}
    assert set(numbers["inversion"]) == {"reconstruction_ssim", "reconstruction_mse", "oracle_and_classifier_validity",
                                         "oracle_reconstruction_called_positive", "oracle_negative_called_negative"}
    assert numbers["inversion"]["reconstruction_ssim"]["mean"] == pytest.approx(0.9)
    row = summary.set_index(["method", "metric"]).loc[("on_lesion", "mass_in_lesion")]
    assert numbers["on_lesion"]["mass_in_lesion"] == {key: round(float(row[key]), 4)
                                                      for key in ("mean", "ci_low", "ci_high")}
    assert set(numbers["on_lesion"]) == set(HEADLINE_METRICS)  # not top-k, probability drop or rank accuracy
    assert numbers["on_lesion"]["pointing_game"]["mean"] == 1.0 and numbers["elsewhere"]["pointing_game"]["mean"] == 0.0

    # a metric the summary lacks is left out, and without C's report there is no classifier entry
    fewer = headline(summary[summary.metric != "mask_auroc"])
    assert "classifier" not in fewer
    assert "mask_auroc" not in fewer["on_lesion"] and "pointing_game" in fewer["on_lesion"]


# --- healthy twins --------------------------------------------------------------------------

TWIN_METRICS = {"negative_twin_mse_in_lesion", "negative_twin_mse_outside_lesion", "twin_difference_spearman",
                "twin_difference_mass"}
LESION_BRIGHTNESS = 0.5


def with_twins(data: ImageSet, twinned: torch.Tensor) -> ImageSet:
    """`data` where the `twinned` images have a healthy twin: the image with its lesion square dimmed."""
    twins = data.images.clone()
    twins[:, :, 4:10, 4:10] -= LESION_BRIGHTNESS
    twins[~twinned] = 0.0
    return ImageSet(data.images, data.labels, data.masks, data.has_mask, data.ids, data.rows, twins, twinned)


def test_twin_rows_score_the_negative_realisation_and_every_heatmap_against_the_twin():
    twinned = torch.tensor([True, False, True, True, False, True])
    data = with_twins(image_set(with_masks=True), twinned)
    codes = latents(data).with_(negative=data.twins.clone())  # G(z1, 0) is exactly the twin ...
    codes.negative[0] = data.images[0]  # ... except on img0, where the lesion stays
    truth = (data.images - data.twins).abs().mean(dim=1)
    maps = {"truth": truth, "elsewhere": heatmaps(data)["elsewhere"]}
    table, _ = evaluate_explanations(RegionClassifier(4, 10), data, maps, codes, CFG, seed=0, device="cpu")
    twin_rows = table[table.metric.isin(TWIN_METRICS)]
    assert set(twin_rows.id) == {"img0", "img2", "img3", "img5"}
    assert (twin_rows.groupby(["method", "metric"]).size() == 4).all()
    assert set(twin_rows.method) == {INVERSION_METHOD, "truth", "elsewhere", RANDOM_METHOD}
    scores = twin_rows.set_index(["method", "metric", "id"]).value.sort_index()
    assert scores[INVERSION_METHOD, "negative_twin_mse_in_lesion"].to_dict() == pytest.approx(
        {"img0": LESION_BRIGHTNESS**2, "img2": 0.0, "img3": 0.0, "img5": 0.0})
    assert (scores[INVERSION_METHOD, "negative_twin_mse_outside_lesion"] == 0.0).all()
    assert scores["truth", "twin_difference_spearman"].tolist() == pytest.approx([1.0] * 4)
    assert scores["truth", "twin_difference_mass"].tolist() == pytest.approx([1.0] * 4)
    assert (scores["elsewhere", "twin_difference_mass"] < 0.1).all()
    assert scores[RANDOM_METHOD, "twin_difference_spearman"].abs().max() < 0.3
    # the summary, the comparisons and the headline take the new rows in their stride
    summary = summarise(table, CFG, seed=0)
    assert TWIN_METRICS <= set(summary.metric)
    assert "twin_difference_mass" in set(compare_methods(table).metric)
    assert set(headline(summary)["truth"]) == set(HEADLINE_METRICS)


def test_without_twins_there_are_no_twin_rows_and_no_warnings(caplog):
    data = image_set(with_masks=True)
    with caplog.at_level(logging.WARNING):
        table, _ = evaluate_explanations(RegionClassifier(4, 10), data, heatmaps(data), latents(data), CFG, 0, "cpu")
    assert not table.metric.isin(TWIN_METRICS).any()
    assert caplog.records == []


def test_twins_without_masks_score_the_heatmaps_but_not_the_lesion_error():
    data = with_twins(image_set(with_masks=False), torch.ones(N, dtype=torch.bool))
    codes = latents(data).with_(negative=data.twins.clone())
    table, _ = evaluate_explanations(RegionClassifier(4, 10), data, heatmaps(data), codes, CFG, 0, "cpu")
    scored = set(table[table.metric.isin(TWIN_METRICS)].metric)
    assert scored == {"twin_difference_spearman", "twin_difference_mass"}
