"""A trained bundle is data someone sends you: every file is checked, nothing in it chooses code,
and `explain-images` checks its arguments before it computes anything."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medxgan.api import MedXGAN
from medxgan.artifacts import read_spec, save_model
from medxgan.bundle import CARD, CHECKSUMS, CLASSIFIER, SETTINGS, write_bundle
from medxgan.config import load_config, step_settings
from medxgan.nets.networks import build_classifier, build_generator
from medxgan.pipeline import cli

REPO = Path(__file__).resolve().parents[1]
LABELS = ["normal", "opacity"]


def _results(folder: Path, settings: dict) -> Path:
    """What the workflow leaves in results/DATASET for the bundle step: tiny untrained networks."""
    size, channels = settings["data"]["image_size"], settings["data"]["channels"]
    torch.manual_seed(0)
    save_model(build_classifier("simple_cnn", size, channels, 0.25), folder / "classifier" / "model.safetensors",
               {"kind": "classifier", "arch": "simple_cnn", "image_size": size, "channels": channels, "width": 0.25,
                "labels": LABELS})
    save_model(build_generator("masked", 4, 2, size, channels, 0.0625, "resize"), folder / "gan" / "generator.safetensors",
               {"kind": "generator", "nz1": 4, "nz2": 2, "image_size": size, "channels": channels, "width": 0.0625,
                "composition": "masked", "upsampling": "resize", "labels": LABELS})
    (folder / "classifier" / "metrics.json").write_text(json.dumps(
        {"val": {"n": 2}, "test": {"n": 2, "accuracy": 0.5, "auroc": None}}))
    (folder / "gan" / "summary.json").write_text(json.dumps(
        {"steps": 1, "disentanglement": {"negative_called_negative": 0.5, "positive_called_positive": 0.5},
         "provenance": {"medxgan": "test", "torch": torch.__version__, "processor": "cpu", "precision": "fp32"}}))
    return folder


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A bundle as the workflow's bundle step writes it, with an inversion and explanations short enough for a test."""
    settings = json.loads(step_settings(load_config(REPO / "config" / "config.yaml"), "synthetic-cxr",
                                        "data", "encoder", "inversion", "explain", "precision"))
    settings["inversion"].update(init="random", restarts=1, steps=2, positive_steps=2, batch_size=4)
    settings["inversion"]["tuning"]["steps"] = 2
    settings["explain"].update(latent_ig_steps=2, ig_steps=2, interpolation_points=2, batch_size=4)
    settings.update(device="cpu", precision="fp32")
    folder = tmp_path_factory.mktemp("written")
    write_bundle("synthetic-cxr", _results(folder / "results", settings), settings, folder / "bundle")
    return folder / "bundle"


@pytest.fixture
def bundle(written, tmp_path) -> Path:
    """A copy of the written bundle that a test may change."""
    return Path(shutil.copytree(written, tmp_path / "bundle"))


def resum(bundle: Path) -> None:
    """SHA256SUMS recomputed over the folder's files, as whoever edits a bundle can."""
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(bundle.iterdir())
            if p.name != CHECKSUMS]
    (bundle / CHECKSUMS).write_text("\n".join(sums) + "\n")


def edit_settings(bundle: Path, section: str | None, key: str, value) -> None:
    settings = json.loads((bundle / SETTINGS).read_text())
    (settings[section] if section else settings)[key] = value
    (bundle / SETTINGS).write_text(json.dumps(settings, indent=2))


