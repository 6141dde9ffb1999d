# Helpers shared by the rules: where a dataset's manifest is, and each step's settings as JSON.

import csv
import shlex
from pathlib import Path


def manifest_of(wildcards):
    return manifest_path(config, wildcards.dataset)


def files_of_user_manifest(wildcards):
    """The images and masks a user's manifest lists (read where they are, so no rule makes them).
    A built-in or downloaded dataset's files are made with its manifest by a rule, so they follow it."""
    if "manifest" not in config["datasets"][wildcards.dataset]:
        return []
    manifest = Path(manifest_of(wildcards))
    try:
        with manifest.open(newline="") as rows:
            named = [row.get(column) for row in csv.DictReader(rows) for column in ("path", "mask_path")]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # the manifest check names what is wrong with the manifest
    # Paths are relative to the manifest's folder, as every step reads them; the check reports missing ones.
    return sorted({str(manifest.parent / name) for name in named if name and (manifest.parent / name).is_file()})


def settings(*sections):
    """The JSON settings a step needs: when exactly these change, Snakemake reruns the step."""
    return lambda wildcards: step_settings(config, wildcards.dataset, *sections)


def methods_of(dataset):
    return dataset_settings(config, dataset)["explain"]["methods"]


def explanations_of(wildcards):
    return expand("results/{dataset}/explanations/{method}.safetensors",
                  dataset=wildcards.dataset, method=methods_of(wildcards.dataset))


def encoder_of(wildcards):
    """The encoder's weights where the dataset's inversion starts from it (inversion.init: encoder)."""
    if dataset_settings(config, wildcards.dataset)["inversion"]["init"] != "encoder":
        return []
    return f"results/{wildcards.dataset}/encoder/model.safetensors"


def encoder_option(wildcards, input):
    """`--encoder FILE` for a step whose `encoder` input is set, nothing otherwise."""
    return f"--encoder {shlex.quote(str(input.encoder))}" if input.encoder else ""


def job_threads():
    """Torch threads of each heavy job: `threads` from the config or, for `auto`, an even share of
    --cores among the run's datasets, so one dataset on 8 cores gets 8 and two datasets on 2 cores
    run side by side with 1 each. Without --cores (a cluster) a job gets 1 unless its profile says
    otherwise (`set-threads`). The thread count is not a setting: results do not depend on it."""
    if config["threads"] != "auto":
        return config["threads"]
    try:
        cores = workflow.cores
    except WorkflowError:
        return 1
    return max(1, cores // len(DATASETS))


JOB_THREADS = job_threads()
