"""Each public source, downloaded from a loopback server that serves tiny archives in the source's
real layout, then prepared into a manifest; an ImageFolder import; and the DAG on a prepared source."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from medxgan.pipeline import cli
from medxgan.config import SOURCE_DEFAULTS, merge
from medxgan.data import sources
from medxgan.data.download import DataSourceError
from medxgan.data.manifest import load_split, read_manifest
from loopback import LoopbackServer, md5, sha256, zip_bytes
from workflow_runs import SNAKEMAKE, TINY  # the end-to-end test's runner and tiny settings

REPO = Path(__file__).resolve().parents[1]
SARTAJ_REPO = "sartajbhuvaji/Brain-Tumor-Classification"
SARTAJ_CLASSES = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
IMAGE_SIZE = 64


def picture(seed: int, size=(48, 40), mode="RGB") -> Image.Image:
    """A smooth random picture: distinct seeds give perceptually distinct images."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6), dtype=np.uint8)
    grey = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    return grey.convert(mode)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def settings(name: str, image_size: int = IMAGE_SIZE, channels: int = 1, negative="no", positive="yes", **source):
    return {"data": {"image_size": image_size, "channels": channels, "negative": negative, "positive": positive},
            "source": {**SOURCE_DEFAULTS, "name": name, **source}, "seed": 0}


# --- brain-sartaj: Training.zip and Testing.zip on a Hugging Face stand-in ------------------

def sartaj_archives(per_class: int = 6, per_test_class: int = 3) -> tuple[dict[str, bytes], dict]:
    """Training/Testing class folders of JPGs, with the real set's flaws: two Testing/no_tumor files
    byte-identical to Training ones, a byte-identical pair inside Training/glioma_tumor, and one
    Testing/no_tumor image that is a re-encoded, slightly brightened Training image."""
    seed, training, testing = 0, {}, {}
    for c, name in enumerate(SARTAJ_CLASSES):
        for i in range(per_class):
            training[f"Training/{name}/{name[0]}{i}.jpg"] = encoded(picture(seed := seed + 1), "JPEG")
        for i in range(per_test_class):
            testing[f"Testing/{name}/image({i}).jpg"] = encoded(picture(seed := seed + 1), "JPEG")
    training["Training/glioma_tumor/g_copy.jpg"] = training["Training/glioma_tumor/g0.jpg"]
    testing["Testing/no_tumor/image(0).jpg"] = training["Training/no_tumor/n0.jpg"]
    testing["Testing/no_tumor/image(1).jpg"] = training["Training/no_tumor/n1.jpg"]
    brighter = Image.eval(Image.open(io.BytesIO(training["Training/no_tumor/n2.jpg"])), lambda v: min(v + 3, 255))
    testing["Testing/no_tumor/image(2).jpg"] = encoded(brighter, "JPEG")
    expected = {"exact_duplicates": 3, "near_duplicates": 1, "across_splits": 3}
    return {"Training.zip": zip_bytes(training), "Testing.zip": zip_bytes(testing)}, expected


def serve_huggingface(server: LoopbackServer, repo: str, files: dict[str, bytes]) -> None:
    server.serve_json(f"/api/datasets/{repo}/tree/main", [
        {"type": "file", "path": name, "size": len(data), "oid": "0" * 40,
         "lfs": {"oid": sha256(data), "size": len(data), "pointerSize": 134}} for name, data in files.items()])
    for name, data in files.items():
        server.files[f"/datasets/{repo}/resolve/main/{name}"] = data


