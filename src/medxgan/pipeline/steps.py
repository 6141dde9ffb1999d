"""The pipeline steps: each reads its inputs, calls the library, and writes its outputs atomically.

One function per `medxgan <step>` command and per Snakemake rule, registered once with `@step`:
its name, help and arguments build the command line (`medxgan.pipeline.cli`). A step receives a
`Context` (its arguments, settings, device, precision, networks by role, test images, provenance).

Each step imports what it computes with when it runs, so `medxgan --help` and the light steps
load no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from medxgan.config import SOURCE_DEFAULTS, ConfigError, check_results_owner, record_results_owner
from medxgan.data.medical_formats import DEFAULT_SLICE_AXIS
from medxgan.names import DEFAULT_METHODS
from medxgan.pipeline.context import (
    CHUNK,
    CLASSIFIER,
    ENCODER,
    GENERATOR,
    INVERSION,
    MANIFEST,
    Argument,
    Context,
    out,
    out_dir,
    step,
)

log = logging.getLogger(__name__)

RESULTS = Argument("--results", type=Path, default=Path("results"), help="the results folder (default results/)")
DATASETS = Argument("--datasets", nargs="+", required=True, help="dataset names under --results")
EXPLANATIONS = Argument("--explanations", type=Path, nargs="+", required=True, help="heatmap files from explain")


# --- data ---------------------------------------------------------------------------------------

@step("prepare", "generate a built-in synthetic dataset, or prepare a downloaded public one (images, masks, "
      "manifest.csv)", out_dir("folder to write images/, masks/ and manifest.csv to"))
def prepare(ctx: Context) -> None:
    """A built-in dataset is generated; a public one is prepared from its download (fetched first if needed)."""
    from medxgan.data import sources
    from medxgan.data.phantoms import write_phantom_dataset

    s, phantom = ctx.settings, ctx.settings.get("phantom")
    if s.get("source") is not None:
        sources.prepare(s, ctx.args.out_dir)
    elif phantom is not None:
        write_phantom_dataset(phantom["kind"], ctx.args.out_dir, s["data"]["image_size"], phantom["counts"],
                              phantom["positive_fraction"], s["seed"])
    else:
        raise ConfigError("prepare needs a dataset with 'phantom' or 'source' settings; a manifest is read where it is")


@step("download", "fetch a public dataset through its first working route, check every file, write SOURCE.json",
      out_dir("the dataset's folder (data/NAME): downloads/, raw/ and SOURCE.json go there"))
def download(ctx: Context) -> None:
    from medxgan.data import sources

    if ctx.settings.get("source") is None:
        raise ConfigError("download needs a dataset with 'source' settings (a public dataset)")
    sources.download(ctx.settings, ctx.args.out_dir)


def parse_slices(text: str) -> slice:
    """START:STOP (either may be left out) as a slice, for --slices."""
    start, colon, stop = text.partition(":")
    try:
        if not colon:
            raise ValueError
        return slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not START:STOP, e.g. 40:80") from None


VOLUME_SLICING = (  # how a NIfTI volume becomes images, one per slice
    Argument("--slice-axis", type=int, choices=(0, 1, 2), default=DEFAULT_SLICE_AXIS,
             help="the voxel axis a NIfTI volume is sliced across, one image per slice (default: %(default)s, "
                  "axial for most brain MRI)"),
    Argument("--slices", type=parse_slices, default=slice(None), metavar="START:STOP",
             help="the slices of each NIfTI volume to take, START inclusive, STOP exclusive (default: all)"),
)


@step("import-folder", "prepare your own images in ImageFolder layout (ROOT/{train,test}/CLASS/...) into a manifest",
      Argument("root", type=Path, help="ROOT with train/CLASS/ and test/CLASS/ image folders, optional masks/ mirror"),
      Argument("--negative", required=True, help="the negative class's folder name, e.g. normal"),
      Argument("--positive", required=True, help="the positive class's folder name, e.g. covid"),
      out_dir("writes images/, masks/, manifest.csv, dropped.csv there"),
      Argument("--image-size", type=int, choices=(64, 128), default=64, help="side of the prepared images (default 64)"),
      Argument("--channels", type=int, choices=(1, 3), default=1, help="1 grayscale or 3 RGB (default 1)"),
      Argument("--val-fraction", type=float, default=SOURCE_DEFAULTS["val_fraction"],
               help="share of train moved to validation, stratified (default %(default)s)"),
      Argument("--seed", type=int, default=0, help="seed of the validation draw (default 0)"),
      *VOLUME_SLICING, settings=False)
def import_folder(ctx: Context) -> None:
    from medxgan.data.imagefolder import import_folder

    a = ctx.args
    import_folder(a.root, a.negative, a.positive, a.out_dir, a.image_size, a.channels, a.val_fraction, a.seed,
                  a.slice_axis, a.slices)


@step("check-manifest", "check a manifest before any training: images in two splits or with two labels, missing "
      "classes, no test positives, paths leaving its folder (errors); masks on negatives, empty masks",
      MANIFEST, out("JSON report: counts per split and label, warnings"))
def check_manifest(ctx: Context) -> None:
    """Errors stop the run, warnings are logged and kept (medxgan.data.manifest_check). The report's
    folder belongs to the manifest of its first passing check: another manifest is refused there."""
    from medxgan.data.manifest_check import check_manifest
    from medxgan.files import write_json

    d, folder = ctx.settings["data"], ctx.args.out.parent
    check_results_owner(folder, ctx.args.manifest)
    report = check_manifest(ctx.args.manifest, d["negative"], d["positive"], d["image_size"], ctx.settings["seed"])
    record_results_owner(folder, ctx.args.manifest)
    write_json(ctx.args.out, report)


@step("count-test-positives", "count the positive test images, from which a sharded run plans its chunks",
      MANIFEST, out("JSON file with the count"))
def count_test_positives(ctx: Context) -> None:
    from medxgan.files import portable_path, write_json

    write_json(ctx.args.out, {"test_positives": ctx.count_test_positives(),
                              "manifest": portable_path(ctx.args.manifest)})


# --- training -----------------------------------------------------------------------------------

def _train_and_report(ctx: Context, train, name: str, **record) -> None:
    """Train a classifier with `train(train_split, val_split, device)` (always fp32), score it on
    validation and test, and write model.safetensors and metrics.json (with `record` added)."""
    from medxgan.artifacts import save_model
    from medxgan.files import write_json
    from medxgan.train.classifier import evaluate_classifier

    device = ctx.start()
    splits = {split: ctx.split(split) for split in ("train", "val", "test")}
    model, info = train(splits["train"], splits["val"], device)
    report = {split: evaluate_classifier(model, splits[split], device) for split in ("val", "test")}
    log.info("%s: test accuracy %.3f, AUROC %.3f", name, report["test"]["accuracy"], report["test"]["auroc"] or float("nan"))
    save_model(model, ctx.args.out_dir / "model.safetensors", ctx.with_labels(info["spec"]))
    write_json(ctx.args.out_dir / "metrics.json", {**report, "history": info["history"], **record,
                                                   "selected_epoch": info["selected_epoch"], "settings": ctx.settings,
                                                   "provenance": ctx.provenance("fp32")})


@step("train-classifier", "train the classifier C, or import the user's (classifier.pretrained); write its weights "
      "and validation and test accuracy, AUROC, confusion matrix",
      MANIFEST, out_dir("writes model.safetensors and metrics.json"))
def train_classifier(ctx: Context) -> None:
    """Train C, or import the user's (classifier.pretrained): either way it is scored on val and test."""
    from medxgan.nets.user import import_classifier
    from medxgan.train.classifier import train_classifier

    s = ctx.settings
    if s["classifier"]["pretrained"]:
        def bring(train, val, device):
            classifier, spec = import_classifier(s["classifier"], s["data"])
            return classifier.to(device), {"spec": spec, "history": [], "selected_epoch": None}
        _train_and_report(ctx, bring, f"classifier ({s['classifier']['pretrained']})")
        return
    _train_and_report(ctx, lambda train, val, device: train_classifier(
        train, val, s["classifier"], s["data"], s["seed"], device), "classifier")


