#!/usr/bin/env bash
# Fetch data, weights and results from the DVC remote, then make Snakemake see them as up to date:
#   workflow/dvc_pull.sh [dvc pull options, e.g. -r myremote]      (what `make pull` runs)
# DVC restores file contents, not timestamps, so Snakemake would rerun (retrain) any step whose
# inputs happen to be written after its outputs. Once `dvc status` confirms that the files match
# dvc.lock for the current config, `snakemake --touch --forceall` stamps every output in DAG order
# without running anything, and records each step's settings so a later config change still
# triggers the right reruns.
set -euo pipefail
cd "$(dirname "$0")/.."

dvc pull "$@"
if ! dvc status --quiet; then
    dvc status >&2
    echo "dvc_pull.sh: files or settings differ from dvc.lock (above); run 'dvc repro' instead of marking them up to date" >&2
    exit 1
fi
snakemake --cores 1 --touch --forceall --quiet all   # `--quiet all`: only errors; the target is rule all
