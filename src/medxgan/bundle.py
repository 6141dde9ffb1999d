"""A trained bundle: what it takes to explain new images with a dataset's trained networks.

`results/{dataset}/bundle/` holds C (for a user's TorchScript classifier: its weights, with the
path and SHA-256 of the user's file it needs), G, the encoder where the inversion starts from one,
the settings that invert and explain, a model card, and SHA256SUMS over all of them. Copy the
folder to share it.

A bundle is data someone sends you: `read_bundle` takes nothing from it unchecked. Every file must be
listed in SHA256SUMS and match its line there, the folder holds nothing else, and the settings must
pass the config's schema; the networks' specs are checked where they load (`medxgan.api.MedXGAN.from_bundle`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

from medxgan.artifacts import read_spec
from medxgan.config import ConfigError, validate_settings
from medxgan.files import file_sha256

CLASSIFIER, GENERATOR, ENCODER = "classifier.safetensors", "generator.safetensors", "encoder.safetensors"
SETTINGS, CARD, CHECKSUMS = "settings.json", "MODEL_CARD.md", "SHA256SUMS"
# the reconstruction error of the bundle's own test positives, against which explain-images flags
# an image G cannot draw (an MRI given to a chest X-ray bundle, a real glioma to a phantom's)
REFERENCE = "reference.json"
BUNDLE_FILES = (CLASSIFIER, GENERATOR, ENCODER, SETTINGS, CARD, REFERENCE)  # every file a bundle may hold besides its sums
REQUIRED_FILES = (CLASSIFIER, GENERATOR, SETTINGS, CARD)
TEXT_FILES = (SETTINGS, CARD, CHECKSUMS, REFERENCE)  # git on Windows checks these out with CRLF line endings
SNAKEMAKE_TIMESTAMP = ".snakemake_timestamp"  # the empty file that dates a directory output; nothing reads it
# what explaining reads, each section with every key (the encoder section only trains E)
REQUIRED_SETTINGS = ("data", "inversion", "explain", "seed")
CHECKSUM_LINE = re.compile(r"(?P<digest>[0-9a-f]{64}) [ *](?P<name>.+)")  # sha256sum's: text or binary mode


class BundleError(ValueError):
    """A folder that is not a bundle as medxgan writes them, or one changed since; the message names the file."""


def model_card(dataset: str, settings: dict, spec: dict, classifier: dict, gan: dict,
               inversion_ssim: float | None) -> str:
    """A short Markdown card: data, splits, metrics, seeds, versions, hardware. `spec` is C's, as
    stored in its weights file; `classifier` and `gan` are the reports of their steps."""
    test, provenance = classifier["test"], gan["provenance"]
    lines = [f"# medXGAN bundle: {dataset}", "",
             f"- Classes: negative `{settings['data']['negative']}`, positive `{settings['data']['positive']}`; "
             f"images {settings['data']['image_size']} px, {settings['data']['channels']} channel(s), in [-1, 1].",
             f"- Classifier: {spec['arch']}"
             + (f" (imported from {spec['source']}, SHA-256 {spec['sha256'][:12]}…)"
                if spec["kind"] == "user_classifier" else " (trained by the workflow)")
             + f"; validation n = {classifier['val']['n']}, test n = {test['n']}: accuracy {test['accuracy']:.3f}"
             + (f", AUROC {test['auroc']:.3f}" if test["auroc"] is not None else "") + ".",
             f"- Generator: {gan['steps']} GAN steps; disentanglement check: C calls "
             f"{gan['disentanglement']['negative_called_negative']:.1%} of G(z1, 0) negative and "
             f"{gan['disentanglement']['positive_called_positive']:.1%} of G(z1, z2) positive.",
             f"- Inversion: starts `{settings['inversion']['init']}`, {settings['inversion']['restarts']} restart(s) x "
             f"{settings['inversion']['steps']} steps" + (f"; test positives' reconstruction SSIM {inversion_ssim:.3f}"
                                                        if inversion_ssim is not None else "") + ".",
             f"- Seed {settings['seed']}; medxgan {provenance['medxgan']}, torch {provenance['torch']}; "
             f"G trained on {provenance.get('cuda_device') or provenance.get('processor')} "
             f"({provenance.get('precision')}).", ""]
    return "\n".join(lines)


def write_bundle(dataset: str, results: Path, settings: dict, out: Path) -> None:
    """Gather the dataset's networks, settings and card into `out`, written whole or not at all."""
    results, out = Path(results), Path(out)
    files = {CLASSIFIER: results / "classifier" / "model.safetensors", GENERATOR: results / "gan" / "generator.safetensors"}
    if settings["inversion"]["init"] == "encoder":
        files[ENCODER] = results / "encoder" / "model.safetensors"
    for source in files.values():
        if not source.is_file():
            raise FileNotFoundError(f"bundle for {dataset}: {source} is missing; run the workflow first")
    classifier = json.loads((results / "classifier" / "metrics.json").read_text())
    gan = json.loads((results / "gan" / "summary.json").read_text())
    inversion = results / "inversion" / "inversion.csv"
    ssim = _mean_ssim(inversion)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for name, source in files.items():
            shutil.copyfile(source, tmp / name)
        (tmp / SETTINGS).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", newline="\n")
        (tmp / CARD).write_text(model_card(dataset, settings, read_spec(files[CLASSIFIER]), classifier, gan, ssim),
                                newline="\n")
        if inversion.is_file():
            (tmp / REFERENCE).write_text(json.dumps(reference(inversion), indent=2) + "\n", newline="\n")
        sums = [f"{content_sha256(tmp / name)}  {name}" for name in sorted(p.name for p in tmp.iterdir())]
        (tmp / CHECKSUMS).write_text("\n".join(sums) + "\n", newline="\n")
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(new: Path, old: Path) -> None:
    """Put `new` where `old` is: the old folder is moved aside first, so a failure leaves one of them whole."""
    aside = old.with_name(f".{old.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    if old.exists():
        old.rename(aside)
    new.rename(old)
    shutil.rmtree(aside, ignore_errors=True)


def reference(inversion_table: Path) -> dict:
    """The test positives' reconstruction MSE: how well G draws images of the bundle's own data."""
    import pandas as pd

    mse = pd.read_csv(inversion_table)["mse"]
    return {"test_reconstruction_mse": {"n": int(mse.size), "median": float(mse.median()), "max": float(mse.max())}}


def read_reference(path: Path) -> dict | None:
    """A verified bundle's reference.json (None for a bundle written before it existed)."""
    file = Path(path) / REFERENCE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))["test_reconstruction_mse"]
        return {key: float(record[key]) for key in ("n", "median", "max")}
    except (ValueError, KeyError, TypeError) as error:
        raise BundleError(f"{file} is not a reference record ({error!r})") from None


