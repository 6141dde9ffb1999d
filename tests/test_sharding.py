"""Sharded inversion and explanations: chunks gathered into exactly the files one job writes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from medxgan.artifacts import read_heatmaps
from medxgan.pipeline import cli
from medxgan.config import ConfigError, dataset_settings, load_config, merge
from medxgan.data.phantoms import write_phantom_dataset
from medxgan.explainers import EXPLAINERS
from medxgan.files import InputFileError
from medxgan.nets.networks import MaskedGenerator, SimpleCNN
from medxgan.artifacts import save_model
from medxgan.shards import ShardError, check_chunk, chunk_ranges, chunk_size, parse_chunk
from helpers import calibrate_gan_pair
from workflow_runs import REPO, TINY, snakemake

NZ1, NZ2, SIZE = 8, 4, 64
# Batches of 4 and chunks of 8 positive test images (12 of them): a chunk holds two batches and the
# last chunk is a part-chunk, so both ways a chunk's batches could go wrong are exercised.
BATCH, CHUNK = 4, 8
SMALL = {
    "inversion": {"init": "random", "restarts": 2, "steps": 5, "batch_size": BATCH, "tuning": {"steps": 3}},
    "explain": {"latent_ig_steps": 4, "ig_steps": 4, "interpolation_points": 3, "batch_size": BATCH},
}


def test_chunks_cover_every_image_once_in_order():
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(8, 4) == [(0, 4), (4, 8)]
    assert chunk_ranges(10, 0) == [(0, 10)]  # no chunk size: one chunk
    assert chunk_ranges(3, 128) == [(0, 3)]


def test_chunk_size_must_be_whole_batches():
    settings = {"inversion": {"batch_size": 4, "chunk_size": 6}}
    with pytest.raises(ConfigError, match=r"inversion\.chunk_size \(6\).*inversion\.batch_size \(4\)"):
        chunk_size(settings, "inversion")
    assert chunk_size({"explain": {"batch_size": 4, "chunk_size": 8}}, "explain") == 8
    assert chunk_size({"explain": {"batch_size": 4, "chunk_size": None}}, "explain") == 0


def test_a_chunk_starts_and_ends_on_batch_boundaries():
    check_chunk(8, 12, total=12, batch_size=4, section="explain")  # the last chunk may end mid-batch
    check_chunk(4, 10, total=10, batch_size=4, section="explain")
    with pytest.raises(ConfigError, match=r"explain\.batch_size \(4\)"):
        check_chunk(2, 6, total=12, batch_size=4, section="explain")
    with pytest.raises(ConfigError, match=r"explain\.batch_size"):
        check_chunk(0, 6, total=12, batch_size=4, section="explain")
    with pytest.raises(ConfigError, match="past the 12"):
        check_chunk(8, 16, total=12, batch_size=4, section="explain")
    assert parse_chunk("8:12") == (8, 12)
    with pytest.raises(ConfigError, match="START:STOP"):
        parse_chunk("12:8")


def medxgan(step: str, settings: dict, models: dict, **options) -> None:
    """`medxgan STEP --settings ... --manifest ... --classifier ... --generator ... --OPTION VALUE ...`,
    as the Snakefile runs it, its error raised."""
    argv = [step]
    if settings is not None:
        argv += ["--settings", json.dumps(settings)]
    for name, value in {**models, **options}.items():
        values = value if isinstance(value, list) else [value]
        argv += [f"--{name.replace('_', '-')}", *(f"{v[0]}:{v[1]}" if isinstance(v, tuple) else str(v) for v in values)]
    cli.run(cli.build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small phantom dataset, a tiny calibrated C and G saved as the workflow saves them, and
    settings that cut its 12 positive test images into batches of 4 and chunks of 8."""
    root = tmp_path_factory.mktemp("study")
    manifest = write_phantom_dataset("synthetic-mri", root / "data", SIZE, {"train": 2, "val": 2, "test": 24}, 0.5, seed=3)
    torch.manual_seed(0)
    # a masked G, whose lesion branch the inversion tunes per image: the tuned weights shard too
    generator = MaskedGenerator(NZ1, NZ2, SIZE, channels=1, width=0.0625, upsampling="resize")
    classifier = SimpleCNN(SIZE, 1, width=0.25)
    calibrate_gan_pair(generator, classifier)
    save_model(generator, root / "generator.safetensors",
               {"kind": "generator", "nz1": NZ1, "nz2": NZ2, "image_size": SIZE, "channels": 1, "width": 0.0625,
                "composition": "masked", "upsampling": "resize"})
    save_model(classifier, root / "classifier.safetensors",
               {"kind": "classifier", "arch": "simple_cnn", "image_size": SIZE, "channels": 1, "width": 0.25})
    settings = merge(dataset_settings(load_config(REPO / "config" / "config.yaml"), "synthetic-mri"), SMALL)
    medxgan("count-test-positives", settings, {"manifest": manifest}, out=root / "count.json")
    assert json.loads((root / "count.json").read_text())["test_positives"] == 12
    models = {"manifest": manifest, "classifier": root / "classifier.safetensors",
              "generator": root / "generator.safetensors"}
    return root, settings, models