@step("train-oracle", "train the oracle, a classifier independent of C that judges G's images (its own architecture "
      "and seed)", MANIFEST, out_dir("writes model.safetensors and metrics.json"))
def train_oracle(ctx: Context) -> None:
    from medxgan.train.oracle import oracle_seed, train_oracle

    s = ctx.settings
    _train_and_report(ctx, lambda train, val, device: train_oracle(
        train, val, s["oracle"], s["classifier"], s["data"], s["seed"], device), f"oracle ({s['oracle']['arch']})",
        oracle_seed=oracle_seed(s["seed"], s["oracle"]))


@step("train-gan", "train medXGAN's G and D against the frozen C (checkpointed, resumes after a kill)",
      MANIFEST, CLASSIFIER,
      out_dir("writes generator/discriminator weights, losses.csv/png, summary.json; checkpoint.pt while training"))
def train_gan(ctx: Context) -> None:
    import pandas as pd

    from medxgan.artifacts import save_model, write_csv
    from medxgan.files import write_json
    from medxgan.report import figures
    from medxgan.train.gan import GANTrainer, disentanglement_check

    s, folder, device = ctx.settings, ctx.args.out_dir, ctx.start()
    precision = ctx.precision
    train = ctx.split("train")
    trainer = GANTrainer(ctx.network("classifier"), s["gan"], s["data"], s["seed"], device, precision)
    trainer.fit(train, folder / "checkpoint.pt")
    losses = pd.DataFrame(trainer.losses, columns=GANTrainer.LOSS_COLUMNS)
    G = trainer.generator()
    check = disentanglement_check(G, trainer.C, s["gan"]["disentanglement_samples"], s["seed"], device)
    log.info("disentanglement: %s", check)
    save_model(G, folder / "generator.safetensors", ctx.with_labels(trainer.g_spec))
    save_model(trainer.D, folder / "discriminator.safetensors", trainer.d_spec)
    write_csv(losses, folder / "losses.csv")
    figures.save(figures.gan_losses(losses), folder / "losses.png")
    write_json(folder / "summary.json", {"disentanglement": check, "steps": trainer.step, "settings": s,
                                         "provenance": ctx.provenance(precision)})


