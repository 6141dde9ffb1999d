"""medxgan.report.tables: the tables read back from results/ for the summary, the docs and notebooks."""

from pathlib import Path

import pandas as pd
import pytest

from medxgan.report import tables


@pytest.fixture
def checks_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ds" / "checks"
    root.mkdir(parents=True)
    pd.DataFrame([
        {"method": method, "image": image, "sigma": sigma, "metric": "spearman", "value": value}
        for method, values in {"latent_ig": (0.9, 0.7), "difference": (0.8, 0.6)}.items()
        for image, value in enumerate(values) for sigma in (0.0, 0.1)
    ] + [{"method": m, "image": 0, "sigma": 0.05, "metric": "max_sensitivity", "value": v}
         for m, v in (("latent_ig", 0.2), ("difference", 0.4))]).to_csv(root / "robustness.csv", index=False)
    # the sanity check covers only the methods that read C directly
    pd.DataFrame([{"method": "latent_ig", "image": 0, "step": step, "spearman": rho}
                  for step, rho in ((0, 1.0), (1, 0.5), (2, 0.25))]).to_csv(root / "sanity.csv", index=False)
    pd.DataFrame([{"metric": "validity", "mean": 0.9, "ci_low": 0.8, "ci_high": 1.0},
                  {"metric": "frechet_distance_classifier_features:a_vs_b", "mean": 12.34567}]
                 ).to_csv(root / "counterfactual.csv", index=False)
    return tmp_path


def test_checks_table_averages_per_method_and_marks_what_does_not_apply(checks_dir: Path):
    table = tables.checks_table(checks_dir, "ds")
    assert list(table.index) == ["latent_ig", "difference"]  # the order the check wrote
    assert table.loc["latent_ig", "Spearman under noise σ = 0.1"] == pytest.approx(0.8)
    assert "Spearman under noise σ = 0" not in table.columns  # the clean heatmap is the reference
    assert table.loc["difference", "max-sensitivity"] == pytest.approx(0.4)
    assert table.loc["latent_ig", "Spearman after randomising all of C"] == pytest.approx(0.25)  # the last step
    assert table.loc["difference", "Spearman after randomising all of C"] == tables.NOT_APPLICABLE


def test_counterfactual_table_shows_intervals_only_where_there_are_any(checks_dir: Path):
    values = tables.counterfactual_table(checks_dir, "ds")["value"]
    assert values["validity"] == "0.900 [0.800, 1.000]"
    assert values["frechet_distance_classifier_features:a_vs_b"] == "12.346"


def test_datasets_of_family_reads_the_summary(tmp_path: Path):
    pd.DataFrame({"dataset": ["a", "a", "b", "c"], "family": ["brain_mri", "brain_mri", "chest_xray", ""]}
                 ).to_csv(tmp_path / "summary.csv", index=False)
    assert tables.datasets_of_family(tmp_path, "brain_mri") == ["a"]
    assert tables.datasets_of_family(tmp_path, "chest_xray") == ["b"]


def test_peer_table_puts_the_best_method_using_g_against_the_strongest_pixel_space_peer(tmp_path: Path):
    means = {("pointing_game", "latent_ig"): 0.4, ("pointing_game", "ig_counterfactual"): 0.9,
             ("pointing_game", "ig"): 0.95, ("pointing_game", "ig_blur"): 0.8, ("pointing_game", "random"): 0.99,
             ("mass_in_lesion", "latent_shift"): 0.5, ("mass_in_lesion", "gradcam"): 0.2,
             ("mask_auroc", "latent_ig"): 0.9}  # no pixel-space peer for the AUROC: no row
    (tmp_path / "ds").mkdir()
    pd.DataFrame([{"method": method, "metric": metric, "mean": mean, "std": 0.1, "n": 10,
                   "ci_low": mean - 0.05, "ci_high": mean + 0.05} for (metric, method), mean in means.items()]
                 ).to_csv(tmp_path / "ds" / "metrics.csv", index=False)
    table = tables.peer_table(tmp_path, "ds")
    assert list(table.index) == ["pointing_game", "mass_in_lesion"]
    assert table.loc["pointing_game", "best that uses G"] == "ig_counterfactual 0.900 [0.850, 0.950]"
    assert table.loc["pointing_game", "strongest pixel-space peer"] == "ig 0.950 [0.900, 1.000]"  # random is no peer
    assert table.loc["pointing_game", "margin"] == pytest.approx(-0.05)
    assert table.loc["mass_in_lesion", "margin"] == pytest.approx(0.3)
