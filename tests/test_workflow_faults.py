"""End to end: a run killed in GAN training and again in the inversion, unlocked and rerun, ends with
the bytes of an uninterrupted one."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from workflow_runs import run_until, snakemake

from medxgan.data.phantoms import write_phantom_dataset


# A GAN long enough to be caught half way, and an inversion long enough to be caught inside its batch;
# two explanations are enough to be scored (each method is one more job per run, of three runs).
INTERRUPTIBLE = {"defaults": {"gan": {"steps": 200, "checkpoint_every": 20}, "inversion": {"steps": 800},
                              "explain": {"methods": ["difference", "ig"]}}}


def test_a_run_killed_in_gan_training_and_in_inversion_finishes_as_an_uninterrupted_one(workdir: Path, tmp_path):
    """Killed twice (SIGKILL, as a crash or a cluster's time limit would), unlocked and rerun, a run
    ends with the bytes of an uninterrupted one: the GAN resumes from its checkpoint, the rest reruns."""
    manifest = write_phantom_dataset("synthetic-mri", tmp_path / "scans", 64, {"train": 32, "val": 8, "test": 16}, 0.5,
                                     seed=3)
    (workdir / "config" / "interruptible.yaml").write_text(yaml.safe_dump(INTERRUPTIBLE))
    options = ["--cores", "2", "--configfile", "config/config.yaml", "config/interruptible.yaml",
               "--config", f"manifest={manifest}", "negative=no_tumor", "positive=tumor", "name=study"]
    args = ["results/study/metrics.csv", *options]  # through the explanations to their scores
    reference = Path(shutil.copytree(workdir, workdir.parent / "reference"))
    run = snakemake(reference, *args)
    assert run.returncode == 0, run.stderr[-3000:]

    results = workdir / "results" / "study"
    run_until(workdir, args, lambda: (results / "gan" / "checkpoint.pt").is_file())
    assert not (results / "gan" / "generator.safetensors").exists()  # killed inside GAN training
    assert snakemake(workdir, "--unlock", *options).returncode == 0
    log = results / "logs" / "invert.log"
    run_until(workdir, args, lambda: log.is_file() and "inversion batches" in log.read_text())
    assert (results / "gan" / "generator.safetensors").is_file()
    assert not (results / "inversion" / "latents.safetensors").exists()  # killed inside the inversion
    assert snakemake(workdir, "--unlock", *options).returncode == 0
    finished = snakemake(workdir, *args)
    assert finished.returncode == 0, finished.stderr[-3000:]

    # Also a second run on the same machine giving byte-identical scores (the first is the reference).
    for output in ("gan/generator.safetensors", "gan/losses.csv", "inversion/latents.safetensors",
                   "inversion/inversion.csv", "metrics.csv", "metrics_per_image.csv"):
        assert (results / output).read_bytes() == (reference / "results" / "study" / output).read_bytes(), output