@step("train-encoder", "train the encoder E(x) -> (z1, z2) against the frozen G: the inversion's starting codes "
      "(inversion.init: encoder)", MANIFEST, GENERATOR, out_dir("writes model.safetensors and metrics.json"))
def train_encoder(ctx: Context) -> None:
    from medxgan.artifacts import save_model
    from medxgan.files import write_json
    from medxgan.train.encoder import train_encoder

    s, device = ctx.settings, ctx.start()
    encoder, report = train_encoder(ctx.network("generator"), ctx.split("train"), ctx.split("val"), s["encoder"],
                                    s["data"], s["seed"], device)
    log.info("encoder: validation MSE(G(E(x)), x) %.4f", report["val_reconstruction_mse"])
    save_model(encoder, ctx.args.out_dir / "model.safetensors", ctx.with_labels(report.pop("spec")))
    write_json(ctx.args.out_dir / "metrics.json", {**report, "settings": s, "provenance": ctx.provenance("fp32")})


# --- inversion and explanations -----------------------------------------------------------------

@step("invert", "find (z1, z2) for every positive test image; write codes, reconstructions, negative realisations",
      MANIFEST, CLASSIFIER, GENERATOR, ENCODER, out_dir("writes latents.safetensors and inversion.csv"), CHUNK)
