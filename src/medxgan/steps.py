"""The pipeline steps: each reads its inputs, calls the library, and writes its outputs atomically.

One function per `medxgan <step>` command and per Snakemake rule. `s` is the step's settings
(see `medxgan.config.dataset_settings`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from medxgan import ablation, evaluation, figures, hardware, metrics, reporting, runtimes
from medxgan.config import ConfigError
from medxgan.data.manifest import ImageSet, load_split, read_manifest
from medxgan.data import sources
from medxgan.data.phantoms import write_phantom_dataset
from medxgan.encoder import train_encoder
from medxgan.explainers import build_explainer
from medxgan.inversion import check_encoder, invert_batches
from medxgan.models import InputFileError, load_model, positive_probability, save_model
from medxgan.oracle import oracle_probabilities, oracle_seed, train_oracle
from medxgan.shards import ShardError, check_chunk
from medxgan.user_classifier import import_classifier
from medxgan.training import GANTrainer, disentanglement_check, evaluate_classifier, train_classifier
from medxgan.utils import atomic_path, pick_device, portable_path, provenance, save_tensors, seed_everything, write_json

log = logging.getLogger(__name__)


def _load(manifest, split: str, s: dict, label: str | None = None, positions: slice | None = None) -> ImageSet:
    d = s["data"]
    # the seed draws a validation split for a manifest without one, the same in every step
    return load_split(manifest, split, d["negative"], d["positive"], d["image_size"], d["channels"], label=label,
                      positions=positions, seed=s["seed"])


def _write_csv(frame: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _start(s: dict) -> torch.device:
    seed_everything(s["seed"])
    device = pick_device(s["device"])
    hardware.allow_tf32(device)
    return device


def _precision(s: dict, device: torch.device) -> str:
    """'fp32' or 'bf16' for the step's `precision` setting on this device (logged, and recorded
    with the step's provenance)."""
    return hardware.resolve_precision(s["precision"], device)


def prepare(s: dict, out_dir: Path) -> None:
    """A built-in dataset is generated; a public one is prepared from its download (fetched first if needed)."""
    p = s.get("phantom")
    if s.get("source") is not None:
        sources.prepare(s, Path(out_dir))
    elif p is not None:
        write_phantom_dataset(p["kind"], Path(out_dir), s["data"]["image_size"], p["counts"], p["positive_fraction"], s["seed"])
    else:
        raise ConfigError("prepare needs a dataset with 'phantom' or 'source' settings; a manifest is read where it is")


def check_manifest_step(s: dict, manifest: Path, out: Path) -> None:
    """The manifest check (medxgan.data.manifest_check): errors stop the run, warnings are logged and kept."""
    from medxgan.data.manifest_check import check_manifest

    write_json(out, check_manifest(manifest, s["data"]["negative"], s["data"]["positive"], s["data"]["image_size"],
                                   s["seed"]))


def download(s: dict, out_dir: Path) -> None:
    if s.get("source") is None:
        raise ConfigError("download needs a dataset with 'source' settings (a public dataset)")
    sources.download(s, Path(out_dir))


def _train_and_report(s: dict, manifest: Path, out_dir: Path, train, name: str, **record) -> None:
    """Train a classifier with `train(train_split, val_split, device)` (always fp32), score it on
    validation and test, and write model.safetensors and metrics.json (with `record` added)."""
    device = _start(s)
    splits = {split: _load(manifest, split, s) for split in ("train", "val", "test")}
    model, info = train(splits["train"], splits["val"], device)
    report = {split: evaluate_classifier(model, splits[split], device) for split in ("val", "test")}
    log.info("%s: test accuracy %.3f, AUROC %.3f", name, report["test"]["accuracy"], report["test"]["auroc"] or float("nan"))
    out_dir = Path(out_dir)
    save_model(model, out_dir / "model.safetensors", _with_labels(info["spec"], s))
    write_json(out_dir / "metrics.json", {**report, "history": info["history"], "selected_epoch": info["selected_epoch"],
                                          "settings": s, **record,
                                          "provenance": provenance(s["seed"], device, "fp32")})


