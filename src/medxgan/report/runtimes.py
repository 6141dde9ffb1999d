"""What each job of a workflow run cost: Snakemake's `benchmark:` files gathered into one table.

Every rule writes `results/{dataset}/benchmarks/{job}.tsv` (or `results/benchmarks/{job}.tsv` for
the run-wide rules): wall time, peak memory and CPU time of the job, measured by Snakemake. The
table names the machine, so a time is never quoted without its hardware.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMNS = ("dataset", "job", "seconds", "max_rss_mb", "cpu_seconds", "mean_load")
RUN_WIDE = "(run)"  # the dataset column of the jobs over all datasets (summary, notebooks)


def benchmark_files(results: Path, datasets: list[str]) -> list[tuple[str, Path]]:
    """(dataset, file) of every benchmark file under `results` for these datasets and the run-wide jobs."""
    results = Path(results)
    folders = [(name, results / name / "benchmarks") for name in datasets] + [(RUN_WIDE, results / "benchmarks")]
    return [(name, path) for name, folder in folders for path in sorted(folder.glob("*.tsv"))]


def read_benchmark(path: Path) -> dict:
    """One benchmark file: Snakemake writes a header line and one line per repeat; repeats are averaged."""
    table = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
    missing = {"s", "max_rss", "cpu_time", "mean_load"} - set(table.columns)
    if table.empty or missing:
        raise ValueError(f"{path} is not a Snakemake benchmark file"
                         + (f" (no columns {', '.join(sorted(missing))})" if missing else " (no rows)"))
    return {"seconds": table["s"].mean(), "max_rss_mb": table["max_rss"].mean(),
            "cpu_seconds": table["cpu_time"].mean(), "mean_load": table["mean_load"].mean()}


def collect(results: Path, datasets: list[str]) -> pd.DataFrame:
    """One row per job, longest first within each dataset."""
    rows = [{"dataset": name, "job": path.stem, **read_benchmark(path)} for name, path in benchmark_files(results, datasets)]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.sort_values(["dataset", "seconds"], ascending=[True, False], ignore_index=True)