def images(folder: Path, n: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(folder / f"scan{i}.png")
    return folder


def medxgan_error(capsys, *argv: str) -> str:
    """The one line on stderr of `medxgan ARGV`, which must exit 2."""
    code = cli.main(list(argv))
    stderr = capsys.readouterr().err.strip()
    assert code == 2, stderr
    assert stderr.startswith("medxgan: error: ") and "\n" not in stderr, stderr
    return stderr


# --- the bundle's files -------------------------------------------------------------------------

def test_a_written_bundle_loads_and_explains(written):
    explainer = MedXGAN.from_bundle(written, device="cpu")
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    assert explainer.attribute(x).shape == (2, 64, 64)


def test_the_timestamp_snakemake_leaves_in_a_bundle_folder_is_no_part_of_it(bundle):
    (bundle / ".snakemake_timestamp").touch()  # what Snakemake adds to the rule's directory output
    assert MedXGAN.from_bundle(bundle, device="cpu").settings["inversion"]["steps"] == 2


def test_a_bundle_checked_out_with_crlf_line_endings_is_the_same_bundle(bundle):
    for name in (SETTINGS, CARD, CHECKSUMS):  # what git on Windows makes of the text files
        (bundle / name).write_bytes((bundle / name).read_bytes().replace(b"\n", b"\r\n"))
    assert MedXGAN.from_bundle(bundle, device="cpu").settings["inversion"]["steps"] == 2


@pytest.mark.parametrize("change, message", [
    (lambda b: (b / CARD).write_text("# another card\n"), r"MODEL_CARD\.md changed since the bundle was written"),
    (lambda b: (b / CARD).unlink(), r"MODEL_CARD\.md listed in SHA256SUMS but missing"),
    (lambda b: (b / "notes.txt").write_text("hello"), r"notes\.txt not listed in SHA256SUMS"),
    (lambda b: (b / CHECKSUMS).unlink(), r"is not a medxgan bundle: it has no SHA256SUMS"),
    (lambda b: (b / CHECKSUMS).write_text((b / CHECKSUMS).read_text().replace("\n", "\n\n", 1)),
     r"SHA256SUMS line 2 is not 'SHA-256  FILE': ''"),
    (lambda b: (b / CHECKSUMS).write_text("".join(line for line in (b / CHECKSUMS).read_text().splitlines(True)
                                                  if SETTINGS not in line)),
     r"settings\.json not listed in SHA256SUMS"),
])
def test_a_bundle_with_a_missing_changed_or_unlisted_file_is_refused(bundle, change, message):
    change(bundle)
    with pytest.raises(ValueError, match=message):
        MedXGAN.from_bundle(bundle, device="cpu")


def test_a_bundle_that_lists_a_file_of_its_own_choosing_is_refused(bundle):
    (bundle / "evilmod.py").write_text("raise SystemExit(0)\n")
    resum(bundle)
    with pytest.raises(ValueError, match=r"evilmod\.py listed in SHA256SUMS, no file of a medxgan bundle"):
        MedXGAN.from_bundle(bundle, device="cpu")


@pytest.mark.parametrize("section, key, value, message", [
    ("inversion", "steps", -5, r"settings\.json: invalid settings: inversion\.steps: -5 is less than the minimum of 1"),
    ("inversion", "mse_weight", -1000, r"inversion\.mse_weight: -1000 is less than the minimum of 0"),
    (None, "seed", "abc", r"seed: 'abc' is not of type 'integer'"),
    ("explain", "ig_steps", 0, r"explain\.ig_steps: 0 is less than the minimum of 1"),
    ("inversion", "restarts", None, r"inversion\.restarts: None is not of type 'integer'"),
    ("data", "image_size", 128, r"classifier\.safetensors: a classifier for 64-px images, this run's data\.image_size "
                                r"is 128"),
])
def test_a_bundles_settings_are_checked_before_use(bundle, section, key, value, message):
    edit_settings(bundle, section, key, value)
    resum(bundle)
    with pytest.raises(ValueError, match=message):
        MedXGAN.from_bundle(bundle, device="cpu")


def test_a_bundle_without_a_section_it_needs_is_refused(bundle):
    settings = json.loads((bundle / SETTINGS).read_text())
    del settings["explain"]
    (bundle / SETTINGS).write_text(json.dumps(settings))
    resum(bundle)
    with pytest.raises(ValueError, match=r"settings\.json: invalid settings: .*'explain' is a required property"):
        MedXGAN.from_bundle(bundle, device="cpu")


def test_a_bundle_whose_settings_need_an_encoder_it_lacks_is_refused(bundle):
    edit_settings(bundle, "inversion", "init", "encoder")
    resum(bundle)
    with pytest.raises(ValueError, match=r"its settings start the inversion from an encoder, and it holds no "
                                         r"encoder\.safetensors"):
        MedXGAN.from_bundle(bundle, device="cpu")


@pytest.mark.parametrize("spec, message", [
    ({"arch": "evilmod:f"}, r"its spec's 'arch' is 'evilmod:f', none of the project's classifiers \(simple_cnn, "),
    ({"kind": "pickle"}, r"classifier\.safetensors holds a pickle, not a classifier"),
])
def test_a_network_spec_outside_the_projects_tables_is_refused(bundle, spec, message):
    save_model(torch.nn.Linear(1, 2), bundle / CLASSIFIER, {**read_spec(bundle / CLASSIFIER), **spec})
    resum(bundle)
    with pytest.raises(ValueError, match=message):
        MedXGAN.from_bundle(bundle, device="cpu")


@pytest.mark.parametrize("arch", ["evilmod:f", "sys:exit"])
def test_a_bundle_naming_code_to_import_is_refused_without_running_it(bundle, arch):
    # The bundle's classifier spec names a module:function, the module lying where it runs from
    # (python -m puts the working directory first on sys.path).
    spec = {**read_spec(bundle / CLASSIFIER), "kind": "user_classifier", "format": "state_dict", "arch": arch,
            "outputs": 2, "input": {"range": [-1, 1], "size": 64, "channels": 1, "mean": None, "std": None},
            "positive_index": 1, "target_layer": None, "source": "elsewhere.pt", "sha256": "0" * 64}
    save_model(torch.nn.Linear(1, 2), bundle / CLASSIFIER, spec)
    resum(bundle)
    marker = bundle.parent / "imported"
    (bundle.parent / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f():\n    raise SystemExit(0)\n")
    run = subprocess.run([sys.executable, "-m", "medxgan.pipeline.cli", "explain-images", str(images(bundle.parent / "in")),
                          "--bundle", str(bundle), "--out", str(bundle.parent / "out")],
                         cwd=bundle.parent, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and not marker.exists(), run.stderr
    assert run.stderr.strip().splitlines() == [
        f"medxgan: error: {bundle / CLASSIFIER}: its spec's 'arch' names code to import ({arch!r}), which a file from "
        f"elsewhere, such as a bundle, may not do: if you trust {arch}, name it yourself (explain-images "
        f"--classifier-factory {arch}; MedXGAN.from_bundle(..., classifier_factory={arch!r}))"]


def test_a_bundles_refusal_is_one_line_from_the_command_line(bundle, tmp_path, capsys):
    edit_settings(bundle, "inversion", "steps", -5)
    resum(bundle)
    error = medxgan_error(capsys, "explain-images", str(images(tmp_path / "in")), "--bundle", str(bundle),
                          "--out", str(tmp_path / "out"))
    assert "inversion.steps: -5 is less than the minimum of 1" in error
    assert not (tmp_path / "out").exists()


# --- explain-images' arguments ------------------------------------------------------------------

def test_explain_images_writes_a_figure_heatmaps_and_a_row_per_image(written, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is as good as a new one
    run = subprocess.run([str(Path(sys.executable).parent / "medxgan"), "explain-images", str(images(tmp_path / "in", 2)),
                          "--bundle", str(written), "--out", str(out), "--methods", "latent_ig", "ig"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert len((out / "explanations.csv").read_text().splitlines()) == 3
    for name in ("0000_scan0", "0001_scan1"):
        assert (out / "figures" / f"{name}.png").is_file()
        assert np.load(out / "heatmaps" / f"{name}_ig.npy").shape == (64, 64)


READ = ".bmp, .dcm, .dicom, .jpeg, .jpg, .nii, .nii.gz, .png, .tif, .tiff"  # pictures, DICOM, NIfTI


@pytest.mark.parametrize("files, found", [
    (["a.mha", "b.mha", "c.gif"], "found 3 files (1 .gif, 2 .mha)"),  # MetaImage, an animation
    ([], "found no files"),
])
def test_a_folder_without_images_it_reads_is_an_error(written, tmp_path, capsys, files, found):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"\0" * 16)
    error = medxgan_error(capsys, "explain-images", str(folder), "--bundle", str(written), "--out", str(tmp_path / "out"))
    assert f"no image files to explain in {folder}: {found}; explain-images reads {READ}" in error
    assert not (tmp_path / "out").exists()


def test_a_file_given_in_a_format_it_does_not_read_is_an_error(written, tmp_path, capsys):
    scan = tmp_path / "scan.mha"
    scan.write_bytes(b"\0" * 16)
    error = medxgan_error(capsys, "explain-images", str(images(tmp_path / "in")), str(scan), "--bundle", str(written),
                          "--out", str(tmp_path / "out"))
    assert error.endswith(f"{scan}: explain-images reads {READ}, not .mha")


def test_out_must_be_a_new_or_empty_folder_outside_the_images(written, tmp_path, capsys):
    folder = images(tmp_path / "in")
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    used = tmp_path / "used"
    (used / "figures").mkdir(parents=True)
    for out, message in [(taken, f"--out {taken} is a file, not a folder"),
                         (used, f"--out {used} already holds files: give a new or empty folder"),
                         (folder / "explained", f"--out {folder / 'explained'} lies inside the images to explain "
                                                f"({folder})")]:
        assert message in medxgan_error(capsys, "explain-images", str(folder), "--bundle", str(written), "--out", str(out))
    assert taken.read_text() == "mine" and not (folder / "explained").exists()


def test_an_unknown_method_is_refused_before_anything_is_computed(written, tmp_path, capsys):
    error = medxgan_error(capsys, "explain-images", str(images(tmp_path / "in")), "--bundle", str(written),
                          "--out", str(tmp_path / "out"), "--methods", "latent_ig", "bogus")
    assert "unknown methods bogus: choose from difference, " in error
    assert not (tmp_path / "out").exists()


def test_a_missing_image_path_is_named(written, tmp_path, capsys):
    error = medxgan_error(capsys, "explain-images", str(tmp_path / "nowhere"), "--bundle", str(written),
                          "--out", str(tmp_path / "out"))
    assert f"{tmp_path / 'nowhere'}" in error


def test_the_debug_flag_shows_the_traceback(written, tmp_path):
    with pytest.raises(ValueError, match="already holds files"):
        cli.main(["--debug", "explain-images", str(images(tmp_path / "in")), "--bundle", str(written),
                  "--out", str(tmp_path)])



# --- medical formats and folders --------------------------------------------------------------

def test_a_folder_of_dicom_files_and_a_nifti_volume_give_a_row_per_file_and_slice(written, tmp_path):
    from test_medical_formats import ramp, write_dicom, write_nifti

    folder = tmp_path / "in"
    (folder / "series").mkdir(parents=True)
    for i in range(2):
        write_dicom(folder / "series" / f"IM{i}.dcm", ramp() + 100 * i)
    volume = np.random.default_rng(0).normal(size=(32, 32, 5))
    write_nifti(folder / "brain.nii.gz", volume)
    out = tmp_path / "out"
    assert cli.main(["explain-images", str(folder), "--bundle", str(written), "--out", str(out), "--methods",
                     "difference", "--slices", "1:4"]) == 0
    table = pd.read_csv(out / "explanations.csv")
    assert list(table.file) == [f"{folder / 'brain.nii.gz'}#slice={k}" for k in (1, 2, 3)] + \
        [str(folder / "series" / f"IM{i}.dcm") for i in range(2)]
    assert list(table.name) == ["0000_brain_slice001", "0001_brain_slice002", "0002_brain_slice003",
                                "0003_IM0", "0004_IM1"]
    assert all((out / "figures" / f"{name}.png").is_file() for name in table.name)


def test_volume_slices_share_one_window_and_follow_the_axis(tmp_path):
    from medxgan.data.medical_formats import nifti_slices
    from test_medical_formats import write_nifti

    volume = np.zeros((32, 32, 3))
    volume[..., 1] = 10.0  # the middle slice is the brightest of the volume
    slices = nifti_slices(write_nifti(tmp_path / "v.nii", volume), axis=2)
    assert [k for k, _ in slices] == [0, 1, 2]
    assert slices[1][1].min() == 1.0 and slices[0][1].max() == 0.0  # one window: slice 0 stays black
    assert [k for k, _ in nifti_slices(tmp_path / "v.nii", axis=0, slices=slice(30, None))] == [30, 31]


def test_images_in_a_symlinked_subfolder_are_found(tmp_path):
    from medxgan.pipeline.explain_images import image_files

    images(tmp_path / "elsewhere", n=2)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "in")  # a link loop ends
    assert sorted(p.name for p in image_files([tmp_path / "in"])) == ["scan0.png", "scan1.png"]


@pytest.mark.parametrize("worst_test_mse, flagged", [(1e-6, True), (100.0, False)])
def test_an_image_g_cannot_draw_is_flagged_against_the_bundles_own_test_images(written, tmp_path, caplog,
                                                                                 worst_test_mse, flagged):
    settings = json.loads((written / SETTINGS).read_text())
    results = _results(tmp_path / "results", settings)
    (results / "inversion").mkdir()
    pd.DataFrame({"mse": [worst_test_mse / 2, worst_test_mse], "ssim": [0.5, 0.5]}).to_csv(
        results / "inversion" / "inversion.csv", index=False)
    write_bundle("synthetic-cxr", results, settings, tmp_path / "bundle")
    assert MedXGAN.from_bundle(tmp_path / "bundle", device="cpu").reference["max"] == worst_test_mse
    out = tmp_path / "out"
    assert cli.main(["explain-images", str(images(tmp_path / "in")), "--bundle", str(tmp_path / "bundle"),
                     "--out", str(out), "--methods", "difference"]) == 0
    assert pd.read_csv(out / "explanations.csv").outside_bundle_distribution.tolist() == [flagged]
    assert ("G cannot draw them" in caplog.text) == flagged


def test_a_bundle_without_its_reference_still_explains_and_says_what_it_cannot_flag(written, tmp_path, caplog):
    out = tmp_path / "out"
    assert cli.main(["explain-images", str(images(tmp_path / "in")), "--bundle", str(written), "--out", str(out),
                     "--methods", "difference"]) == 0
    assert pd.read_csv(out / "explanations.csv").outside_bundle_distribution.isna().all()
    assert "images outside its distribution are not flagged" in caplog.text