def _with_labels(spec: dict, s: dict) -> dict:
    """The spec with the dataset's two labels: a step given this file for another dataset says so."""
    return {**spec, "labels": [str(s["data"]["negative"]), str(s["data"]["positive"])]}


def _classifier_and_generator(classifier: Path, generator: Path, device: torch.device, s: dict):
    """C and G for this run's data, each file checked first (`models.check_spec`)."""
    return (load_model(classifier, device, "classifier", s["data"]),
            load_model(generator, device, "generator", s["data"]))


def train_classifier_step(s: dict, manifest: Path, out_dir: Path) -> None:
    """Train C, or import the user's (classifier.pretrained): either way it is scored on val and test."""
    if s["classifier"]["pretrained"]:
        def bring(train, val, device):
            classifier, spec = import_classifier(s["classifier"], s["data"])
            return classifier.to(device), {"spec": spec, "history": [], "selected_epoch": None}
        _train_and_report(s, manifest, out_dir, bring, f"classifier ({s['classifier']['pretrained']})")
        return
    _train_and_report(s, manifest, out_dir, lambda train, val, device: train_classifier(
        train, val, s["classifier"], s["data"], s["seed"], device), "classifier")


def train_oracle_step(s: dict, manifest: Path, out_dir: Path) -> None:
    """The independent classifier that judges G's images (medxgan.oracle)."""
    _train_and_report(s, manifest, out_dir, lambda train, val, device: train_oracle(
        train, val, s["oracle"], s["classifier"], s["data"], s["seed"], device), f"oracle ({s['oracle']['arch']})",
        oracle_seed=oracle_seed(s["seed"], s["oracle"]))


def train_gan_step(s: dict, manifest: Path, classifier: Path, out_dir: Path) -> None:
    device = _start(s)
    precision = _precision(s, device)
    out_dir = Path(out_dir)
    train = _load(manifest, "train", s)
    C = load_model(classifier, device, "classifier", s["data"])
    trainer = GANTrainer(C, s["gan"], s["data"], s["seed"], device, precision)
    trainer.fit(train, out_dir / "checkpoint.pt")
    losses = pd.DataFrame(trainer.losses, columns=GANTrainer.LOSS_COLUMNS)
    check = disentanglement_check(trainer.G.eval(), trainer.C, s["gan"]["disentanglement_samples"], s["seed"], device)
    log.info("disentanglement: %s", check)
    save_model(trainer.G, out_dir / "generator.safetensors", _with_labels(trainer.g_spec, s))
    save_model(trainer.D, out_dir / "discriminator.safetensors", trainer.d_spec)
    _write_csv(losses, out_dir / "losses.csv")
    figures.save(figures.gan_losses(losses), out_dir / "losses.png")
    write_json(out_dir / "summary.json", {"disentanglement": check, "steps": trainer.step, "settings": s,
                                          "provenance": provenance(s["seed"], device, precision)})


def train_encoder_step(s: dict, manifest: Path, generator: Path, out_dir: Path) -> None:
    """E(x) -> (z1, z2) against the frozen G: the starting codes of inversion.init encoder."""
    device = _start(s)
    encoder, report = train_encoder(load_model(generator, device, "generator", s["data"]), _load(manifest, "train", s),
                                    _load(manifest, "val", s), s["encoder"], s["data"], s["seed"], device)
    log.info("encoder: validation MSE(G(E(x)), x) %.4f", report["val_reconstruction_mse"])
    out_dir = Path(out_dir)
    save_model(encoder, out_dir / "model.safetensors", _with_labels(report.pop("spec"), s))
    write_json(out_dir / "metrics.json", {**report, "settings": s, "provenance": provenance(s["seed"], device, "fp32")})


def _encoder_for(s: dict, encoder: Path | None, device: torch.device):
    """The encoder the inversion starts from, when inversion.init is encoder (None otherwise)."""
    E = None if encoder is None else load_model(encoder, device, "encoder", s["data"])
    check_encoder(s["inversion"], E)
    return E


