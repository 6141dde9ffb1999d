# Helpers shared by the rules: where a dataset's manifest is, and each step's settings as JSON.
# Every function the rules files call lives here, so those files hold only rules.

import csv
import json
import shlex
from pathlib import Path

from snakemake.io import contains_wildcard

from medxgan.config import variant_settings, variant_source
from medxgan.data.medical_formats import file_read
from medxgan.shards import chunk_ranges, chunk_size


def manifest_of(wildcards):
    return manifest_path(config, wildcards.dataset)


def listed_files(wildcards):
    """The images, masks and healthy twins a user's manifest lists (read where they are, so no rule makes them).
    A built-in or downloaded dataset's files are made with its manifest by a rule, so they follow it."""
    if "manifest" not in config["datasets"][wildcards.dataset]:
        return []
    manifest = Path(manifest_of(wildcards))
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as rows:  # Excel's "CSV UTF-8" starts with a BOM
            named = [
                row.get(column) for row in csv.DictReader(rows) for column in ("path", "mask_path", "healthy_twin_path")
            ]  # the twin column is optional
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # the manifest check names what is wrong with the manifest
    # Paths are relative to the manifest's folder, as every step reads them; the check reports missing ones.
    # A volume's slice (VOLUME.nii.gz#slice=K) is read from its volume.
    files = {manifest.parent / file_read(name) for name in named if name}
    return sorted(str(file) for file in files if file.is_file())


def files_of_user_manifest(wildcards):
    """The listed files as the manifest check's inputs, so replacing one reruns the check and all that
    follows; but a name Snakemake reads as a wildcard (`img{1}.png`), which an input cannot escape
    (doubled braces still read as one), is left to `check_settings`."""
    return [file for file in listed_files(wildcards) if not contains_wildcard(file)]


def check_settings(wildcards):
    """The manifest check's settings, with the size and modification time of each listed file whose name
    reads as a wildcard: replacing such a file changes them, which reruns the check as a changed input
    would. A manifest without such names keeps its settings as they were (nothing reruns)."""
    own = step_settings(config, wildcards.dataset, "data")
    untracked = {
        file: [os.stat(file).st_size, os.stat(file).st_mtime_ns]
        for file in listed_files(wildcards)
        if contains_wildcard(file)
    }
    return json.dumps({**json.loads(own), "wildcard_named_files": untracked}, sort_keys=True) if untracked else own


def settings(*sections):
    """The JSON settings a step needs: when exactly these change, Snakemake reruns the step."""
    return lambda wildcards: step_settings(config, wildcards.dataset, *sections)


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

# The priority of the jobs from the classifier to the inversion, the longest path through a dataset's
# jobs: given a free core, they go before the oracle, which only the evaluation needs, so both
# datasets' GANs train side by side from the start and the oracles fill the cores later.
ON_THE_LONG_PATH = 1


# --- data.smk: the public datasets ---


def borrowed_negatives(wildcards):
    """brain-figshare has no negatives of its own: it borrows another prepared dataset's."""
    other = config["datasets"][wildcards.source_dataset]["source"].get("negatives_from")
    return [manifest_path(config, other)] if other else []


# --- explanations.smk: inversion and explanations, in one job or in chunks ---

SHARDED = {
    section: [name for name in config["datasets"] if chunk_size(dataset_settings(config, name), section)]
    for section in ("inversion", "explain")
}


def one_of(names):
    """A wildcard pattern for exactly these dataset names (one that matches nothing for none)."""
    return "|".join(map(re.escape, names)) or "(?!)"


def unsharded(section):
    return one_of([name for name in config["datasets"] if name not in SHARDED[section]])


def chunks_of(dataset, section):
    """'START-STOP' of each chunk of the dataset's positive test images, for `section`'s chunk size."""
    count = checkpoints.count_test_positives.get(dataset=dataset).output.positives
    total = json.loads(Path(count).read_text())["test_positives"]
    size = chunk_size(dataset_settings(config, dataset), section)
    return [f"{start}-{stop}" for start, stop in chunk_ranges(total, size)]


# --- ablation.smk: the GAN variants (VARIANT_DIR is defined there) ---


def variant_params(*sections):
    return lambda w: variant_settings(config, w.dataset, w.variant, int(w.seed), *sections)


GAN_SECTIONS = ("data", "gan", "precision")  # what a variant's GAN training reads
ENCODER_SECTIONS = (*GAN_SECTIONS, "encoder")  # and its encoder's


def variant_file(w, path, *sections):
    """`path` (under VARIANT_DIR) in the folder of the first variant trained with the same `sections`
    (`variant_source`): each distinct network is trained once per seed."""
    variant = variant_source(config, w.dataset, w.variant, int(w.seed), *sections)
    return path.format(dataset=w.dataset, variant=variant, seed=w.seed)


def variant_generator(w):
    return variant_file(w, f"{VARIANT_DIR}/gan/generator.safetensors", *GAN_SECTIONS)


def variant_encoder(w):
    """The variant's encoder where its inversion starts from one (inversion.init: encoder)."""
    inversion = json.loads(variant_settings(config, w.dataset, w.variant, int(w.seed), "inversion"))["inversion"]
    if inversion["init"] != "encoder":
        return []
    return variant_file(w, f"{VARIANT_DIR}/encoder/model.safetensors", *ENCODER_SECTIONS)