def invert(ctx: Context) -> None:
    from medxgan.artifacts import write_inversion
    from medxgan.files import portable_path
    from medxgan.inversion import reconstruct

    s = ctx.settings
    ctx.start()
    precision = ctx.precision
    C, G, E = ctx.network("classifier"), ctx.network("generator"), ctx.encoder()
    data, place = ctx.test_positives_of("inversion")
    record = reconstruct(G, C, data.images, data.rows, s["inversion"], s["seed"], precision, E)
    log.info("reconstruction MSE %.4f, SSIM %.3f; C calls %.1f%% of reconstructions positive, %.1f%% of negative "
             "realisations negative", record.mse.mean(), record.ssim.mean(),
             100 * (record.p_reconstruction >= 0.5).float().mean(), 100 * (record.p_negative < 0.5).float().mean())
    # the manifest relative to the repository root when it lies in it (medxgan.files.portable_path)
    write_inversion(record, data.ids, ctx.args.out_dir, {"manifest": portable_path(ctx.args.manifest), "settings": s,
                                                         "provenance": ctx.provenance(precision)}, place)


@step("explain", "compute the heatmaps of every method of explain.methods for the test positives, in one file",
      MANIFEST, CLASSIFIER, GENERATOR, INVERSION,
      Argument("--method", nargs="+", metavar="METHOD",
               help="only these methods, e.g. latent_ig ig_counterfactual (default: explain.methods); the images, "
                    "networks and inversion are read once for all of them"),
      out("heatmaps file (.safetensors): each method's heatmaps"), CHUNK)
def explain(ctx: Context) -> None:
    from medxgan.artifacts import read_inversion, write_heatmaps
    from medxgan.explainers import EXPLAINERS, build_explainer
    from medxgan.files import progress

    cfg = ctx.settings["explain"]
    methods = ctx.args.method or cfg["methods"]
    unknown = [method for method in methods if method not in EXPLAINERS]
    if unknown:  # before any work: a typo in the last method name wastes no run
        raise ConfigError(f"unknown explanation method {', '.join(map(repr, unknown))}; known: {', '.join(EXPLAINERS)}")
    ctx.start()
    data, place = ctx.test_positives_of("explain")
    record = read_inversion(ctx.args.inversion, data, slice(place["start"], place["stop"]) if place else None)
    C, G = ctx.network("classifier"), record.drawn_by(ctx.network("generator"))
    heatmaps = {}
    for method in progress(methods, desc="explanation methods", unit="method"):
        started = time.perf_counter()
        heatmaps[method] = build_explainer(method, C, G, cfg).attribute(data.images, target=1, latents=record.codes)
        log.info("%s: %d images in %.1f s", method, len(data.images), time.perf_counter() - started)
    write_heatmaps(heatmaps, data.rows, ctx.args.out, place)


@step("gather-inversion", "join the chunks of a sharded inversion into the files one unsharded invert writes",
      Argument("--chunks", type=Path, nargs="+", required=True, help="the folders `invert --chunk` wrote, in order"),
      out_dir("writes latents.safetensors and inversion.csv"), settings=False)
def gather_inversion(ctx: Context) -> None:
    from medxgan.artifacts import gather_inversion

    log.info("gathered %d chunks", gather_inversion(ctx.args.chunks, ctx.args.out_dir))


@step("gather-explanations", "join the chunks of a sharded explain into the file one unsharded explain writes",
      Argument("--chunks", type=Path, nargs="+", required=True, help="the heatmap files `explain --chunk` wrote, in order"),
      out("heatmaps file (.safetensors)"), settings=False)
def gather_explanations(ctx: Context) -> None:
    from medxgan.artifacts import gather_heatmaps

    log.info("gathered %d chunks", gather_heatmaps(ctx.args.chunks, ctx.args.out))


# --- evaluation ---------------------------------------------------------------------------------