INVERSION_TABLE_COLUMNS = ("loss", "mse", "ssim", "p_image", "p_reconstruction", "p_negative")


def _test_positives(manifest: Path, s: dict, positions: slice | None = None) -> ImageSet:
    return _load(manifest, "test", s, label="positive", positions=positions)


def count_test_positives(manifest: Path, s: dict) -> int:
    """How many positive test images the manifest lists: what a sharded step splits into chunks."""
    table = read_manifest(manifest, s["data"]["negative"], s["data"]["positive"])
    return int(((table["split"] == "test") & (table["target"] == 1)).sum())


def count_step(s: dict, manifest: Path, out: Path) -> None:
    """Write the number of positive test images, from which the workflow plans its chunks."""
    write_json(out, {"test_positives": count_test_positives(manifest, s), "manifest": portable_path(manifest)})


def _images_of(manifest: Path, s: dict, section: str, chunk: tuple[int, int] | None) -> tuple[ImageSet, dict]:
    """The positive test images a step works on, all or one chunk, and the chunk's place among them
    (start, stop, total; empty for all) for the gather step."""
    if chunk is None:
        return _test_positives(manifest, s), {}
    start, stop = chunk
    total = count_test_positives(manifest, s)
    check_chunk(start, stop, total, s[section]["batch_size"], section)
    return _test_positives(manifest, s, slice(start, stop)), {"start": start, "stop": stop, "total": total}


def _invert_images(G, C, data: ImageSet, s: dict, device: torch.device, precision: str,
                   encoder=None) -> dict[str, torch.Tensor]:
    """Codes, reconstructions, negative realisations and their scores per image. Everything is
    computed one inversion batch at a time, so a chunk gets exactly the numbers the whole set gets.
    The images and scores kept are float32, whatever precision the search ran in."""
    parts = []
    for batch, result in invert_batches(G, C, data.images, data.rows, s["inversion"], s["seed"], precision, encoder):
        images = data.images[batch]
        with torch.no_grad():
            reconstruction = G(result.z1.to(device), result.z2.to(device)).cpu()
            negative = G(result.z1.to(device), torch.zeros_like(result.z2).to(device)).cpu()
            p_reconstruction = positive_probability(C, reconstruction.to(device)).cpu()
            p_negative = positive_probability(C, negative.to(device)).cpu()
        parts.append({**result.as_tensors(), "mse": metrics.reconstruction_mse(reconstruction, images),
                      "ssim": metrics.reconstruction_ssim(reconstruction, images),
                      "p_reconstruction": p_reconstruction, "p_negative": p_negative,
                      "reconstruction": reconstruction, "negative": negative})
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def invert_step(s: dict, manifest: Path, classifier: Path, generator: Path, out_dir: Path,
                chunk: tuple[int, int] | None = None, encoder: Path | None = None) -> None:
    device = _start(s)
    precision = _precision(s, device)
    C, G = _classifier_and_generator(classifier, generator, device, s)
    E = _encoder_for(s, encoder, device)
    data, place = _images_of(manifest, s, "inversion", chunk)
    per_image = _invert_images(G, C, data, s, device, precision, E)
    table = pd.DataFrame({"id": data.ids, "row": data.rows.numpy(),
                          **{k: per_image[k].numpy() for k in INVERSION_TABLE_COLUMNS}})
    log.info("reconstruction MSE %.4f, SSIM %.3f; C calls %.1f%% of reconstructions positive, %.1f%% of negative "
             "realisations negative", table.mse.mean(), table.ssim.mean(), 100 * (table.p_reconstruction >= 0.5).mean(),
             100 * (table.p_negative < 0.5).mean())
    out_dir = Path(out_dir)
    save_tensors({**per_image, "rows": data.rows}, out_dir / "latents.safetensors", place)
    _write_csv(table, out_dir / "inversion.csv")
    # the manifest relative to the repository root when it lies in it (medxgan.utils.portable_path)
    write_json(out_dir / "provenance.json", {"manifest": portable_path(manifest), "settings": s,
                                             "provenance": provenance(s["seed"], device, precision), **place})