def invert_in_chunks(study, out: Path) -> list[Path]:
    root, settings, models = study
    folders = []
    for start, stop in chunk_ranges(12, CHUNK):
        folders.append(out / f"chunks/{start}-{stop}")
        medxgan("invert", settings, models, out_dir=folders[-1], chunk=(start, stop))
    medxgan("gather-inversion", None, {}, chunks=folders, out_dir=out)
    return folders


@pytest.fixture(scope="module")
def inversions(study):
    """The inversion run as one job and as chunks gathered."""
    root, settings, models = study
    medxgan("invert", settings, models, out_dir=root / "whole")
    invert_in_chunks(study, root / "sharded")
    return root / "whole", root / "sharded"


def test_sharded_inversion_writes_the_unsharded_files_byte_for_byte(inversions):
    whole, sharded = inversions
    for name in ("latents.safetensors", "inversion.csv"):
        assert (sharded / name).read_bytes() == (whole / name).read_bytes(), name
    latents = load_file(str(sharded / "latents.safetensors"))
    assert len(latents["rows"]) == 12 and latents["reconstruction"].shape == (12, 1, SIZE, SIZE)
    assert len(latents["lesion_weights"]) == 12  # each image's tuned branch, gathered from its chunk


def test_gathered_provenance_names_the_manifest_and_every_chunk(inversions, study):
    _, sharded = inversions
    record = json.loads((sharded / "provenance.json").read_text())
    assert record["manifest"] == str(study[2]["manifest"].resolve())
    assert [(c["start"], c["stop"], c["total"]) for c in record["chunks"]] == [(0, 8, 12), (8, 12, 12)]


def test_sharded_explanations_equal_unsharded_byte_for_byte(study, inversions):
    root, settings, models = study
    latents = inversions[0] / "latents.safetensors"
    whole = root / "heatmaps.safetensors"
    medxgan("explain", settings, models, inversion=latents, out=whole)  # every method of explain.methods
    chunks = [root / f"chunks/{start}-{stop}.safetensors" for start, stop in chunk_ranges(12, CHUNK)]
    for path, (start, stop) in zip(chunks, chunk_ranges(12, CHUNK)):
        medxgan("explain", settings, models, inversion=latents, out=path, chunk=(start, stop))
    medxgan("gather-explanations", None, {}, chunks=chunks, out=root / "sharded.safetensors")
    assert (root / "sharded.safetensors").read_bytes() == whole.read_bytes()
    heatmaps = read_heatmaps([root / "sharded.safetensors"])
    assert list(heatmaps) == settings["explain"]["methods"] and set(heatmaps) == set(EXPLAINERS)
    assert all(maps.shape == (12, SIZE, SIZE) for maps in heatmaps.values())