@step("evaluate", "score every method's heatmaps against the lesion masks and by perturbation",
      MANIFEST, CLASSIFIER, INVERSION, EXPLANATIONS,
      Argument("--oracle", type=Path,
               help="oracle weights (.safetensors from train-oracle): adds the oracle's verdicts on G's images"),
      Argument("--classifier-metrics", type=Path,
               help="metrics.json from train-classifier: adds C's test accuracy and AUROC to the headline metrics.json"),
      out_dir("writes metrics.csv, metrics_per_image.csv, metrics_curves.csv, metrics_comparisons.csv and "
              "metrics.json (the headline numbers, DVC's metrics)"))
def evaluate(ctx: Context) -> None:
    """The scores per image, their summary (metrics.csv), the curves, the pairwise comparisons, and
    metrics.json: the headline numbers of the summary, with C's test accuracy and AUROC from
    train-classifier's metrics.json when given."""
    from medxgan.artifacts import read_heatmaps, read_inversion, write_csv
    from medxgan.evaluate import scoring
    from medxgan.files import write_json
    from medxgan.train.oracle import oracle_probabilities

    a, s, device = ctx.args, ctx.settings, ctx.start()
    C = ctx.network("classifier")
    data = ctx.test_positives()
    record = read_inversion(a.inversion, data)
    if a.oracle is not None:  # an independent judge of G's images beside C
        record = record.with_(**oracle_probabilities(ctx.network("classifier", a.oracle), data.images, record))
    per_image, curves = scoring.evaluate_explanations(C, data, read_heatmaps(a.explanations), record, s["evaluate"],
                                                      s["seed"], device)
    summary = scoring.summarise(per_image, s["evaluate"], s["seed"])
    write_csv(per_image, a.out_dir / "metrics_per_image.csv")
    write_csv(curves, a.out_dir / "metrics_curves.csv")
    write_csv(summary, a.out_dir / "metrics.csv")
    write_csv(scoring.compare_methods(per_image), a.out_dir / "metrics_comparisons.csv")
    classifier_report = json.loads(a.classifier_metrics.read_text()) if a.classifier_metrics else None
    write_json(a.out_dir / "metrics.json", scoring.headline(summary, classifier_report), sort_keys=False)
    write_json(a.out_dir / "metrics_provenance.json", {"settings": s, "provenance": ctx.provenance()})


@step("check", "sanity check, noise robustness and counterfactual quality of the explanations",
      MANIFEST, CLASSIFIER, GENERATOR, INVERSION,
      Argument("--encoder", type=Path, help=ENCODER.options["help"] + " (the noisy copies are inverted like the test "
                                                                       "images)"),
      out_dir("writes sanity.csv, robustness.csv, counterfactual.csv and their figures"))
def check(ctx: Context) -> None:
    import pandas as pd
    import torch

    from medxgan.artifacts import read_inversion, write_csv
    from medxgan.evaluate import scoring
    from medxgan.files import write_json
    from medxgan.report import figures

    ctx.start()
    s = {**ctx.settings, "precision": ctx.precision}  # the noisy copies' inversions run like the inversion step
    C, G, E = ctx.network("classifier"), ctx.network("generator"), ctx.encoder()
    data = ctx.test_positives()
    record = read_inversion(ctx.args.inversion, data)
    negatives = ctx.split("test", label="negative")
    sample = torch.arange(min(s["checks"]["images"], len(data)))
    tables = {
        "sanity": scoring.sanity_table(C, G, data.subset(sample), record, s),
        "robustness": scoring.robustness_table(C, G, data.subset(sample), s, E, record.subset(sample)),
        "counterfactual": pd.concat([scoring.counterfactual_table(C, data, negatives, record, s), pd.DataFrame(
            scoring.negative_counterfactual_rows(C, G, negatives, s, E))], ignore_index=True),
    }
    for name, table in tables.items():
        write_csv(table, ctx.args.out_dir / f"{name}.csv")
    figures.save(figures.sanity_curves(tables["sanity"]), ctx.args.out_dir / "sanity.png")
    figures.save(figures.robustness_curves(tables["robustness"]), ctx.args.out_dir / "robustness.png")
    write_json(ctx.args.out_dir / "provenance.json", {"settings": s, "provenance": ctx.provenance(s["precision"])})