def load_inversion(path: Path, data: ImageSet, positions: slice | None = None) -> dict[str, torch.Tensor]:
    """The inversion results (those at `positions`, for one chunk), checked to belong to the same
    test images (same manifest rows, same order)."""
    try:
        result = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise InputFileError(f"{path} is not a readable inversion file ({error})") from None
    if "rows" not in result:
        raise InputFileError(f"{path} holds no inversion results (no 'rows'): give the invert step's latents.safetensors")
    if positions is not None:
        result = {name: tensor[positions] for name, tensor in result.items()}
    if not torch.equal(result["rows"], data.rows):
        raise InputFileError(f"{path} was computed on other images than the manifest's test positives: rerun inversion")
    return result


def explain_step(s: dict, manifest: Path, classifier: Path, generator: Path, inversion: Path, method: str, out: Path,
                 chunk: tuple[int, int] | None = None) -> None:
    device = _start(s)
    C, G = _classifier_and_generator(classifier, generator, device, s)
    explainer = build_explainer(method, C, G, s["explain"])
    data, place = _images_of(manifest, s, "explain", chunk)
    latents = load_inversion(Path(inversion), data, slice(place["start"], place["stop"]) if place else None)
    heatmaps = explainer.attribute(data.images, target=1, latents=(latents["z1"], latents["z2"]))
    save_tensors({"heatmaps": heatmaps, "rows": data.rows}, out, {"method": method, **place})


CHUNK_KEYS = ("start", "stop", "total")


def _chunk_places(paths: list[Path]) -> list[dict]:
    """Each chunk file's metadata, checked to cover the positive test images once, in order."""
    places, end = [], 0
    for path in paths:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        if not set(CHUNK_KEYS) <= set(metadata):
            raise ShardError(f"{path} is not one chunk of a sharded step (no start/stop/total in its metadata)")
        place = {**metadata, **{key: int(metadata[key]) for key in CHUNK_KEYS}}
        if place["start"] != end or (places and place["total"] != places[0]["total"]):
            raise ShardError(f"{path} holds images {place['start']}:{place['stop']} of {place['total']}, "
                             f"but the chunks before it end at image {end}"
                             + (f" of {places[0]['total']}" if places else ""))
        places.append(place)
        end = place["stop"]
    if not places or end != places[0]["total"]:
        raise ShardError(f"the chunks given end at image {end}, not at the last one"
                         + (f" ({places[0]['total']})" if places else "") + ": a chunk is missing")
    return places


def _gather_tensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    parts = [load_file(str(path)) for path in paths]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def gather_inversion_step(chunks: list[Path], out_dir: Path) -> None:
    """Join the folders that `invert --chunk` wrote into the files one unsharded `invert` writes."""
    chunks = [Path(chunk) for chunk in chunks]
    places = _chunk_places([chunk / "latents.safetensors" for chunk in chunks])
    tensors = _gather_tensors([chunk / "latents.safetensors" for chunk in chunks])
    # float32 columns, read back as float32, are written with exactly the digits they had
    dtypes = {"id": str, "row": "int64", **{column: "float32" for column in INVERSION_TABLE_COLUMNS}}
    table = pd.concat([pd.read_csv(chunk / "inversion.csv", dtype=dtypes, keep_default_na=False) for chunk in chunks],
                      ignore_index=True)
    chunk_records = [json.loads((chunk / "provenance.json").read_text()) for chunk in chunks]
    out_dir = Path(out_dir)
    save_tensors(tensors, out_dir / "latents.safetensors")
    _write_csv(table, out_dir / "inversion.csv")
    first = chunk_records[0]
    write_json(out_dir / "provenance.json", {
        "manifest": first["manifest"], "settings": first["settings"], "provenance": first["provenance"],
        "chunks": [{key: record[key] for key in (*CHUNK_KEYS, "provenance")} for record in chunk_records]})
    log.info("gathered %d chunks: %d images", len(places), places[0]["total"])


