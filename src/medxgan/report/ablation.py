"""The ablation: GAN variants side by side, each trained with several seeds, on every dataset.

`snakemake ablation` trains every variant of config `ablation.variants` with every seed of
`ablation.seeds`, against the main run's C and oracle, and evaluates its generative explanations;
this module reads those metrics back into one table. The image-level bootstrap intervals of one
run do not show how much a GAN training varies, so the table reports the spread over seeds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medxgan.names import INVERSION_METHOD, PIXEL_SPACE, RANDOM_METHOD
from medxgan.report.runtimes import read_benchmark

C_ONLY = "(C only)"  # the variant column of the methods that do not read G, taken from the main run
C_ONLY_METHODS = PIXEL_SPACE + (RANDOM_METHOD,)
FIDELITY = {"reconstruction_ssim": "SSIM", "negative_called_negative": "C: G(z1,0) negative",
            "oracle_reconstruction_called_positive": "oracle: G(z1,z2) positive",
            "oracle_negative_called_negative": "oracle: G(z1,0) negative",
            "oracle_and_classifier_validity": "valid for C and oracle",
            "reconstruction_mse_in_lesion": "MSE in lesion", "reconstruction_mse_outside_lesion": "MSE outside",
            "negative_twin_mse_in_lesion": "G(z1,0) vs healthy twin: MSE in lesion",
            "negative_twin_mse_outside_lesion": "G(z1,0) vs healthy twin: MSE outside"}
TIMES = {"invert": "inversion time (s)", "train_encoder": "encoder training time (s)"}  # jobs' benchmark files
LOCALISATION = {"pointing_game": "pointing game", "mass_in_lesion": "mass in lesion", "mask_auroc": "mask AUROC"}
COLUMNS = ("dataset", "variant", "seed", "method", "metric", "value")


def variant_dir(results: Path, dataset: str, variant: str, seed: int) -> Path:
    return Path(results) / dataset / "ablation" / variant / f"seed{seed}"


def _means(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    keep = (table.method.eq(INVERSION_METHOD) & table.metric.isin(list(FIDELITY))) | \
           (~table.method.eq(INVERSION_METHOD) & table.metric.isin(list(LOCALISATION)))
    return table.loc[keep, ["method", "metric", "mean"]].rename(columns={"mean": "value"})


def _times(folder: Path) -> pd.DataFrame:
    """The wall time of the variant's inversion (and encoder training, where it has one), from the
    jobs' Snakemake benchmark files."""
    rows = [{"method": INVERSION_METHOD, "metric": f"{job}_seconds", "value": read_benchmark(path)["seconds"]}
            for job in TIMES if (path := folder / "benchmarks" / f"{job}.tsv").is_file()]
    return pd.DataFrame(rows, columns=["method", "metric", "value"])


def collect(results: Path, datasets: list[str], variants: list[str], seeds: list[int], main_seed: int) -> pd.DataFrame:
    """One row per dataset x variant x seed x method x metric (the run's mean over test positives),
    plus the C-only methods of the main run."""
    frames = []
    for dataset in datasets:
        for variant in variants:
            for seed in seeds:
                folder = variant_dir(results, dataset, variant, seed)
                means = _means(folder / "metrics.csv")
                means = pd.concat([means[means.method != RANDOM_METHOD], _times(folder)], ignore_index=True)
                frames.append(means.assign(dataset=dataset, variant=variant, seed=seed))
        main = _means(Path(results) / dataset / "metrics.csv")
        frames.append(main[main.method.isin(C_ONLY_METHODS)].assign(dataset=dataset, variant=C_ONLY, seed=main_seed))
    return pd.concat(frames, ignore_index=True)[list(COLUMNS)]


def _cell(values: pd.Series) -> str:
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std():.3f}"


def measure_names(table: pd.DataFrame) -> pd.Series:
    """'SSIM', 'latent_ig: pointing game', ...: what each row measures, for tables and figures."""
    fidelity = table.method == INVERSION_METHOD
    labels = {**FIDELITY, **{f"{job}_seconds": label for job, label in TIMES.items()}}
    return table.metric.map(labels).where(fidelity, table.method + ": " + table.metric.map(LOCALISATION))


def markdown(table: pd.DataFrame) -> str:
    """Per dataset: a row per measure, a column per variant (mean ± sd over the seeds)."""
    seeds = ", ".join(map(str, sorted(table[table.variant != C_ONLY].seed.unique())))
    parts = ["# Ablation: GAN variants\n",
             f"Mean over the positive test images of each training, then mean ± sd over the seeds ({seeds}). "
             "Grad-CAM, IG and random read only C: one value each, from the main run.\n"]
    for dataset, part in table.groupby("dataset", sort=False):
        part = part.assign(measure=measure_names(part))
        wide = part.groupby(["measure", "variant"], sort=False).value.apply(_cell).unstack("variant")
        wide = wide.loc[list(dict.fromkeys(part.measure)), list(dict.fromkeys(part.variant))]
        parts += [f"## {dataset}\n", wide.fillna("").to_markdown(), ""]
    return "\n".join(parts) + "\n"