def sartaj_settings(server: LoopbackServer) -> dict:
    return settings("brain-sartaj", channels=3, negative="no_tumor", positive="tumor", routes=["huggingface"],
                    urls={"huggingface": server.url})


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def test_brain_sartaj_is_fetched_checked_deduplicated_and_prepared(server, tmp_path):
    archives, expected = sartaj_archives()
    serve_huggingface(server, SARTAJ_REPO, archives)
    out = tmp_path / "brain-sartaj"
    sources.download(sartaj_settings(server), out)
    record = json.loads((out / "SOURCE.json").read_text())
    assert record["route"] == "huggingface" and record["version"] == "main"
    assert {(f["path"], f["hash"], f["checked_against"]) for f in record["files"]} == {
        (f"downloads/huggingface/{name}", sha256(data), "host metadata") for name, data in archives.items()}
    assert all(f["retrieved"] and f["size"] > 0 for f in record["files"])

    manifest = sources.prepare(sartaj_settings(server), out)
    report = json.loads((out / "preparation.json").read_text())
    assert {key: report["duplicates"][key] for key in expected} == expected
    dropped = pd.read_csv(out / "dropped.csv")
    assert sorted(dropped.reason) == ["exact duplicate"] * 3 + ["near duplicate"]
    assert dropped.detail.str.contains("perceptual hash distance").all()
    table = read_manifest(manifest, "no_tumor", "tumor")
    assert len(table) == 4 * 6 + 4 * 3 + 1 - 4 and set(table.split) == {"train", "val", "test"}
    assert (table.split == "test").sum() == 12  # the Testing copies were kept, the Training ones dropped
    assert report["counts"]["test"] == {"no_tumor": 3, "tumor": 9} and 0 < report["positive_share"]["train"] < 1
    images = load_split(manifest, "train", "no_tumor", "tumor", IMAGE_SIZE, 3)
    assert images.images.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert Image.open(out / table.path[0]).size == (IMAGE_SIZE, IMAGE_SIZE)


def test_the_split_is_fixed_by_the_seed(server, tmp_path):
    archives, _ = sartaj_archives()
    serve_huggingface(server, SARTAJ_REPO, archives)
    splits = []
    for seed in (0, 0, 1):
        out = tmp_path / f"run-{len(splits)}" / "brain-sartaj"
        sources.prepare({**sartaj_settings(server), "seed": seed}, out)
        splits.append(pd.read_csv(out / "manifest.csv").sort_values("path").split.tolist())
    assert splits[0] == splits[1] and splits[0] != splits[2]


@pytest.mark.parametrize("flaw", ["wrong checksum", "truncated", "missing class folder", "escaping entry"])
def test_a_flawed_download_leaves_no_prepared_output(server, tmp_path, flaw):
    archives, _ = sartaj_archives()
    if flaw == "missing class folder":
        archives["Testing.zip"] = zip_bytes({f"Testing/{c}/a.jpg": encoded(picture(99), "JPEG")
                                            for c in SARTAJ_CLASSES if c != "pituitary_tumor"})
    if flaw == "escaping entry":
        archives["Testing.zip"] = zip_bytes({"Testing/no_tumor/../../../../escaped.jpg": b"x"})
    serve_huggingface(server, SARTAJ_REPO, archives)
    if flaw == "wrong checksum":
        server.files[f"/datasets/{SARTAJ_REPO}/resolve/main/Testing.zip"] = archives["Training.zip"]
    if flaw == "truncated":
        server.files[f"/datasets/{SARTAJ_REPO}/resolve/main/Testing.zip"] = archives["Testing.zip"][:-100]
    message = {"wrong checksum": "Testing.zip: (file is too long|checksum mismatch)",
               "truncated": "Testing.zip: file is truncated",
               "missing class folder": "Testing: class folder 'pituitary_tumor' not found",
               "escaping entry": "would land outside the target folder"}[flaw]
    out = tmp_path / "brain-sartaj"
    with pytest.raises(DataSourceError, match=message):
        sources.prepare(sartaj_settings(server), out)
    assert not (out / "manifest.csv").exists() and not (out / "images").exists()
    assert not list(out.glob(".building-*")) and not (tmp_path / "escaped.jpg").exists()