def gather_explanations_step(chunks: list[Path], out: Path) -> None:
    """Join the heatmap files that `explain --chunk` wrote into the file one unsharded `explain` writes."""
    places = _chunk_places(chunks)
    methods = {place["method"] for place in places}
    if len(methods) != 1:
        raise ShardError(f"the chunks given hold heatmaps of several methods: {', '.join(sorted(methods))}")
    save_tensors(_gather_tensors(chunks), out, {"method": methods.pop()})
    log.info("gathered %d chunks: %d images", len(places), places[0]["total"])


def evaluate_step(s: dict, manifest: Path, classifier: Path, inversion: Path, explanations: list[Path], out_dir: Path,
                  oracle: Path | None = None, classifier_metrics: Path | None = None) -> None:
    """The scores per image, their summary (metrics.csv), the curves, the pairwise comparisons, and
    metrics.json: the headline numbers of the summary (`evaluation.headline`), with C's test
    accuracy and AUROC from `classifier_metrics` (train-classifier's metrics.json) when given."""
    device = _start(s)
    C = load_model(classifier, device, "classifier", s["data"])
    data = _test_positives(manifest, s)
    latents = load_inversion(Path(inversion), data)
    if oracle is not None:  # an independent judge of G's images beside C
        latents |= oracle_probabilities(load_model(oracle, device, "classifier", s["data"]), data.images, latents)
    heatmaps = load_heatmaps(explanations)
    per_image, curves = evaluation.evaluate_explanations(C, data, heatmaps, latents, s["evaluate"], s["seed"], device)
    summary = evaluation.summarise(per_image, s["evaluate"], s["seed"])
    out_dir = Path(out_dir)
    _write_csv(per_image, out_dir / "metrics_per_image.csv")
    _write_csv(curves, out_dir / "metrics_curves.csv")
    _write_csv(summary, out_dir / "metrics.csv")
    _write_csv(evaluation.compare_methods(per_image), out_dir / "metrics_comparisons.csv")
    classifier_report = json.loads(Path(classifier_metrics).read_text()) if classifier_metrics else None
    write_json(out_dir / "metrics.json", evaluation.headline(summary, classifier_report), sort_keys=False)
    write_json(out_dir / "metrics_provenance.json", {"settings": s, "provenance": provenance(s["seed"], device)})