def test_a_method_explained_alone_equals_its_maps_from_the_job_of_every_method(study, inversions, tmp_path):
    """One job explains every method in turn: no method's maps may depend on those computed before it."""
    root, settings, models = study
    latents = inversions[0] / "latents.safetensors"
    medxgan("explain", settings, models, inversion=latents, out=tmp_path / "all.safetensors")
    every = read_heatmaps([tmp_path / "all.safetensors"])
    for method in ("ig", "latent_ig", "difference"):  # the last two after ig, which runs late in the job
        medxgan("explain", settings, models, inversion=latents, method=method, out=tmp_path / f"{method}.safetensors")
        assert torch.equal(read_heatmaps([tmp_path / f"{method}.safetensors"])[method], every[method]), method


def test_an_unknown_method_is_refused_before_any_is_explained(study, inversions, tmp_path):
    root, settings, models = study
    out = tmp_path / "heatmaps.safetensors"
    with pytest.raises(ConfigError, match=r"unknown explanation method 'lime'; known: difference, "):
        medxgan("explain", settings, models, inversion=inversions[0] / "latents.safetensors",
                method=["difference", "lime"], out=out)
    assert not out.exists()


def test_heatmap_files_that_overlap_or_hold_none_are_named(study, inversions, tmp_path):
    root, settings, models = study
    latents = inversions[0] / "latents.safetensors"
    for name, methods in (("first", ["difference", "ig"]), ("second", ["ig"])):
        medxgan("explain", settings, models, inversion=latents, method=methods, out=tmp_path / f"{name}.safetensors")
    with pytest.raises(InputFileError, match=r"second\.safetensors holds heatmaps of ig, which an earlier file holds too"):
        read_heatmaps([tmp_path / "first.safetensors", tmp_path / "second.safetensors"])
    with pytest.raises(InputFileError, match=r"latents\.safetensors holds no heatmaps"):
        read_heatmaps([latents])


def test_a_chunk_off_the_batch_grid_is_refused(study, tmp_path):
    root, settings, models = study
    with pytest.raises(ConfigError, match=r"inversion\.batch_size \(4\)"):
        medxgan("invert", settings, models, out_dir=tmp_path, chunk=(2, 6))
    assert not (tmp_path / "latents.safetensors").exists()


def test_gather_names_a_missing_or_misplaced_chunk(study, inversions, tmp_path):
    root, settings, models = study
    latents = inversions[0] / "latents.safetensors"
    chunks = [tmp_path / f"{start}-{stop}.safetensors" for start, stop in chunk_ranges(12, CHUNK)]
    for path, chunk in zip(chunks, chunk_ranges(12, CHUNK)):
        medxgan("explain", settings, models, inversion=latents, method="difference", out=path, chunk=chunk)
    out = tmp_path / "difference.safetensors"
    with pytest.raises(ShardError, match="end at image 8, not at the last one"):
        medxgan("gather-explanations", None, {}, chunks=chunks[:1], out=out)
    with pytest.raises(ShardError, match=re.escape(f"{chunks[1]} holds images 8:12 of 12, but the chunks before it end at image 0")):
        medxgan("gather-explanations", None, {}, chunks=chunks[::-1], out=out)
    with pytest.raises(ShardError, match="not one chunk"):
        medxgan("gather-explanations", None, {}, chunks=[latents], out=out)
    other = tmp_path / "other-8-12.safetensors"  # the second chunk with another method's heatmaps
    medxgan("explain", settings, models, inversion=latents, method="ig", out=other, chunk=(8, 12))
    with pytest.raises(ShardError, match=r'different methods: \["difference"\] and \["ig"\]'):
        medxgan("gather-explanations", None, {}, chunks=[chunks[0], other], out=out)
    assert not out.exists()


# --- The real workflow, sharded ---

TARGETS = ["results/synthetic-mri/explanations/heatmaps.safetensors", "results/synthetic-mri/inversion/inversion.csv"]
SHARDED = merge(TINY, {"defaults": {"inversion": {"init": "random", "batch_size": BATCH, "chunk_size": BATCH},
                                    "explain": {"methods": ["latent_ig"], "batch_size": BATCH, "chunk_size": BATCH}}})


