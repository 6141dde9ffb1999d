"""The workflow on a real SLURM cluster, through snakemake-executor-plugin-slurm and the project's profile.

Needs the one-node cluster that tests/slurm/run.sh starts (`bash tests/slurm/run.sh` runs this
file); the main test suite does not collect it. A tiny configuration of the DAG runs sharded on
the cluster while the same configuration runs unsharded on this machine, and every result file of
the two runs must be byte-identical.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medxgan.config import merge
from workflow_runs import REPO, TINY, run_environment

if not os.environ.get("MEDXGAN_SLURM_CLUSTER"):
    raise RuntimeError("tests/slurm_workflow.py needs the SLURM cluster of tests/slurm/run.sh: run that script")

PROFILES = ["--profile", str(REPO / "workflow/profiles/slurm"), "--profile", str(REPO / "tests/slurm/profile")]
DATASET = "synthetic-mri"
TARGETS = [f"results/{DATASET}/explanations/heatmaps.safetensors", f"results/{DATASET}/inversion/inversion.csv"]
BATCH = 4  # inversion and explanation batches; chunks of one batch cut its 8 positive test images in two
CONFIG = merge(TINY, {"defaults": {"inversion": {"batch_size": BATCH},
                                   "explain": {"methods": ["latent_ig"], "batch_size": BATCH}}})
SHARDS = {"defaults": {"inversion": {"chunk_size": BATCH}, "explain": {"chunk_size": BATCH}}}
COMPARED = ["classifier/model.safetensors", "gan/generator.safetensors", "inversion/latents.safetensors",
            "inversion/inversion.csv", "explanations/heatmaps.safetensors"]
RUN_TIMEOUT = 300  # seconds; a run that hangs fails the test instead of holding CI


def make_workdir(path: Path, overrides: dict) -> Path:
    shutil.copytree(REPO / "config", path / "config")
    config = merge(merge(yaml.safe_load((path / "config" / "config.yaml").read_text()), CONFIG), overrides)
    config["datasets"] = {DATASET: config["datasets"][DATASET]}
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def snakemake_command(workdir: Path, *args: str, stdout=subprocess.PIPE) -> dict:
    bin_dir = str(Path(sys.executable).parent)
    # the tests' HOME and shared precision-probe cache, with this machine's PATH (the cluster's commands)
    env = {**os.environ, **run_environment(workdir), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return {"args": [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
                     "--directory", str(workdir), *args],
            "cwd": workdir, "env": env, "stdout": stdout, "stderr": subprocess.STDOUT, "text": True}


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(**snakemake_command(workdir, *args), timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as timeout:
        output = (timeout.output or "")[-5000:]
        pytest.fail(f"snakemake {' '.join(args)} ran past {RUN_TIMEOUT} s; its output ends:\n{output}")


def submitted(output: str) -> dict[str, int]:
    """Rule -> jobs submitted to SLURM, from the plugin's 'submitted with SLURM jobid ... (log: ...)' lines."""
    rules = re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/rule_(\w+)/", output)
    return {rule: rules.count(rule) for rule in set(rules)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny DAG sharded on the cluster and, at the same time, unsharded on this machine."""
    root = tmp_path_factory.mktemp("runs")
    local_dir = make_workdir(root / "local", {})
    cluster_dir = make_workdir(root / "cluster", SHARDS)
    # The local run writes to a file, not a pipe: nobody reads a pipe while the cluster run is
    # waited for, and a full one would stall the local run.
    local_log = root / "local.log"
    with local_log.open("w") as log:
        local = subprocess.Popen(**snakemake_command(local_dir, "--cores", "2", *TARGETS, stdout=log))
        try:
            cluster = run(cluster_dir, *PROFILES, *TARGETS)
            local.wait(timeout=RUN_TIMEOUT)
        finally:
            local.kill()
    assert local.returncode == 0, local_log.read_text()[-3000:]
    assert cluster.returncode == 0, cluster.stdout[-5000:]
    return local_dir, cluster_dir, cluster.stdout


def test_jobs_run_as_slurm_jobs_and_bookkeeping_on_the_login_node(runs):
    _, _, output = runs
    jobs = submitted(output)
    assert jobs["invert_chunk"] == 2 and jobs["explain_chunk"] == 2, jobs
    assert {"prepare", "train_classifier", "train_gan"} <= set(jobs)
    assert not {"count_test_positives", "gather_inversion", "gather_explanations"} & set(jobs)


def test_sharded_cluster_run_equals_local_run_byte_for_byte(runs):
    local_dir, cluster_dir, _ = runs
    for name in COMPARED:
        local, cluster = (root / "results" / DATASET / name for root in (local_dir, cluster_dir))
        assert cluster.read_bytes() == local.read_bytes(), name


def test_a_failed_cluster_job_fails_the_run_and_names_its_logs(runs):
    _, cluster_dir, _ = runs
    manifest = cluster_dir / "data" / DATASET / "manifest.csv"
    table = pd.read_csv(manifest)
    positives = table[(table.split == "test") & (table.label == "tumor")]
    broken = manifest.parent / positives.path.iloc[BATCH]  # the first image of the second chunk
    original = broken.read_bytes()
    broken.write_bytes(b"not an image")
    try:
        failed = run(cluster_dir, *PROFILES, "--forcerun", "invert_chunk", "--", f"results/{DATASET}/inversion/inversion.csv")
    finally:
        broken.write_bytes(original)
    assert failed.returncode != 0
    # Snakemake's error names the rule's log and the SLURM job's log, and both tell what went wrong.
    error = re.search(r"Error in rule invert_chunk:.*?\n    log: (\S+), (\S+) \(check log file", failed.stdout, re.DOTALL)
    assert error, failed.stdout[-5000:]
    rule_log, slurm_log = cluster_dir / error[1], Path(error[2])
    assert rule_log == cluster_dir / f"results/{DATASET}/logs/invert_{BATCH}-{2 * BATCH}.log"
    assert f"cannot read image {broken}" in rule_log.read_text()
    assert slurm_log.parent.parent == cluster_dir / ".snakemake/slurm_logs/rule_invert_chunk"
    assert "Error in rule invert_chunk" in slurm_log.read_text()
