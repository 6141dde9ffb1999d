"""End to end: the real Snakefile, run by the real snakemake, on tiny configurations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import pytest
from PIL import Image
from workflow_runs import snakemake

from medxgan import names as methods
from medxgan.config import user_dataset_name
from medxgan.data.phantoms import write_phantom_dataset


def test_default_dag_on_both_synthetic_datasets(workdir: Path, tmp_path_factory):
    run = snakemake(workdir, "--cores", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    for dataset in ("synthetic-cxr", "synthetic-mri"):
        root = workdir / "results" / dataset
        for name in ("classifier/model.safetensors", "gan/generator.safetensors", "gan/losses.png", "figures/inversion.png",
                     "inversion/latents.safetensors", "figures/pipeline.png", "figures/interpolation.png",
                     "figures/metrics.png", "figures/curves.png", "figures/disentanglement.png",
                     "figures/perturbation.png", "checks/sanity.png", "checks/robustness.png",
                     "logs/train_gan.log", "logs/check.log", "oracle/model.safetensors"):
            assert (root / name).stat().st_size > 0, name
        metrics = pd.read_csv(root / "metrics.csv")
        assert {"difference", "latent_ig", "gradcam", "ig", "random", "medxgan inversion"} <= set(metrics.method)
        assert {"pointing_game", "mass_in_lesion", "mask_auroc", "relevance_rank_accuracy", "deletion_auc",
                "reconstruction_ssim", "oracle_reconstruction_called_positive", "oracle_negative_called_negative",
                "reconstruction_mse_in_lesion", "lesion_area_share"} <= set(metrics.metric)
        # the phantoms' healthy twins reach the evaluation: every method is scored against them
        twin_scores = metrics[metrics.metric.isin(["twin_difference_spearman", "twin_difference_mass"])]
        assert set(twin_scores.method) == set(metrics.method) - {"medxgan inversion"}
        assert {"negative_twin_mse_in_lesion", "negative_twin_mse_outside_lesion"} <= set(metrics.metric)
        assert {"ci_low", "ci_high"} <= set(metrics.columns)
        assert (root / "metrics_comparisons.csv").stat().st_size > 0
        curves = pd.read_csv(root / "metrics_curves.csv")
        assert set(curves.curve) == {"deletion", "insertion"} and curves.p_positive.between(0, 1).all()
        classifier = json.loads((root / "classifier" / "metrics.json").read_text())
        assert classifier["test"]["n"] == 16 and "torch" in classifier["provenance"]
        assert classifier["provenance"]["torch_threads"] == 1  # two datasets share the 2 cores side by side
        assert classifier["provenance"]["precision"] in ("fp32", "bf16")  # what `auto` chose, recorded
    summary = (workdir / "results" / "summary.md").read_text()
    assert "## synthetic-mri" in summary and "Spearman after randomising all of C" in summary
    families = pd.read_csv(workdir / "results" / "summary.csv").groupby("dataset").family.first()
    assert families.to_dict() == {"synthetic-cxr": "chest_xray", "synthetic-mri": "brain_mri"}
    for notebook, dataset in (("chest_xray", "synthetic-cxr"), ("brain_mri", "synthetic-mri"),
                              ("method_walkthrough", "synthetic-mri")):  # executed without error, rendered to HTML
        html = (workdir / "results" / "notebooks" / f"{notebook}.html").read_text()
        assert "<html" in html[:2000].lower() and dataset in html
        assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html, f"{notebook}: a warning box"

    jobs = pd.read_csv(workdir / "results" / "benchmarks.csv")  # every job's Snakemake benchmark file
    expected = {"prepare", "check_manifest", "train_classifier", "train_oracle", "train_gan", "train_encoder", "invert",
                "explain", "evaluate", "figures", "check", "bundle"}
    for dataset in ("synthetic-cxr", "synthetic-mri"):
        assert set(jobs[jobs.dataset == dataset].job) == expected
    assert {"summarize", "notebook_chest_xray"} <= set(jobs.job)
    assert (jobs.seconds > 0).all() and (jobs.max_rss_mb > 0).all()
    assert (workdir / "results" / "benchmarks.png").stat().st_size > 0

    again = snakemake(workdir, "--cores", "2", "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    own_manifest_beside_the_built_in_run(workdir, tmp_path_factory.mktemp("own") / "my scäns")

    for dataset in ("synthetic-cxr", "synthetic-mri"):
        root = workdir / "results" / dataset / "checks"
        sanity = pd.read_csv(root / "sanity.csv")
        assert set(sanity.method) == set(methods.READ_C_DIRECTLY) and sanity.step.max() >= 3
        robustness = pd.read_csv(root / "robustness.csv")
        assert {"spearman", "ssim", "max_sensitivity"} <= set(robustness.metric)
        assert set(robustness.method) == set(methods.USES_G + methods.PIXEL_SPACE)
        counterfactual = pd.read_csv(root / "counterfactual.csv").set_index("metric")["mean"]
        assert 0 <= counterfactual["proximity_ssim"] <= 1 and counterfactual.notna().all()
        assert 0 <= counterfactual["validity"] <= 1

    explain_new_images_with_the_bundle(workdir, workdir / "results" / "synthetic-cxr" / "bundle")

    # The ablation target on the same run: the variant without overrides, with the run's seed, is the
    # main run again (a masked G whose inversion starts from its encoder); the other trains a plain G
    # and starts its inversion at random.
    ablation = snakemake(workdir, "--cores", "2", "ablation")
    assert ablation.returncode == 0, ablation.stderr[-3000:]
    table = pd.read_csv(workdir / "results" / "ablation.csv")
    assert set(table.variant) == {"main", "plain-random", "(C only)"}
    timed = table[table.metric.str.endswith("_seconds")].groupby("variant").metric.apply(set)
    assert timed["main"] == {"invert_seconds", "train_encoder_seconds"}
    assert timed["plain-random"] == {"invert_seconds"}
    assert set(table[table.variant == "(C only)"].method) == set(methods.PIXEL_SPACE) | {"random"}
    for dataset in ("synthetic-cxr", "synthetic-mri"):
        main = pd.read_csv(workdir / "results" / dataset / "metrics.csv").set_index(["method", "metric"])["mean"]
        paper = table[(table.dataset == dataset) & (table.variant == "main")].set_index(["method", "metric"]).value
        assert paper.loc[("difference", "pointing_game")] == main.loc[("difference", "pointing_game")]
        assert paper.loc[("medxgan inversion", "reconstruction_ssim")] == main.loc[("medxgan inversion", "reconstruction_ssim")]
    assert "## synthetic-mri" in (workdir / "results" / "ablation.md").read_text()
    assert (workdir / "results" / "ablation.png").stat().st_size > 0

    report = snakemake(workdir, "--report", "report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (workdir / "report.html").read_text()
    # captioned figures, grouped by dataset (the report's categories)
    for label in ("pipeline rows", "deletion and insertion curves", "sanity check", "noise robustness", "GAN losses",
                  "job times"):
        assert label in html, label
    assert "synthetic-cxr" in html and "synthetic-mri" in html


def own_manifest_beside_the_built_in_run(workdir: Path, folder: Path) -> None:
    """A run on a user's manifest, in a folder whose name has a space and a non-ASCII letter, after
    the built-in run: its results, summary and notebooks go under its own name, the built-in run's
    stay as they were (that run is still a no-op), and a replaced image reruns the user's steps."""
    manifest = write_phantom_dataset("synthetic-mri", folder, 64, {"train": 48, "val": 16, "test": 16}, 0.5, seed=5)
    shared = [workdir / "results" / name for name in ("summary.md", "summary.csv", "benchmarks.csv")]
    shared += sorted((workdir / "results" / "notebooks").glob("*.html"))
    before = {path: path.stat().st_mtime_ns for path in shared}
    user = ["--config", f"manifest={manifest}", "negative=no_tumor", "positive=tumor", "family=brain_mri"]
    run = snakemake(workdir, "--cores", "2", *user)
    assert run.returncode == 0, run.stderr[-3000:]
    name = user_dataset_name(manifest)
    assert name.startswith("my scäns-")
    results = workdir / "results" / name
    assert (results / "metrics.csv").is_file()
    gan = json.loads((results / "gan" / "summary.json").read_text())
    assert gan["provenance"]["torch_threads"] == 2  # one dataset: its jobs get every core
    assert name in (results / "notebooks" / "brain_mri.html").read_text()  # the family it was given
    assert not (results / "notebooks" / "chest_xray.html").exists()
    assert list(pd.read_csv(results / "summary.csv").dataset.unique()) == [name]
    assert {path: path.stat().st_mtime_ns for path in shared} == before
    built_in = snakemake(workdir, "--cores", "2", "-n")
    assert built_in.returncode == 0 and "Nothing to be done" in built_in.stdout + built_in.stderr

    image = sorted((folder / "images").glob("*.png"))[0]
    pixels = np.asarray(Image.open(image))
    Image.fromarray(255 - pixels).save(image)  # the same file name, other content
    replanned = snakemake(workdir, "--cores", "2", "-n", *user)
    assert replanned.returncode == 0, replanned.stderr[-3000:]
    for rule in ("check_manifest", "train_classifier", "train_gan", "invert", "summarize"):
        assert f"rule {rule}:" in replanned.stdout, rule