def test_the_command_line_names_the_problem_in_one_line(server, tmp_path, capsys, caplog):
    archives, _ = sartaj_archives()
    serve_huggingface(server, SARTAJ_REPO, archives)
    server.files[f"/datasets/{SARTAJ_REPO}/resolve/main/Training.zip"] = b"not the archive"
    code = cli.main(["prepare", "--settings", json.dumps(sartaj_settings(server)), "--out-dir", str(tmp_path / "b")])
    last_line = capsys.readouterr().err.splitlines()[-1]  # after the download's progress bar
    assert code == 2 and last_line.startswith("medxgan: error: ") and "Training.zip: file is truncated" in last_line
    assert not (tmp_path / "b" / "manifest.csv").exists()


# --- brain-figshare: the figshare API, HDF5 .mat slices in inner zips -------------------------

def mat_slice(label: int, patient: str, seed: int, side: int = 32) -> bytes:
    """One slice in Cheng et al.'s MATLAB v7.3 layout (HDF5 behind a 512-byte MATLAB header)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 200, (side, side)).astype(np.int16)
    mask = np.zeros((side, side), dtype=np.uint8)
    mask[8:16, 10:20] = 1
    image[mask.astype(bool)] += 600  # the tumour is bright
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=512) as mat:
        group = mat.create_group("cjdata")
        group["label"] = np.array([[float(label)]])
        group["PID"] = np.array([[ord(c)] for c in patient], dtype=np.uint16)
        group["image"] = image.T  # MATLAB stores column-major
        group["tumorMask"] = mask.T
        group["tumorBorder"] = np.array([[10.0, 8.0, 20.0, 16.0]])
    data = bytearray(buffer.getvalue())
    data[:18] = b"MATLAB 7.3 MAT-file"[:18]
    return bytes(data)


def serve_figshare(server: LoopbackServer, patients: int = 8, slices: int = 2) -> dict[str, bytes]:
    mats = {f"{i + 1}.mat": mat_slice(1 + (i // slices) % 3, f"P{i // slices:03d}", i) for i in range(patients * slices)}
    names = sorted(mats, key=lambda n: int(n.split(".")[0]))
    half = len(names) // 2
    files = {f"brainTumorDataPublic_1-{half}.zip": zip_bytes({n: mats[n] for n in names[:half]}),
             f"brainTumorDataPublic_{half + 1}-{len(names)}.zip": zip_bytes({n: mats[n] for n in names[half:]}),
             "README.txt": b"Cheng et al. brain tumour dataset"}
    listing = []
    for number, (name, data) in enumerate(files.items()):
        server.files[f"/files/{number}"] = data
        listing.append({"name": name, "size": len(data), "computed_md5": md5(data),
                        "download_url": f"{server.url}/files/{number}"})
    server.serve_json("/articles/1512427/versions/5", {"id": 1512427, "version": 5, "files": listing})
    return files


def test_brain_figshare_splits_by_patient_and_borrows_negatives(server, tmp_path):
    archives, _ = sartaj_archives()
    serve_huggingface(server, SARTAJ_REPO, archives)
    sources.prepare(sartaj_settings(server), tmp_path / "brain-sartaj")
    serve_figshare(server)
    figshare = settings("brain-figshare", channels=3, negative="no_tumor", positive="tumor",
                        urls={"figshare": server.url}, negatives_from="brain-sartaj", test_fraction=0.25)
    out = tmp_path / "brain-figshare"
    manifest = sources.prepare(figshare, out)
    record = json.loads((out / "SOURCE.json").read_text())
    assert record["route"] == "figshare" and {f["algorithm"] for f in record["files"]} == {"md5"}
    table = read_manifest(manifest, "no_tumor", "tumor")
    positives = table[table.label == "tumor"]
    assert len(positives) == 16 and (positives.mask_path != "").all()
    assert positives.groupby("patient_id").split.nunique().max() == 1  # no patient on two sides
    assert set(positives.split) == {"train", "val", "test"}
    sartaj = pd.read_csv(tmp_path / "brain-sartaj" / "manifest.csv")
    negatives = table[table.label == "no_tumor"]
    assert len(negatives) == (sartaj.label == "no_tumor").sum()
    assert (negatives.split.value_counts() == sartaj[sartaj.label == "no_tumor"].split.value_counts()).all()
    test = load_split(manifest, "test", "no_tumor", "tumor", IMAGE_SIZE, 3, label="positive")
    inside = test.images.mean(dim=1)[test.masks].mean()
    outside = test.images.mean(dim=1)[~test.masks].mean()
    assert inside > outside + 0.5  # the mask lies on the bright tumour: image and mask are aligned
    assert test.masks.float().mean() > 0


def test_brain_figshare_needs_matching_negatives(server, tmp_path):
    serve_figshare(server)
    figshare = settings("brain-figshare", urls={"figshare": server.url})
    with pytest.raises(DataSourceError, match="source.negatives_from: brain-figshare has no negative class"):
        sources.prepare(figshare, tmp_path / "brain-figshare")
    with pytest.raises(DataSourceError, match="prepare dataset 'brain-sartaj' first"):
        sources.prepare({**figshare, "source": {**figshare["source"], "negatives_from": "brain-sartaj"}},
                        tmp_path / "brain-figshare")
    assert not (tmp_path / "brain-figshare" / "manifest.csv").exists()


def test_a_figshare_file_with_the_wrong_md5_is_never_prepared(server, tmp_path):
    files = serve_figshare(server)
    meta = json.loads(server.files["/articles/1512427/versions/5"])
    meta["files"][0]["computed_md5"] = md5(b"something else")
    server.serve_json("/articles/1512427/versions/5", meta)
    out = tmp_path / "brain-figshare"
    with pytest.raises(DataSourceError, match=f"checksum mismatch: md5 {md5(next(iter(files.values())))}"):
        sources.download(settings("brain-figshare", urls={"figshare": server.url}), out)
    assert not (out / "SOURCE.json").exists() and not (out / "raw").exists()


# --- the two COVID sets: Kaggle-only, so served through the `archive` route ----------------

def covid_qu_ex_archive() -> bytes:
    entries, seed = {}, 100
    base = "Infection Segmentation Data/Infection Segmentation Data"
    for split, count in (("Train", 4), ("Val", 2), ("Test", 3)):
        for cls in ("COVID-19", "Non-COVID", "Normal"):
            for i in range(count):
                name = f"{cls.lower()}_{split}_{i}.png"
                entries[f"{base}/{split}/{cls}/images/{name}"] = encoded(picture(seed := seed + 1, (40, 40), "L"), "PNG")
                lung = Image.new("RGB", (40, 40), (255, 255, 255))
                entries[f"{base}/{split}/{cls}/lung masks/{name}"] = encoded(lung, "PNG")
                infection = np.zeros((40, 40, 3), dtype=np.uint8)  # 3-channel, as the originals
                if cls == "COVID-19" and not (split == "Test" and i == 0):  # one positive without visible infection
                    infection[5:20, 22:35] = 255
                entries[f"{base}/{split}/{cls}/infection masks/{name}"] = encoded(Image.fromarray(infection), "PNG")
    return zip_bytes(entries)


def test_covid_qu_ex_keeps_its_splits_and_infection_masks(server, tmp_path):
    archive = covid_qu_ex_archive()
    server.files["/covidqu.zip"] = archive
    qu = settings("covid-qu-ex", negative="normal", positive="covid",
                  archive={"url": f"{server.url}/covidqu.zip", "sha256": sha256(archive)}, routes=["archive"])
    out = tmp_path / "covid-qu-ex"
    table = read_manifest(sources.prepare(qu, out), "normal", "covid")
    assert table.groupby("split").size().to_dict() == {"train": 8, "val": 4, "test": 6}
    positives = table[table.label == "covid"]
    assert (positives.mask_path != "").sum() == 8 and (table[table.label == "normal"].mask_path == "").all()
    report = json.loads((out / "preparation.json").read_text())
    assert report["positives_with_empty_mask"] == 1 and report["dropped"] == {"class not in the task": 9}
    masks = load_split(out / "manifest.csv", "train", "normal", "covid", IMAGE_SIZE, 1, label="positive").masks
    assert masks.float().mean().item() == pytest.approx(15 * 13 / 1600, abs=0.03)


def test_covid_qu_ex_with_a_missing_class_folder_names_it(server, tmp_path):
    archive = zip_bytes({f"Infection Segmentation Data/{split}/{cls}/images/a.png": encoded(picture(1, mode="L"), "PNG")
                         for split in ("Train", "Val", "Test") for cls in ("COVID-19", "Non-COVID")})
    server.files["/covidqu.zip"] = archive
    qu = settings("covid-qu-ex", archive={"url": f"{server.url}/covidqu.zip"}, routes=["archive"])
    with pytest.raises(DataSourceError, match="Train: class folder 'Normal' not found \\(found: COVID-19, Non-COVID\\)"):
        sources.prepare(qu, tmp_path / "covid-qu-ex")
    assert not (tmp_path / "covid-qu-ex" / "manifest.csv").exists()


def test_covid_radiography_drops_other_classes_and_ignores_lung_masks(server, tmp_path):
    entries, seed = {}, 200
    for cls, count in (("COVID", 10), ("Normal", 15), ("Lung_Opacity", 3), ("Viral Pneumonia", 2)):
        for i in range(count):
            entries[f"COVID-19_Radiography_Dataset/{cls}/images/{cls}-{i + 1}.png"] = encoded(
                picture(seed := seed + 1, (60, 60), "L"), "PNG")
            entries[f"COVID-19_Radiography_Dataset/{cls}/masks/{cls}-{i + 1}.png"] = encoded(
                Image.new("RGB", (50, 50), (255, 255, 255)), "PNG")
    server.files["/covid19.zip"] = zip_bytes(entries)
    radiography = settings("covid-radiography", negative="normal", positive="covid",
                           archive={"url": f"{server.url}/covid19.zip"})
    out = tmp_path / "covid-radiography"
    table = read_manifest(sources.prepare(radiography, out), "normal", "covid")
    assert len(table) == 25 and (table.mask_path == "").all()
    assert set(table.split) == {"train", "val", "test"} and set(table[table.split == "test"].label) == {"normal", "covid"}
    dropped = pd.read_csv(out / "dropped.csv")
    assert sorted(dropped.original_class.unique()) == ["Lung_Opacity", "Viral Pneumonia"] and len(dropped) == 5
    record = json.loads((out / "SOURCE.json").read_text())
    assert record["route"] == "archive" and record["files"][0]["checked_against"].startswith("none published")


# --- a user's own folder ----------------------------------------------------------------

def test_import_folder_makes_a_manifest_in_one_command(tmp_path):
    root = tmp_path / "scans"
    for split, count in (("train", 10), ("test", 4)):
        for c, cls in enumerate(("normal", "covid", "other")):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                picture(1000 * c + 100 * count + i, (50, 70)).save(root / split / cls / f"{cls}{i}.jpg")
    (root / "masks" / "test" / "covid").mkdir(parents=True)
    Image.new("L", (50, 70), 255).save(root / "masks" / "test" / "covid" / "covid0.png")
    out = tmp_path / "data" / "mine"
    code = cli.main(["import-folder", str(root), "--negative", "normal", "--positive", "covid", "--out-dir", str(out),
                     "--val-fraction", "0.2"])
    assert code == 0
    table = read_manifest(out / "manifest.csv", "normal", "covid")
    assert table.groupby("split").size().to_dict() == {"test": 8, "train": 16, "val": 4}
    assert table.mask_path.tolist().count("masks/test/covid/covid0.png") == 1
    assert len(pd.read_csv(out / "dropped.csv")) == 14  # the "other" class


def test_import_folder_reads_class_subfolders_and_lists_what_it_leaves_out(tmp_path):
    # Images grouped per patient inside a class folder belong to the class (torchvision's ImageFolder
    # reads them too); a file that is not an image is listed in dropped.csv, not skipped silently.
    root = tmp_path / "scans"
    for split in ("train", "test"):
        for c, cls in enumerate(("normal", "covid")):
            (root / split / cls / "patient7").mkdir(parents=True)
            for i in range(6):
                picture(500 * c + 50 * (split == "test") + i, (40, 40)).save(root / split / cls / f"{cls}{i}.png")
            picture(900 + 10 * c + (split == "test"), (40, 40)).save(root / split / cls / "patient7" / "slice.png")
    (root / "train" / "covid" / "patient7" / "notes.txt").write_text("not an image")
    (root / "masks" / "test" / "covid" / "patient7").mkdir(parents=True)
    Image.new("L", (40, 40), 255).save(root / "masks" / "test" / "covid" / "patient7" / "slice.png")
    out = tmp_path / "out"
    code = cli.main(["import-folder", str(root), "--negative", "normal", "--positive", "covid", "--out-dir", str(out)])
    assert code == 0
    table = read_manifest(out / "manifest.csv", "normal", "covid")
    assert len(table) == 2 * 2 * 7  # 6 images and 1 in the patient's subfolder, per class and split
    masked = table[table.mask_path != ""]
    assert len(masked) == 1 and masked.label.item() == "covid" and masked.split.item() == "test"
    dropped = pd.read_csv(out / "dropped.csv")
    assert len(dropped) == 1 and dropped.source_file.item().endswith("notes.txt")
    assert dropped.reason.item() == "not an image file"


def test_import_folder_refuses_an_empty_class_folder(tmp_path, capsys):
    root = tmp_path / "scans"
    for split in ("train", "test"):
        for cls in ("normal", "covid"):
            (root / split / cls).mkdir(parents=True)
            if (split, cls) != ("train", "covid"):
                picture(7, (40, 40)).save(root / split / cls / "a.png")
    code = cli.main(["import-folder", str(root), "--negative", "normal", "--positive", "covid",
                     "--out-dir", str(tmp_path / "out")])
    assert code == 2 and "class folder 'covid' holds no image" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_import_folder_with_a_missing_class_exits_with_one_line(tmp_path, capsys):
    (tmp_path / "scans" / "train" / "normal").mkdir(parents=True)
    (tmp_path / "scans" / "test" / "normal").mkdir(parents=True)
    code = cli.main(["import-folder", str(tmp_path / "scans"), "--negative", "normal", "--positive", "covid",
                     "--out-dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and "class folder 'covid' not found" in error and error.count("\n") == 1
    assert not (tmp_path / "out" / "manifest.csv").exists()


# --- the DAG on a prepared public source ------------------------------------------------------

def test_the_workflow_runs_on_a_downloaded_source(server, tmp_path):
    """Real snakemake: download and prepare brain-sartaj from the loopback server, then the DAG up to the metrics."""
    archives, _ = sartaj_archives(per_class=8, per_test_class=4)
    serve_huggingface(server, SARTAJ_REPO, archives)
    shutil.copytree(REPO / "config", tmp_path / "config")
    tiny = merge(TINY["defaults"], {"explain": {"methods": ["latent_ig", "ig"]}})  # fewer jobs: the data is on trial
    config = merge(yaml.safe_load((tmp_path / "config" / "config.yaml").read_text()), {"defaults": tiny})
    config["datasets"] = {"brain-sartaj": {"source": {"name": "brain-sartaj", "routes": ["huggingface"],
                                                       "urls": {"huggingface": server.url}},
                                           "negative": "no_tumor", "positive": "tumor"}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "2", "results/brain-sartaj/metrics.csv"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "data" / "brain-sartaj" / "SOURCE.json").read_text())["route"] == "huggingface"
    metrics = pd.read_csv(tmp_path / "results" / "brain-sartaj" / "metrics.csv")
    assert {"latent_ig", "ig"} <= set(metrics.method)
