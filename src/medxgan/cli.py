"""`medxgan <step>`: the pipeline's steps as commands, each runnable by hand or from Snakemake.

Every step takes its settings either as JSON (`--settings`, what the Snakefile passes) or from a
config file and a dataset name (`--config config/config.yaml --dataset synthetic-mri`).

Parsing imports nothing heavy (no torch, no plotting), so `--help` answers at once; each step loads
its modules when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medxgan.config import (PROJECT_SCHEMA, SOURCE_DEFAULTS, ConfigError, add_user_manifest, dataset_settings, load_config,
                            validate_settings)
from medxgan.shards import ShardError, parse_chunk

WITHOUT_SETTINGS = ("summarize", "collect-benchmarks", "ablation-table", "notebook", "gather-inversion", "gather-explanations",
                    "import-folder", "explain-images")
CHUNK_HELP = ("only the positive test images at positions START to STOP-1, one chunk of a sharded run; "
              "START and STOP must be multiples of the step's batch_size (STOP may be the last image's)")

STEP_HELP = {
    "prepare": "generate a built-in synthetic dataset, or prepare a downloaded public one (images, masks, manifest.csv)",
    "download": "fetch a public dataset through its first working route, check every file, write SOURCE.json",
    "import-folder": "prepare your own images in ImageFolder layout (ROOT/{train,test}/CLASS/...) into a manifest",
    "check-manifest": "check a manifest before any training: images in two splits or with two labels, missing "
                      "classes, no test positives, paths leaving its folder (errors); masks on negatives, empty masks",
    "train-classifier": "train the classifier C, or import the user's (classifier.pretrained); write its weights and "
                        "validation and test accuracy, AUROC, confusion matrix",
    "train-oracle": "train the oracle, a classifier independent of C that judges G's images (its own architecture and seed)",
    "train-gan": "train medXGAN's G and D against the frozen C (checkpointed, resumes after a kill)",
    "train-encoder": "train the encoder E(x) -> (z1, z2) against the frozen G: the inversion's starting codes "
                     "(inversion.init: encoder)",
    "invert": "find (z1, z2) for every positive test image; write codes, reconstructions, negative realisations",
    "explain": "compute one method's heatmaps for the test positives",
    "evaluate": "score every method's heatmaps against the lesion masks and by perturbation",
    "figures": "draw the paper's pipeline rows, interpolation strip, disentanglement and perturbation figures, the "
               "metrics plot and the deletion/insertion curves",
    "check": "sanity check, noise robustness and counterfactual quality of the explanations",
    "summarize": "gather every dataset's metrics into one Markdown/CSV table",
    "ablation-table": "gather the ablation's runs (GAN variants x seeds) into one table, a Markdown summary and a figure",
    "collect-benchmarks": "gather the jobs' Snakemake benchmark files (time, memory) into one table and figure",
    "count-test-positives": "count the positive test images, from which a sharded run plans its chunks",
    "gather-inversion": "join the chunks of a sharded inversion into the files one unsharded invert writes",
    "gather-explanations": "join the chunks of a sharded explain into the file one unsharded explain writes",
    "notebook": "execute a results notebook (jupytext .py) and render it to HTML",
    "bundle": "gather a dataset's trained C, G (and encoder), settings, model card and checksums into one folder",
    "explain-images": "explain image files or folders of them with a trained bundle: a figure, heatmaps (.npy) and a "
                      "CSV row per image",
}


ENCODER_HELP = "encoder weights (.safetensors from train-encoder); needed when inversion.init is encoder"


def _settings(args) -> dict:
    if args.settings:
        text = args.settings if args.settings.lstrip().startswith("{") else Path(args.settings).read_text()
        settings = json.loads(text)
        if PROJECT_SCHEMA.is_file():  # a clone of the project; an installed package carries no workflow/
            validate_settings(settings)
        return settings
    if not (args.config and args.dataset):
        raise ConfigError("give --settings JSON, or --config FILE together with --dataset NAME")
    config = load_config(*args.config)
    add_user_manifest(config)
    return dataset_settings(config, args.dataset)


def _chunk_argument(text: str) -> tuple[int, int]:
    try:
        return parse_chunk(text)
    except ConfigError as error:  # argparse then prints this message, not a generic "invalid value"
        raise argparse.ArgumentTypeError(str(error)) from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medxgan",
        description="medXGAN: explain a binary medical image classifier through a generative latent space, "
                    "and compare with Grad-CAM and Integrated Gradients. Each subcommand is one pipeline step; "
                    "`snakemake --cores N` runs them all in order.",
    )
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=STEP_HELP[name], description=STEP_HELP[name])
        if name not in WITHOUT_SETTINGS:
            p.add_argument("--settings", help="the step's settings as JSON text or a JSON file (the Snakefile passes this)")
            p.add_argument("--config", nargs="+", metavar="FILE",
                           help="config files such as config/config.yaml, later ones laid over earlier ones "
                                "(instead of --settings)")
            p.add_argument("--dataset", help="the dataset entry of --config to use")
            p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
        return p

    def inputs(p, *names):
        helps = {
            "manifest": "the dataset's manifest.csv (columns path,label,split,mask_path,patient_id[,healthy_twin_path])",
            "classifier": "classifier weights (.safetensors from train-classifier)",
            "generator": "generator weights (.safetensors from train-gan)",
            "inversion": "latents.safetensors from invert",
        }
        for name in names:
            p.add_argument(f"--{name}", type=Path, required=True, help=helps[name])

    p = step("prepare")
    p.add_argument("--out-dir", type=Path, required=True, help="folder to write images/, masks/ and manifest.csv to")
    p = step("download")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="the dataset's folder (data/NAME): downloads/, raw/ and SOURCE.json go there")
    p = step("import-folder")
    p.add_argument("root", type=Path, help="ROOT with train/CLASS/ and test/CLASS/ image folders, optional masks/ mirror")
    p.add_argument("--negative", required=True, help="the negative class's folder name, e.g. normal")
    p.add_argument("--positive", required=True, help="the positive class's folder name, e.g. covid")
    p.add_argument("--out-dir", type=Path, required=True, help="writes images/, masks/, manifest.csv, dropped.csv there")
    p.add_argument("--image-size", type=int, choices=(64, 128), default=64, help="side of the prepared images (default 64)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1 grayscale or 3 RGB (default 1)")
    p.add_argument("--val-fraction", type=float, default=SOURCE_DEFAULTS["val_fraction"],
                   help="share of train moved to validation, stratified (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation draw (default 0)")
    p = step("check-manifest")
    inputs(p, "manifest")
    p.add_argument("--out", type=Path, required=True, help="JSON report: counts per split and label, warnings")
    p = step("train-classifier")
    inputs(p, "manifest")
    p.add_argument("--out-dir", type=Path, required=True, help="writes model.safetensors and metrics.json")
    p = step("train-oracle")
    inputs(p, "manifest")
    p.add_argument("--out-dir", type=Path, required=True, help="writes model.safetensors and metrics.json")
    p = step("train-gan")
    inputs(p, "manifest", "classifier")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="writes generator/discriminator weights, losses.csv/png, summary.json; checkpoint.pt while training")
    p = step("train-encoder")
    inputs(p, "manifest", "generator")
    p.add_argument("--out-dir", type=Path, required=True, help="writes model.safetensors and metrics.json")
    p = step("invert")
    inputs(p, "manifest", "classifier", "generator")
    p.add_argument("--encoder", type=Path, help=ENCODER_HELP)
    p.add_argument("--out-dir", type=Path, required=True, help="writes latents.safetensors and inversion.csv")
    p.add_argument("--chunk", type=_chunk_argument, metavar="START:STOP", help=CHUNK_HELP)
    p = step("explain")
    inputs(p, "manifest", "classifier", "generator", "inversion")
    p.add_argument("--method", required=True, help="an explanation method of explain.methods, e.g. latent_ig or ig_counterfactual")
    p.add_argument("--out", type=Path, required=True, help="heatmaps file (.safetensors)")
    p.add_argument("--chunk", type=_chunk_argument, metavar="START:STOP", help=CHUNK_HELP)
    p = step("count-test-positives")
    inputs(p, "manifest")
    p.add_argument("--out", type=Path, required=True, help="JSON file with the count")
    p = step("gather-inversion")
    p.add_argument("--chunks", type=Path, nargs="+", required=True,
                   help="the folders `invert --chunk` wrote, in order")
    p.add_argument("--out-dir", type=Path, required=True, help="writes latents.safetensors and inversion.csv")
    p = step("gather-explanations")
    p.add_argument("--chunks", type=Path, nargs="+", required=True,
                   help="the heatmap files `explain --chunk` wrote for one method, in order")
    p.add_argument("--out", type=Path, required=True, help="heatmaps file (.safetensors)")
    p = step("evaluate")
    inputs(p, "manifest", "classifier", "inversion")
    p.add_argument("--explanations", type=Path, nargs="+", required=True, help="heatmap files from explain")
    p.add_argument("--oracle", type=Path,
                   help="oracle weights (.safetensors from train-oracle): adds the oracle's verdicts on G's images")
    p.add_argument("--classifier-metrics", type=Path,
                   help="metrics.json from train-classifier: adds C's test accuracy and AUROC to the headline "
                        "metrics.json")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="writes metrics.csv, metrics_per_image.csv, metrics_curves.csv, metrics_comparisons.csv and "
                        "metrics.json (the headline numbers, DVC's metrics)")
    p = step("figures")
    inputs(p, "manifest", "classifier", "generator", "inversion")
    p.add_argument("--explanations", type=Path, nargs="+", required=True, help="heatmap files from explain")
    p.add_argument("--metrics", type=Path, required=True, help="metrics.csv from evaluate")
    p.add_argument("--curves", type=Path, required=True, help="metrics_curves.csv from evaluate")
    p.add_argument("--oracle", type=Path, required=True,
                   help="oracle weights (.safetensors from train-oracle): its verdicts on G's images in the "
                        "disentanglement figure")
    p.add_argument("--out-dir", type=Path, required=True, help="folder for the PNG figures")
    p = step("check")
    inputs(p, "manifest", "classifier", "generator", "inversion")
    p.add_argument("--encoder", type=Path, help=ENCODER_HELP + " (the noisy copies are inverted like the test images)")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="writes sanity.csv, robustness.csv, counterfactual.csv and their figures")
    p = step("bundle")
    p.add_argument("--results-dir", type=Path, required=True, help="the dataset's results folder, results/DATASET")
    p.add_argument("--out", type=Path, required=True, help="the bundle folder to write, e.g. results/DATASET/bundle")
    p = step("explain-images")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files (PNG, JPEG, BMP, TIFF; any size, grey or RGB) or folders searched recursively")
    p.add_argument("--bundle", type=Path, required=True, help="a trained bundle folder, e.g. results/synthetic-cxr/bundle")
    p.add_argument("--out", type=Path, required=True,
                   help="writes figures/NAME.png, heatmaps/NAME_METHOD.npy and explanations.csv there")
    p.add_argument("--methods", nargs="+", default=["difference", "latent_ig", "ig_counterfactual", "gradcam", "ig"],
                   help="explanation methods of explain.methods (default: %(default)s)")
    p.add_argument("--classifier-factory", metavar="MODULE:FUNCTION",
                   help="the factory that builds the bundle's classifier, where it was built by one: a bundle never "
                        "names code to import, so you name the code you trust")
    p = step("summarize")
    p.add_argument("--results", type=Path, default=Path("results"), help="the results folder (default results/)")
    p.add_argument("--datasets", nargs="+", required=True, help="dataset names under --results")
    p.add_argument("--families", nargs="*", default=[], metavar="DATASET=FAMILY",
                   help="each dataset's family (the results notebook that shows it), e.g. synthetic-cxr=chest_xray")
    p.add_argument("--out", type=Path, required=True, help="Markdown table; a .csv twin is written beside it")
    p = step("ablation-table")
    p.add_argument("--results", type=Path, default=Path("results"), help="the results folder (default results/)")
    p.add_argument("--datasets", nargs="+", required=True, help="dataset names under --results")
    p.add_argument("--variants", nargs="+", required=True, help="variant names (config ablation.variants)")
    p.add_argument("--seeds", nargs="+", type=int, required=True, help="the seeds each variant was trained with")
    p.add_argument("--main-seed", type=int, required=True, help="the main run's seed (for Grad-CAM, IG, random)")
    p.add_argument("--out", type=Path, required=True, help="CSV table; .md and .png twins are written beside it")
    p = step("collect-benchmarks")
    p.add_argument("--results", type=Path, default=Path("results"), help="the results folder (default results/)")
    p.add_argument("--datasets", nargs="+", required=True, help="dataset names under --results")
    p.add_argument("--out", type=Path, required=True, help="CSV table, one row per job")
    p.add_argument("--figure", type=Path, required=True, help="PNG bar chart of the jobs' times")
    p = step("notebook")
    p.add_argument("source", type=Path, help="a notebook in jupytext percent format, e.g. notebooks/chest_xray.py")
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    p.add_argument("--workdir", type=Path, default=Path("."), help="working directory of the notebook (default .)")
    p.add_argument("--summary", type=Path, help="the run's summary.csv the notebook shows (default results/summary.csv)")
    return parser


def run(args) -> None:
    from medxgan import steps  # torch and the plotting stack load here, not for --help

    if args.step == "summarize":
        families = dict(pair.split("=", 1) for pair in args.families)
        steps.summarize_step(args.results, args.datasets, families, args.out)
        return
    if args.step == "gather-inversion":
        steps.gather_inversion_step(args.chunks, args.out_dir)
        return
    if args.step == "gather-explanations":
        steps.gather_explanations_step(args.chunks, args.out)
        return
    if args.step == "ablation-table":
        steps.ablation_table_step(args.results, args.datasets, args.variants, args.seeds, args.main_seed, args.out)
        return
    if args.step == "collect-benchmarks":
        steps.collect_benchmarks_step(args.results, args.datasets, args.out, args.figure)
        return
    if args.step == "explain-images":
        from medxgan.explain_images import explain_images

        explain_images(args.images, args.bundle, args.out, args.methods, args.classifier_factory)
        return
    if args.step == "import-folder":
        from medxgan.data.imagefolder import import_folder

        import_folder(args.root, args.negative, args.positive, args.out_dir, args.image_size, args.channels,
                      args.val_fraction, args.seed)
        return
    if args.step == "notebook":
        from medxgan.notebooks import render_notebook  # Jupyter is loaded only for this step

        render_notebook(args.source, args.out, args.workdir, args.summary)
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    s = _settings(args)
    if args.step == "prepare":
        steps.prepare(s, args.out_dir)
    elif args.step == "download":
        steps.download(s, args.out_dir)
    elif args.step == "check-manifest":
        steps.check_manifest_step(s, args.manifest, args.out)
    elif args.step == "train-classifier":
        steps.train_classifier_step(s, args.manifest, args.out_dir)
    elif args.step == "train-oracle":
        steps.train_oracle_step(s, args.manifest, args.out_dir)
    elif args.step == "train-gan":
        steps.train_gan_step(s, args.manifest, args.classifier, args.out_dir)
    elif args.step == "train-encoder":
        steps.train_encoder_step(s, args.manifest, args.generator, args.out_dir)
    elif args.step == "invert":
        steps.invert_step(s, args.manifest, args.classifier, args.generator, args.out_dir, args.chunk, args.encoder)
    elif args.step == "explain":
        steps.explain_step(s, args.manifest, args.classifier, args.generator, args.inversion, args.method, args.out,
                           args.chunk)
    elif args.step == "count-test-positives":
        steps.count_step(s, args.manifest, args.out)
    elif args.step == "evaluate":
        steps.evaluate_step(s, args.manifest, args.classifier, args.inversion, args.explanations, args.out_dir,
                            args.oracle, args.classifier_metrics)
    elif args.step == "bundle":
        steps.bundle_step(s, args.results_dir, args.out)
    elif args.step == "check":
        steps.check_step(s, args.manifest, args.classifier, args.generator, args.inversion, args.out_dir,
                         args.encoder)
    elif args.step == "figures":
        steps.figures_step(s, args.manifest, args.classifier, args.generator, args.inversion, args.explanations,
                           args.metrics, args.curves, args.oracle, args.out_dir)


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """The errors that mean bad input, reported in one line without a traceback. Imported only
    once a step failed (their modules load torch)."""
    from medxgan.data.download import DataSourceError
    from medxgan.data.manifest import ManifestError
    from medxgan.models import InputFileError

    return ConfigError, ManifestError, ShardError, DataSourceError, InputFileError, FileNotFoundError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except Exception as error:
        if not isinstance(error, _bad_input_errors()):
            raise
        logging.getLogger("medxgan").error("%s failed: %s", args.step, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