def load_heatmaps(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Method name -> heatmaps, from the files `explain` wrote."""
    heatmaps = {}
    for path in paths:
        with safe_open(str(path), "pt") as f:
            heatmaps[f.metadata()["method"]] = f.get_tensor("heatmaps")
    return heatmaps


def figures_step(s: dict, manifest: Path, classifier: Path, generator: Path, inversion: Path,
                 explanations: list[Path], metrics_csv: Path, curves_csv: Path, oracle: Path, out_dir: Path) -> None:
    device = _start(s)
    C, G = _classifier_and_generator(classifier, generator, device, s)
    oracle_model = load_model(oracle, device, "classifier", s["data"])
    data = _test_positives(manifest, s)
    latents = load_inversion(Path(inversion), data)
    heatmaps = load_heatmaps(explanations)
    out_dir = Path(out_dir)
    examples = figures.example_indices(data, s["figures"]["examples"])
    figures.save(figures.pipeline_rows(C, data, latents, heatmaps, examples), out_dir / "pipeline.png")
    figures.save(figures.interpolation_strip(C, G, latents, examples, s["explain"]["interpolation_points"]),
                 out_dir / "interpolation.png")
    figures.save(figures.metrics_bars(pd.read_csv(metrics_csv)), out_dir / "metrics.png")
    figures.save(figures.faithfulness_curves(pd.read_csv(curves_csv), s["seed"]), out_dir / "curves.png")
    figures.save(figures.inversion_quality(data, latents, s["figures"]["examples"]), out_dir / "inversion.png")
    samples = figures.disentanglement_samples(C, oracle_model, G, s["figures"]["examples"], s["seed"])
    figures.save(figures.disentanglement_grid(samples), out_dir / "disentanglement.png")
    fraction = s["evaluate"]["perturbation_fractions"][0]  # the first of the probability-drop metric's fractions
    figures.save(figures.perturbation_rows(C, data, heatmaps, examples, fraction), out_dir / "perturbation.png")


def check_step(s: dict, manifest: Path, classifier: Path, generator: Path, inversion: Path, out_dir: Path,
               encoder: Path | None = None) -> None:
    device = _start(s)
    s = {**s, "precision": _precision(s, device)}  # the noisy copies' inversions run like the inversion step
    C, G = _classifier_and_generator(classifier, generator, device, s)
    E = _encoder_for(s, encoder, device)
    data = _test_positives(manifest, s)
    latents = load_inversion(Path(inversion), data)
    negatives = _load(manifest, "test", s, label="negative")
    out_dir = Path(out_dir)
    sample = torch.arange(min(s["checks"]["images"], len(data)))
    tables = {
        "sanity": evaluation.sanity_table(C, G, data.subset(sample), latents, s),
        "robustness": evaluation.robustness_table(C, G, data.subset(sample), s, E),
        "counterfactual": pd.concat([evaluation.counterfactual_table(C, data, negatives, latents, s), pd.DataFrame(
            evaluation.negative_counterfactual_rows(C, G, negatives, s, E))], ignore_index=True),
    }
    for name, table in tables.items():
        _write_csv(table, out_dir / f"{name}.csv")
    figures.save(figures.sanity_curves(tables["sanity"]), out_dir / "sanity.png")
    figures.save(figures.robustness_curves(tables["robustness"]), out_dir / "robustness.png")
    write_json(out_dir / "provenance.json", {"settings": s, "provenance": provenance(s["seed"], device, s["precision"])})


def bundle_step(s: dict, results_dir: Path, out: Path) -> None:
    """The dataset's trained bundle (medxgan.bundle), for `explain-images` and `MedXGAN.from_bundle`."""
    from medxgan.bundle import write_bundle

    write_bundle(Path(results_dir).name, results_dir, s, out)


def summarize_step(results: Path, datasets: list[str], families: dict[str, str], out: Path) -> None:
    """One table of every dataset's metrics (with its family, for the notebooks) and the Markdown summary."""
    frames = []
    for name in datasets:
        table = pd.read_csv(Path(results) / name / "metrics.csv")
        frames.append(table.assign(dataset=name, family=families.get(name, "")))
    _write_csv(pd.concat(frames), Path(out).with_suffix(".csv"))
    with atomic_path(out) as tmp:
        tmp.write_text(reporting.summary_markdown(Path(results), datasets))


def collect_benchmarks_step(results: Path, datasets: list[str], out: Path, figure: Path) -> None:
    """Every job's benchmark file under `results` in one table, and a bar chart of the jobs' times."""
    table = runtimes.collect(results, datasets)
    if table.empty:
        raise FileNotFoundError(f"no benchmark files under {results}/{{{','.join(datasets)}}}/benchmarks/")
    _write_csv(table, out)
    machine = f"{hardware.cpu_model()}, {os.cpu_count()} cores"
    figures.save(figures.job_times(table, machine), figure)
    log.info("%d jobs, %.0f s of job time in all", len(table), table.seconds.sum())


def ablation_table_step(results: Path, datasets: list[str], variants: list[str], seeds: list[int], main_seed: int,
                        out: Path) -> None:
    """The ablation's metrics in one long CSV, a Markdown table beside it and a figure (.png)."""
    table = ablation.collect(results, datasets, variants, seeds, main_seed)
    out = Path(out)
    _write_csv(table, out)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(ablation.markdown(table))
    figures.save(figures.ablation_summary(table), out.with_suffix(".png"))
