"""The end-to-end tests' runner: the real Snakefile, run by the real snakemake in a working
directory of its own, on the catalog's tiny test configuration."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from medxgan.config import merge

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile")]
TINY = yaml.safe_load((REPO / ".test" / "config" / "config.yaml").read_text())  # the catalog's test config


def tiny_workdir(path: Path) -> Path:
    """A working directory with the project's config, shrunk so the whole DAG runs in about a minute."""
    shutil.copytree(REPO / "config", path / "config")
    shutil.copytree(REPO / "notebooks", path / "notebooks")
    config = yaml.safe_load((path / "config" / "config.yaml").read_text())
    tiny = {**merge(config, TINY), "ablation": TINY["ablation"]}  # the tiny variants replace, not join, the default ones
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(tiny))
    return path


def run_environment(workdir: Path) -> dict:
    """The venv's bin on PATH (the rules call `medxgan`), HOME inside the working directory, and one
    precision-probe cache beside it: `precision: auto` measured separately by two runs of a test
    (an uninterrupted reference and a resumed run) under another load could choose differently, and
    their bytes would differ, where one user's runs share one cache."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(workdir),
            "MEDXGAN_CACHE_DIR": str(workdir.parent / "probe-cache")}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], cwd=workdir, env=run_environment(workdir),
                          capture_output=True, text=True, timeout=900)


def run_until(workdir: Path, args: list[str], ready, timeout: float = 600) -> None:
    """Start snakemake, wait until `ready()` holds, then SIGKILL its whole process group, as a
    crash or a cluster's time limit would."""
    process = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), *args], cwd=workdir, env=run_environment(workdir),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the run ended before the point where it was to be killed"
            assert time.monotonic() < deadline, "the run never reached the point where it was to be killed"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