# --- reports ------------------------------------------------------------------------------------

@step("figures", "draw the paper's pipeline rows, interpolation strip, disentanglement and perturbation figures, the "
      "metrics plot and the deletion/insertion curves", MANIFEST, CLASSIFIER, GENERATOR, INVERSION, EXPLANATIONS,
      Argument("--metrics", type=Path, required=True, help="metrics.csv from evaluate"),
      Argument("--curves", type=Path, required=True, help="metrics_curves.csv from evaluate"),
      Argument("--oracle", type=Path, required=True,
               help="oracle weights (.safetensors from train-oracle): its verdicts on G's images in the "
                    "disentanglement figure"),
      out_dir("folder for the PNG figures"))
def draw_figures(ctx: Context) -> None:
    import pandas as pd

    from medxgan.artifacts import read_heatmaps, read_inversion
    from medxgan.report import figures

    a, s = ctx.args, ctx.settings
    ctx.start()
    C, G, oracle = ctx.network("classifier"), ctx.network("generator"), ctx.network("classifier", a.oracle)
    data = ctx.test_positives()
    record = read_inversion(a.inversion, data)
    heatmaps = read_heatmaps(a.explanations)
    examples = figures.example_indices(data, s["figures"]["examples"])
    figures.save(figures.pipeline_rows(C, data, record, heatmaps, examples), a.out_dir / "pipeline.png")
    figures.save(figures.interpolation_strip(C, record.drawn_by(G), record, examples, s["explain"]["interpolation_points"]),
                 a.out_dir / "interpolation.png")
    figures.save(figures.metrics_bars(pd.read_csv(a.metrics)), a.out_dir / "metrics.png")
    figures.save(figures.faithfulness_curves(pd.read_csv(a.curves)), a.out_dir / "curves.png")
    figures.save(figures.inversion_quality(data, record, s["figures"]["examples"]), a.out_dir / "inversion.png")
    samples = figures.disentanglement_samples(C, oracle, G, s["figures"]["examples"], s["seed"])
    figures.save(figures.disentanglement_grid(samples), a.out_dir / "disentanglement.png")
    fraction = s["evaluate"]["perturbation_fractions"][0]  # the first of the probability-drop metric's fractions
    figures.save(figures.perturbation_rows(C, data, heatmaps, examples, fraction), a.out_dir / "perturbation.png")


@step("summarize", "gather every dataset's metrics into one Markdown/CSV table", RESULTS, DATASETS,
      Argument("--families", nargs="*", default=[], metavar="DATASET=FAMILY",
               help="each dataset's family (the results notebook that shows it), e.g. synthetic-cxr=chest_xray"),
      out("Markdown table; a .csv twin is written beside it"), settings=False)
def summarize(ctx: Context) -> None:
    """One table of every dataset's metrics (with its family, for the notebooks) and the Markdown summary."""
    import pandas as pd

    from medxgan.artifacts import write_csv
    from medxgan.files import atomic_path
    from medxgan.report import tables

    a = ctx.args
    families = dict(pair.split("=", 1) for pair in a.families)
    frames = [pd.read_csv(a.results / name / "metrics.csv").assign(dataset=name, family=families.get(name, ""))
              for name in a.datasets]
    write_csv(pd.concat(frames), a.out.with_suffix(".csv"))
    with atomic_path(a.out) as tmp:
        tmp.write_text(tables.summary_markdown(a.results, a.datasets))


@step("ablation-table", "gather the ablation's runs (GAN variants x seeds) into one table, a Markdown summary and a "
      "figure", RESULTS, DATASETS,
      Argument("--variants", nargs="+", required=True, help="variant names (config ablation.variants)"),
      Argument("--seeds", nargs="+", type=int, required=True, help="the seeds each variant was trained with"),
      Argument("--main-seed", type=int, required=True, help="the main run's seed (for Grad-CAM, IG, random)"),
      out("CSV table; .md and .png twins are written beside it"), settings=False)