def _mean_ssim(table: Path) -> float | None:
    if not table.is_file():
        return None
    import pandas as pd

    return float(pd.read_csv(table)["ssim"].mean())


def content_sha256(file: Path) -> str:
    """SHA-256 of the file's bytes; of a text file's with CRLF line endings read as LF, so a bundle
    checked out by git on Windows is the bundle that was written."""
    if file.name not in TEXT_FILES:
        return file_sha256(file)
    return hashlib.sha256(file.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def listed_sums(path: Path) -> dict[str, str]:
    """File name -> SHA-256, as the bundle's SHA256SUMS lists them (sha256sum's format)."""
    sums_file = path / CHECKSUMS
    if not sums_file.is_file():
        raise BundleError(f"{path} is not a medxgan bundle: it has no {CHECKSUMS}")
    try:
        text = sums_file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{sums_file} is not text") from None
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = CHECKSUM_LINE.fullmatch(line)
        if match is None:
            raise BundleError(f"{sums_file} line {number} is not 'SHA-256  FILE': {line!r}")
        if match["name"] in sums:
            raise BundleError(f"{sums_file} lists {match['name']} twice")
        sums[match["name"]] = match["digest"]
    return sums


def verify(path: Path) -> None:
    """The folder holds a bundle's files and nothing else, each listed in SHA256SUMS and unchanged."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle folder")
    sums = listed_sums(path)
    present = {entry.name for entry in path.iterdir()} - {CHECKSUMS, SNAKEMAKE_TIMESTAMP}
    listed = set(sums)
    _refuse(path, present - listed, f"not listed in {CHECKSUMS}: a bundle holds only the files it lists")
    _refuse(path, listed - set(BUNDLE_FILES), f"listed in {CHECKSUMS}, no file of a medxgan bundle "
                                              f"({', '.join(BUNDLE_FILES)})")
    _refuse(path, set(REQUIRED_FILES) - listed, f"not listed in {CHECKSUMS}, and every bundle holds it")
    _refuse(path, listed - present, f"listed in {CHECKSUMS} but missing")
    _refuse(path, {name for name in listed if content_sha256(path / name) != sums[name]},
            f"changed since the bundle was written: SHA-256 not the one {CHECKSUMS} lists")


def _refuse(path: Path, names: set[str], problem: str) -> None:
    """One error naming every file of the bundle that has the problem, if any has."""
    if names:
        raise BundleError(f"bundle {path}: {', '.join(sorted(names))} {problem}")


def read_bundle(path: Path) -> dict:
    """The settings of a verified bundle, checked against the config's schema with every key that
    inverting and explaining read."""
    path = Path(path)
    verify(path)
    try:
        settings = json.loads((path / SETTINGS).read_text(encoding="utf-8"))
    except ValueError as error:  # not UTF-8, or not JSON
        raise BundleError(f"{path / SETTINGS} is not JSON ({error})") from None
    if not isinstance(settings, dict):
        raise BundleError(f"{path / SETTINGS} holds no settings object")
    try:
        validate_settings(settings, complete=REQUIRED_SETTINGS)
    except ConfigError as error:
        raise BundleError(f"{path / SETTINGS}: {error}") from None
    return settings