def job_counts(output: str) -> dict[str, int]:
    """Rule name -> jobs, from the table Snakemake prints before it runs anything."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


@pytest.fixture
def sharded_workdir(tmp_path: Path) -> Path:
    """The project's config with the tiny settings, one dataset, and chunks of 4 of its 8 positive test images."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    config = merge(yaml.safe_load((tmp_path / "config" / "config.yaml").read_text()), SHARDED)
    config["datasets"] = {"synthetic-mri": config["datasets"]["synthetic-mri"]}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_workflow_reruns_only_the_failed_chunk_and_matches_one_job(sharded_workdir: Path):
    work = sharded_workdir
    trained = snakemake(work, "--cores", "2", "results/synthetic-mri/gan/generator.safetensors")
    assert trained.returncode == 0, trained.stderr[-3000:]

    # An image of the second chunk (positions 4-7) that cannot be read makes that chunk's job fail.
    settings = dataset_settings(load_config(work / "config" / "config.yaml"), "synthetic-mri")
    manifest = work / "data" / "synthetic-mri" / "manifest.csv"
    table = pd.read_csv(manifest)
    positives = table[(table.split == "test") & (table.label == settings["data"]["positive"])]
    broken = manifest.parent / positives.path.iloc[5]
    original = broken.read_bytes()
    broken.write_bytes(b"not an image")
    failed = snakemake(work, "--cores", "2", "--keep-going", *TARGETS)
    assert failed.returncode != 0
    assert "cannot read image" in (work / "results/synthetic-mri/logs/invert_4-8.log").read_text()
    assert (work / "results/synthetic-mri/inversion/chunks/0-4/latents.safetensors").is_file()

    broken.write_bytes(original)
    rerun = snakemake(work, "--cores", "2", *TARGETS)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    jobs = job_counts(rerun.stdout + rerun.stderr)
    assert jobs["invert_chunk"] == 1 and "invert_4-8" in rerun.stdout + rerun.stderr
    assert jobs["explain_chunk"] == 2 and "train_gan" not in jobs
    assert not (work / "results/synthetic-mri/inversion/chunks/0-4/latents.safetensors").exists()  # temporary

    # One unsharded job per step, on the models the workflow trained, writes the same bytes.
    results = work / "results" / "synthetic-mri"
    models = {"manifest": manifest, "classifier": results / "classifier/model.safetensors",
              "generator": results / "gan/generator.safetensors"}
    # with the job's thread count (the tuning's batched convolutions round by how they are split) and
    # precision (`auto` probes the machine's speed again, and under another load may pick otherwise)
    provenance = json.loads((results / "inversion/provenance.json").read_text())["provenance"]
    threads, settings = provenance["torch_threads"], {**settings, "precision": provenance["precision"]}
    medxgan("invert", settings, models, out_dir=work / "whole", threads=threads)
    for name in ("latents.safetensors", "inversion.csv"):
        assert (results / "inversion" / name).read_bytes() == (work / "whole" / name).read_bytes(), name
    medxgan("explain", settings, models, inversion=work / "whole/latents.safetensors",
            out=work / "whole/heatmaps.safetensors")
    assert (results / "explanations/heatmaps.safetensors").read_bytes() == \
        (work / "whole/heatmaps.safetensors").read_bytes()

    again = snakemake(work, "--cores", "2", "-n", *TARGETS)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_chunk_size_off_the_batch_grid_stops_the_workflow_before_it_runs(sharded_workdir: Path):
    config_file = sharded_workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["defaults"]["inversion"]["chunk_size"] = 6
    config_file.write_text(yaml.safe_dump(config))
    run = snakemake(sharded_workdir, "--cores", "1", "-n")
    assert run.returncode != 0
    assert "inversion.chunk_size (6) must be a multiple of inversion.batch_size (4)" in run.stdout + run.stderr