def test_a_bom_encoded_manifest_still_tracks_its_images(workdir: Path, tmp_path: Path):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark: the images must still be inputs
    of the manifest check, or a replaced image would rerun nothing."""
    manifest = write_phantom_dataset("synthetic-mri", tmp_path / "scans", 64, {"train": 8, "val": 4, "test": 4},
                                     0.5, seed=5)
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    image = sorted((manifest.parent / "images").glob("*.png"))[0]
    plan = snakemake(workdir, "-n", "--until", "check_manifest", "--config", f"manifest={manifest}",
                     "negative=no_tumor", "positive=tumor")
    assert plan.returncode == 0, plan.stderr[-3000:]
    check = plan.stdout[plan.stdout.index("rule check_manifest:"):]
    assert str(image) in check[:check.index("output:")]  # the image itself, not its mask of the same name


def test_a_manifest_of_volume_slices_tracks_each_volume(workdir: Path, tmp_path: Path):
    """Rows naming VOLUME.nii.gz#slice=K read the volume: it must be an input of the manifest check."""
    nibabel = pytest.importorskip("nibabel")
    for name in ("a", "b"):
        nibabel.save(nibabel.Nifti1Image(np.ones((32, 32, 4), dtype=np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split,mask_path,patient_id\n"
                        + "".join(f"{name}.nii.gz#slice={k},{label},test,,{name}\n"
                                  for name in ("a", "b") for k, label in ((0, "normal"), (1, "sick"))))
    plan = snakemake(workdir, "-n", "--until", "check_manifest", "--config", f"manifest={manifest}",
                     "negative=normal", "positive=sick")
    assert plan.returncode == 0, plan.stderr[-3000:]
    check = plan.stdout[plan.stdout.index("rule check_manifest:"):]
    inputs = check[:check.index("output:")]
    assert str(tmp_path / "a.nii.gz") in inputs and str(tmp_path / "b.nii.gz") in inputs


def test_paper_configuration_plans_every_source_without_downloading(workdir: Path):
    result = snakemake(workdir, "-n", "--configfile", "config/paper.yaml")
    assert result.returncode == 0, result.stderr
    sources = ("brain-sartaj", "brain-figshare", "covid-qu-ex", "covid-radiography")
    for name in sources:
        assert f"data/{name}/SOURCE.json" in result.stdout
        assert f"results/{name}/checks/sanity.png" in result.stdout
    assert "data/weights/vgg16-397923af.pth" in result.stdout  # the COVID classifiers' ImageNet start
    assert not (workdir / "data").exists()


def test_config_value_of_wrong_type_names_the_key(workdir: Path):
    run = snakemake(workdir, "--cores", "1", "-n", "--config", "seed=abc")
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "seed" in output and "'abc' is not of type 'integer'" in output


def test_own_manifest_with_unknown_label_names_the_row(workdir: Path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad") / "scans"
    manifest = write_phantom_dataset("synthetic-mri", folder, 64, {"train": 8, "val": 4, "test": 4}, 0.5, seed=1)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table.loc[2, "label"] = "glioma"
    table.to_csv(manifest, index=False)
    run = snakemake(workdir, "--cores", "1", "--config", f"manifest={manifest}", "negative=no_tumor", "positive=tumor")
    assert run.returncode != 0
    # the first job to read the manifest fails: the manifest check, before any training
    logs = workdir / "results" / user_dataset_name(manifest) / "logs"
    log = (logs / "check_manifest.log").read_text()
    assert "line 4" in log and "glioma" in log
    assert not list(logs.glob("train_*.log"))


def explain_new_images_with_the_bundle(workdir: Path, bundle: Path) -> None:
    """`medxgan explain-images` on JPEGs and PNGs of mixed sizes, grey and RGB, and one corrupt file;
    then the Python API on the same bundle."""
    from PIL import Image

    from medxgan.api import MedXGAN

    images = workdir / "new-images"
    (images / "more").mkdir(parents=True)
    source = sorted((workdir / "data" / "synthetic-cxr" / "images").glob("*.png"))[:3]
    Image.open(source[0]).convert("L").resize((100, 80)).save(images / "grey.jpg")
    Image.open(source[1]).convert("RGB").resize((48, 48)).save(images / "more" / "rgb.jpg")
    Image.open(source[2]).save(images / "more" / "grey.png")
    (images / "corrupt.jpg").write_bytes(b"not a JPEG")
    out = workdir / "explained"
    run = subprocess.run([str(Path(sys.executable).parent / "medxgan"), "explain-images", str(images), "--bundle",
                          str(bundle), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "corrupt.jpg" in run.stderr and "1 of 4 files" in run.stderr
    table = pd.read_csv(out / "explanations.csv")
    assert sorted(Path(f).name for f in table.file) == ["grey.jpg", "grey.png", "rgb.jpg"]
    assert table.p_positive.between(0, 1).all() and (table.reconstruction_mse > 0).all()
    assert table.outside_bundle_distribution.dtype == bool  # judged against the bundle's reference.json
    for row in table.itertuples():
        assert (out / "figures" / f"{row.name}.png").stat().st_size > 0
        assert np.load(out / "heatmaps" / f"{row.name}_latent_ig.npy").shape == (64, 64)
        # an image C calls negative gets its positive realisation too
        assert (out / "figures" / f"{row.name}_positive_realisation.png").exists() == (not row.called_positive)
        assert pd.isna(row.p_positive_realisation) == row.called_positive
    explainer = MedXGAN.from_bundle(bundle)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    assert explainer.attribute(x, target=1).shape == (2, 64, 64)
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "synthetic-cxr" in card and "accuracy" in card
    (bundle / "settings.json").write_text("{}")  # a tampered bundle is refused
    with pytest.raises(ValueError, match="settings.json changed since the bundle was written"):
        MedXGAN.from_bundle(bundle)

