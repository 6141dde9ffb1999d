"""Reading the results folder back: the tables the summary, the README and the notebooks show.

Every function reads what the workflow wrote under `results/{dataset}/` and returns a DataFrame
(or Markdown); nothing here computes a metric.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from medxgan.names import INVERSION_METHOD, PIXEL_SPACE, USES_G

SUMMARY_DIGITS = 3
# the localisation metrics the peer table compares, each with whether a higher value is better
PEER_METRICS = {"pointing_game": True, "mass_in_lesion": True, "mask_auroc": True}
NOT_APPLICABLE = "n/a"
SUMMARY_VARIABLE = "MEDXGAN_SUMMARY"  # set by `medxgan notebook --summary`: the run's own summary table


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def with_interval(table: pd.DataFrame) -> pd.Series:
    """'mean [ci_low, ci_high]' per row; the bare value where a row has no interval (a distance
    between two image sets is one number, not a mean over images)."""
    def cell(row: pd.Series) -> str:
        if pd.isna(row["ci_low"]):
            return f"{row['mean']:.3f}"
        return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"

    return table.apply(cell, axis=1)


def summary_table(results: Path) -> pd.DataFrame:
    """The run's summary (`medxgan summarize`): the file MEDXGAN_SUMMARY names, else results/summary.csv
    (a run on a user's manifest writes its own, under results/NAME/)."""
    return pd.read_csv(os.environ.get(SUMMARY_VARIABLE) or Path(results) / "summary.csv", keep_default_na=False)


def datasets_of_family(results: Path, family: str) -> list[str]:
    """The datasets of one family in the run's summary, in the order they were run."""
    summary = summary_table(results)
    return list(dict.fromkeys(summary.loc[summary.family == family, "dataset"]))


def model_table(results: Path, datasets: list[str]) -> pd.DataFrame:
    """Per dataset: the classifier's test accuracy and AUROC, and the GAN's disentanglement check."""
    rows = []
    for name in datasets:
        classifier = _json(Path(results) / name / "classifier" / "metrics.json")["test"]
        gan = _json(Path(results) / name / "gan" / "summary.json")["disentanglement"]
        rows.append({"dataset": name, "test accuracy": classifier["accuracy"], "test AUROC": classifier["auroc"],
                     "G(z1, 0) called negative": gan["negative_called_negative"],
                     "G(z1, z2) called positive": gan["positive_called_positive"]})
    return pd.DataFrame(rows).set_index("dataset").round(SUMMARY_DIGITS)


def fidelity_table(results: Path, dataset: str) -> pd.DataFrame:
    """medXGAN's inversion of the test positives: mean [95% CI] per fidelity measure."""
    table = pd.read_csv(Path(results) / dataset / "metrics.csv")
    fidelity = table[table.method == INVERSION_METHOD]
    return fidelity.assign(**{"mean [95% CI]": with_interval(fidelity)}).set_index("metric")[["mean [95% CI]"]]


def scores_table(results: Path, dataset: str) -> pd.DataFrame:
    """Metric x method, each cell mean [95% CI], metrics in the order they were computed."""
    table = pd.read_csv(Path(results) / dataset / "metrics.csv")
    scores = table[table.method != INVERSION_METHOD]
    pivot = scores.assign(cell=with_interval(scores)).pivot(index="metric", columns="method", values="cell")
    return pivot.loc[list(dict.fromkeys(scores.metric)), list(dict.fromkeys(scores.method))]


def peer_table(results: Path, dataset: str) -> pd.DataFrame:
    """Per localisation metric: the best method that uses G against the strongest pixel-space peer
    (Grad-CAM, IG from black, IG from the blurred image), each named with its mean [95% CI], and
    the margin. Only methods the run computed take part."""
    table = pd.read_csv(Path(results) / dataset / "metrics.csv")
    rows = []
    for metric, higher_is_better in PEER_METRICS.items():
        scores = table[table.metric == metric].set_index("method")
        uses_g, peer = (_best(scores, methods, higher_is_better) for methods in (USES_G, PIXEL_SPACE))
        if uses_g is None or peer is None:
            continue
        rows.append({"metric": metric, "best that uses G": _named_cell(scores, uses_g),
                     "strongest pixel-space peer": _named_cell(scores, peer),
                     "margin": round(scores.loc[uses_g, "mean"] - scores.loc[peer, "mean"], SUMMARY_DIGITS)})
    return pd.DataFrame(rows).set_index("metric") if rows else pd.DataFrame()


def _named_cell(scores: pd.DataFrame, method: str) -> str:
    return f"{method} {with_interval(scores.loc[[method]]).iloc[0]}"


def _best(scores: pd.DataFrame, methods: tuple[str, ...], higher_is_better: bool) -> str | None:
    present = scores.loc[scores.index.intersection(methods), "mean"]
    if present.empty:
        return None
    return present.idxmax() if higher_is_better else present.idxmin()


def comparisons_table(results: Path, dataset: str, method: str, others: list[str]) -> pd.DataFrame:
    """Paired Wilcoxon p-values of `method` against each of `others`, per metric."""
    comparisons = pd.read_csv(Path(results) / dataset / "metrics_comparisons.csv")
    pair = (comparisons.method_a.eq(method) & comparisons.method_b.isin(others)) | \
           (comparisons.method_b.eq(method) & comparisons.method_a.isin(others))
    return comparisons[pair].round(4).set_index("metric")


def checks_table(results: Path, dataset: str) -> pd.DataFrame:
    """Per method: Spearman with the clean heatmap at each noise level, max-sensitivity, and the
    Spearman left after all of C is randomised (sanity check; "n/a" for methods that read C only
    through the inversion)."""
    root = Path(results) / dataset / "checks"
    robustness = pd.read_csv(root / "robustness.csv")
    noisy = robustness[(robustness.metric == "spearman") & (robustness.sigma > 0)]
    table = noisy.pivot_table(index="method", columns="sigma", values="value", aggfunc="mean")
    table.columns = [f"Spearman under noise σ = {sigma:g}" for sigma in table.columns]
    table["max-sensitivity"] = robustness[robustness.metric == "max_sensitivity"].groupby("method")["value"].mean()
    sanity = pd.read_csv(root / "sanity.csv")
    fully_randomised = sanity[sanity.step == sanity.step.max()]
    table["Spearman after randomising all of C"] = fully_randomised.groupby("method")["spearman"].mean()
    table = table.loc[list(dict.fromkeys(robustness.method))].round(SUMMARY_DIGITS)
    return table.astype(object).where(table.notna(), NOT_APPLICABLE)


def counterfactual_table(results: Path, dataset: str) -> pd.DataFrame:
    """Validity, proximity and the Fréchet distances (each row names its feature space), as the
    check step wrote them: mean [95% CI] over images, or the distance between two image sets."""
    table = pd.read_csv(Path(results) / dataset / "checks" / "counterfactual.csv")
    return table.assign(value=with_interval(table)).set_index("metric")[["value"]]


def summary_markdown(results: Path, datasets: list[str]) -> str:
    """The results section of docs/results.md: classifier, GAN, inversion, explanations and checks, per dataset."""
    lines = ["# medXGAN results", ""]
    for name in datasets:
        root = Path(results) / name
        classifier = _json(root / "classifier" / "metrics.json")
        gan = _json(root / "gan" / "summary.json")["disentanglement"]
        hardware = classifier["provenance"]
        lines += [f"## {name}", "",
                  f"- Classifier, test set: accuracy {classifier['test']['accuracy']:.3f}, "
                  f"AUROC {classifier['test']['auroc']:.3f} (n = {classifier['test']['n']})",
                  f"- GAN disentanglement ({gan['samples']} random z1): "
                  f"G(z1, 0) called negative {gan['negative_called_negative']:.1%}, "
                  f"G(z1, z2) called positive {gan['positive_called_positive']:.1%}",
                  f"- Run on {hardware['device']} ({hardware['processor']}, {hardware['cpu_count']} CPUs), "
                  f"torch {hardware['torch']}, seed {hardware['seed']}", "",
                  "Inversion of the test positives:", "", fidelity_table(results, name).to_markdown(), "",
                  "Explanations, mean over test positives [95% bootstrap CI]:", "",
                  scores_table(results, name).to_markdown(), ""]
        peers = peer_table(results, name)
        if not peers.empty:
            lines += ["The best method that uses G against the strongest pixel-space peer:", "", peers.to_markdown(), ""]
        if (root / "checks").is_dir():
            lines += ["Checks on a sample of test positives (means):", "", checks_table(results, name).to_markdown(), "",
                      "Counterfactual quality of medXGAN:", "", counterfactual_table(results, name).to_markdown(), ""]
    return "\n".join(lines)


def notebook_sections(results: Path, dataset: str):
    """What a results notebook shows for one dataset, in order, as IPython display objects."""
    from IPython.display import Image, Markdown  # notebooks only: keeps the command line light

    root = Path(results) / dataset

    def figure(name: str, caption: str) -> list:
        return [Markdown(caption), Image(filename=str(root / f"{name}.png"))]

    yield Markdown(f"## {dataset}\n### Inversion fidelity\nmedXGAN explains a real image through its reconstruction "
                   "G(z1, z2): a poor reconstruction means the difference map explains another image.")
    yield fidelity_table(results, dataset)
    yield from figure("figures/inversion", "Error distributions, and the worst reconstructions (failure cases).")
    yield Markdown("### Explanations\nMean over the positive test images [95% bootstrap interval]; higher is better "
                   "except `deletion_auc`; `random` is chance level. Localisation rows need lesion masks.")
    yield scores_table(results, dataset)
    yield Markdown("The best method that uses G against the strongest pixel-space peer (Grad-CAM, IG from black, IG "
                   "from the blurred image), per localisation metric:")
    yield peer_table(results, dataset)
    yield from figure("figures/metrics", "The same, as bars with their intervals.")
    yield from figure("figures/curves", "Deletion and insertion curves behind the AUC rows.")
    yield Markdown("Paired Wilcoxon signed-rank tests, Latent IG against the two baselines, on the same images:")
    yield comparisons_table(results, dataset, "latent_ig", ["gradcam", "ig"])
    yield Markdown("### Checks\nNoise robustness (the paper claims Latent IG is steadier than IG), max-sensitivity "
                   "(lower is steadier) and the sanity check (a heatmap that survives randomising all of C does not "
                   "explain C).")
    yield checks_table(results, dataset)
    yield from figure("checks/robustness", "Similarity to the clean heatmap as noise grows.")
    yield from figure("checks/sanity", "Cascading randomisation of C, output layer first.")
    yield Markdown("Counterfactual quality: validity (share of G(z1, 0) that C calls negative), proximity of G(z1, 0) "
                   "to G(z1, z2), and Fréchet distances (feature space named in each row).")
    yield counterfactual_table(results, dataset)
    yield from figure("figures/pipeline", "### The paper's figures\nOriginal, reconstruction, negative realisation, "
                      "difference map, colorized map, Grad-CAM, Latent IG, IG, then the maps of the real image and "
                      "the other peers.")
    yield from figure("figures/interpolation", "Interpolation G(z1, a·z2) from a = 0 to 1.")