def ablation_table(ctx: Context) -> None:
    from medxgan.artifacts import write_csv
    from medxgan.files import atomic_path
    from medxgan.report import ablation, figures

    a = ctx.args
    table = ablation.collect(a.results, a.datasets, a.variants, a.seeds, a.main_seed)
    write_csv(table, a.out)
    with atomic_path(a.out.with_suffix(".md")) as tmp:
        tmp.write_text(ablation.markdown(table))
    figures.save(figures.ablation_summary(table), a.out.with_suffix(".png"))


@step("collect-benchmarks", "gather the jobs' Snakemake benchmark files (time, memory) into one table and figure",
      RESULTS, DATASETS, out("CSV table, one row per job"),
      Argument("--figure", type=Path, required=True, help="PNG bar chart of the jobs' times"), settings=False)
def collect_benchmarks(ctx: Context) -> None:
    from medxgan import hardware
    from medxgan.artifacts import write_csv
    from medxgan.report import figures, runtimes

    a = ctx.args
    table = runtimes.collect(a.results, a.datasets)
    if table.empty:
        raise FileNotFoundError(f"no benchmark files under {a.results}/{{{','.join(a.datasets)}}}/benchmarks/")
    write_csv(table, a.out)
    figures.save(figures.job_times(table, f"{hardware.cpu_model()}, {os.cpu_count()} cores"), a.figure)
    log.info("%d jobs, %.0f s of job time in all", len(table), table.seconds.sum())


@step("notebook", "execute a results notebook (jupytext .py) and render it to HTML",
      Argument("source", type=Path, help="a notebook in jupytext percent format, e.g. notebooks/chest_xray.py"),
      out("the HTML file to write"),
      Argument("--workdir", type=Path, default=Path("."), help="working directory of the notebook (default .)"),
      Argument("--summary", type=Path, help="the run's summary.csv the notebook shows (default results/summary.csv)"),
      settings=False)
def notebook(ctx: Context) -> None:
    from medxgan.report.notebooks import render_notebook  # Jupyter is loaded only for this step

    render_notebook(ctx.args.source, ctx.args.out, ctx.args.workdir, ctx.args.summary)


# --- trained bundles ----------------------------------------------------------------------------

@step("bundle", "gather a dataset's trained C, G (and encoder), settings, model card and checksums into one folder",
      Argument("--results-dir", type=Path, required=True, help="the dataset's results folder, results/DATASET"),
      out("the bundle folder to write, e.g. results/DATASET/bundle"))
def bundle(ctx: Context) -> None:
    """The dataset's trained bundle (medxgan.bundle), for `explain-images` and `MedXGAN.from_bundle`."""
    from medxgan.bundle import write_bundle

    write_bundle(ctx.args.results_dir.name, ctx.args.results_dir, ctx.settings, ctx.args.out)


@step("explain-images", "explain image files or folders of them with a trained bundle: a figure, heatmaps (.npy) and "
      "a CSV row per image",
      Argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER",
               help="image files (PNG, JPEG, BMP, TIFF, DICOM, NIfTI; any size, grey or RGB) or folders searched "
                    "recursively"),
      Argument("--bundle", type=Path, required=True, help="a trained bundle folder, e.g. results/synthetic-cxr/bundle"),
      out("writes figures/NAME.png, heatmaps/NAME_METHOD.npy and explanations.csv there"),
      Argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
               help="explanation methods of explain.methods (default: %(default)s)"),
      Argument("--classifier-factory", metavar="MODULE:FUNCTION",
               help="the factory that builds the bundle's classifier, where it was built by one: a bundle never "
                    "names code to import, so you name the code you trust"),
      *VOLUME_SLICING, settings=False)
def explain_images(ctx: Context) -> None:
    from medxgan.pipeline.explain_images import explain_images

    a = ctx.args
    explain_images(a.images, a.bundle, a.out, a.methods, a.classifier_factory, a.slice_axis, a.slices)
