"""The real Snakefile on a user's manifest whose files are named oddly: planned, and the manifest check run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from workflow_runs import REPO
from workflow_runs import snakemake as run_snakemake

from medxgan.data.phantoms import write_phantom_dataset

REPORT = "results/study/manifest_check.json"


def test_an_image_whose_name_reads_as_a_wildcard_is_checked_and_tracked(tmp_path: Path):
    """Snakemake reads `{...}` in an input as a wildcard: `img{sample}.png` must neither stop the plan
    nor go untracked (replacing it reruns the manifest check)."""
    workdir = tmp_path / "work"
    shutil.copytree(REPO / "config", workdir / "config")
    manifest = write_phantom_dataset("synthetic-mri", tmp_path / "scans", 64, {"train": 4, "val": 2, "test": 4},
                                     0.5, seed=0)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    image = manifest.parent / table.loc[0, "path"]
    braced = image.rename(image.with_name("img{sample}.png"))
    table.loc[0, "path"] = braced.relative_to(manifest.parent).as_posix()
    table.to_csv(manifest, index=False)

    def snakemake(*args: str) -> str:
        run = run_snakemake(workdir, "--cores", "1", REPORT, *args, "--config", f"manifest={manifest}",
                            "negative=no_tumor", "positive=tumor", "name=study")
        assert run.returncode == 0, (run.stdout + run.stderr)[-1500:]
        return run.stdout + run.stderr

    assert "rule check_manifest:" in snakemake("-n")
    snakemake()
    assert (workdir / REPORT).is_file() and "Nothing to be done" in snakemake("-n")
    Image.fromarray(255 - np.asarray(Image.open(braced))).save(braced)  # the same name, other content
    assert "rule check_manifest:" in snakemake("-n")


def test_a_variant_whose_keys_clash_only_when_laid_together_stops_the_plan_before_any_job(tmp_path: Path):
    workdir = tmp_path / "work"
    shutil.copytree(REPO / "config", workdir / "config")
    (workdir / "clash.yaml").write_text("ablation:\n  variants:\n    g0_wide: {gan: {anatomy_width: 0.25}}\n")
    run = run_snakemake(workdir, "--cores", "1", "-n", "--configfile", "config/config.yaml", "clash.yaml")
    assert run.returncode != 0
    assert ("invalid settings of dataset synthetic-cxr, ablation variant g0_wide: gan.anatomy_width"
            in run.stdout + run.stderr), (run.stdout + run.stderr)[-1500:]
    assert not (workdir / "results").exists()
