"""Write `dvc.yaml` from the Snakemake DAG, so DVC's stages and Snakemake's rules cannot drift apart.

    python workflow/make_dvc_yaml.py            # (re)write dvc.yaml from the default DAG
    python workflow/make_dvc_yaml.py --check    # exit 1, with a diff, when dvc.yaml is out of date

One DVC stage per Snakemake rule of the default DAG (`rule all`), in the DAG's order; a rule that
runs once per dataset becomes a `foreach` over the datasets. A stage's command asks Snakemake for
that rule's outputs and allows no other rule to run, so every command line lives only in
workflow/rules/ and DVC decides what is out of date. What each stage records:

- deps: the jobs' input files;
- params: the config keys Snakemake puts in the rule's `settings` (so a change reruns the same
  steps in both tools), plus the dataset's whole entry `datasets.<name>`: an override there may
  touch any section, and DVC cannot name a key that is absent, so it reruns that dataset's stages.
  A rule over all datasets with other params (summarize: names and families) watches `datasets`;
- outs: the jobs' output files; a dataset's headline numbers (results/<dataset>/metrics.json, from
  evaluate) as `metrics`, kept in git (`cache: false`) so `dvc metrics diff` compares commits, and PNG
  figures as `plots`. Every other JSON file (provenance, reports) is a plain out. A rule that writes
  a folder beside its declared output (prepare: images and masks beside manifest.csv) has that
  folder tracked instead, so a restored dataset is complete.

Beside the stages, a top-level `plots:` list names the tables `dvc plots show` and `dvc plots diff`
draw with their x and y columns, per dataset: the GAN's losses per step and the deletion/insertion
curves (mean over the test images per method, with workflow/dvc_plots/curves.json).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import sys
from pathlib import Path, PurePosixPath

import yaml

from medxgan.config import SECTIONS  # the sections `defaults` holds, as the Snakefile reads them

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "config/config.yaml"
# Rules whose command writes the whole folder of their declared output file.
FOLDER_OUTPUTS = {"prepare"}
ITEM = "${item}"
METRICS = "results/{dataset}/metrics.json"  # evaluate's headline numbers, the only DVC metrics
# Tables drawn as DVC plots, with the columns on each axis (the GAN's losses: GANTrainer.LOSS_COLUMNS
# without D's outputs d_real and d_fake; the curves: evaluation.CURVE_COLUMNS, one row per image).
PLOTS = {
    "results/{dataset}/gan/losses.csv": {
        "x": "step", "y": ["d_loss", "g_adversarial", "g_classifier", "g_proximity", "g_mask", "g_reconstruction"],
        "template": "linear", "title": "GAN losses ({dataset})", "x_label": "GAN step", "y_label": "loss"},
    "results/{dataset}/metrics_curves.csv": {
        "x": "fraction", "y": "p_positive", "template": "workflow/dvc_plots/curves.json",
        "title": "Deletion and insertion curves ({dataset})", "x_label": "share of pixels deleted or inserted",
        "y_label": "C's positive probability (mean over images)"},
}
HEADER = """\
# Generated from the Snakemake DAG by `python workflow/make_dvc_yaml.py` (or `make dvc.yaml`);
# do not edit by hand. Each stage runs one Snakemake rule on its targets, so the commands live only
# in workflow/rules/; tests/test_dvc.py fails when this file and the DAG disagree.
"""


def dag_jobs(root: Path) -> tuple[list, dict]:
    """The jobs of the default target, in topological order, and the config they were planned with."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import DAGSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1),
                                   snakefile=root / "workflow" / "Snakefile", workdir=root)
        # The DAG object is not part of Snakemake's public API; these are the calls its own
        # `--summary` makes. forceall: every job of the DAG, whatever exists on disk.
        workflow = workflow_api.dag(DAGSettings(forceall=True)).workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        # Jobs of one level come in no fixed order: sort by level, the rule's place in the
        # Snakefile, then output path, so the same DAG always gives the same file.
        rule_order = {rule.name: i for i, rule in enumerate(workflow.rules)}
        jobs = sorted(((depth, rule_order[job.rule.name], str(job.output[0])), job)
                      for depth, level in enumerate(workflow.dag.toposorted()) for job in level if job.output)
        return [job for _, job in jobs], workflow.config


def dataset_of(job, datasets: list[str]) -> str | None:
    names = {value for value in job.wildcards_dict.values() if value in datasets}
    if len(names) > 1:
        raise SystemExit(f"rule {job.rule.name}: wildcards {dict(job.wildcards_dict)} name several datasets")
    return names.pop() if names else None


def tracked(path: str, rule: str) -> str:
    return str(PurePosixPath(path).parent) if rule in FOLDER_OUTPUTS else path


def config_keys(job, config: dict) -> list[str]:
    """config.yaml keys behind the rule's `settings` JSON (see medxgan.config.step_settings)."""
    settings = getattr(job.params, "settings", None)  # params are a Namedlist: names are attributes
    if settings is None:
        return []
    keys = []
    for key in json.loads(settings):
        if key in SECTIONS:
            keys.append(f"defaults.{key}")
        elif key in config:  # run-wide: seed, device
            keys.append(key)
        # else from the dataset's entry (phantom, source), which its stages watch whole
    return keys


def stage(jobs: list, config: dict, folder_of: dict[str, str], dataset: str | None = None,
          label: str | None = None) -> dict:
    """One stage running `jobs` (all of one rule, and of `dataset` when set), with the dataset's
    name written as `label` (`${item}` in a foreach)."""
    rule, label = jobs[0].rule.name, label or dataset

    def named(path: str) -> str:
        return "/".join(label if part == dataset else part for part in path.split("/"))

    def unique(items) -> list:  # a set that keeps the order
        return list(dict.fromkeys(items))

    outputs = unique(named(tracked(str(f), rule)) for job in jobs for f in job.output)
    deps = unique(named(folder_of.get(str(f), str(f))) for job in jobs for f in job.input)
    keys = unique(key for job in jobs for key in config_keys(job, config))
    if dataset:
        keys.append(f"datasets.{label}")
    elif any(set(job.params.keys()) - {"settings"} for job in jobs):  # params besides settings
        keys.append("datasets")  # summarize's: the datasets' names and families, from their entries
    targets = " ".join(named(str(job.output[0])) for job in jobs)
    entry = {"cmd": f"snakemake --cores all --allowed-rules {rule} -- {targets}", "deps": deps}
    if keys:
        entry["params"] = [{CONFIG: sorted(keys)}]
    headline = METRICS.format(dataset=label) if label else None
    entry["outs"] = [f for f in outputs if f != headline and not f.endswith(".png")]
    entry["metrics"] = [{f: {"cache": False}} for f in outputs if f == headline]
    entry["plots"] = [f for f in outputs if f.endswith(".png")]
    return {key: value for key, value in entry.items() if value}


def plot_definitions(outputs: set[str], datasets: list[str]) -> list[dict]:
    """The top-level `plots:` entries: each table of PLOTS that the DAG writes, per dataset."""
    definitions = []
    for dataset in datasets:
        for pattern, props in PLOTS.items():
            path = pattern.format(dataset=dataset)
            if path in outputs:
                filled = {key: value.format(dataset=dataset) if key == "title" else value for key, value in props.items()}
                definitions.append({path: copy.deepcopy(filled)})  # a copy each: no YAML anchors in dvc.yaml
    return definitions


def dvc_stages(root: Path = ROOT) -> dict:
    jobs, config = dag_jobs(root)
    datasets = list(config["datasets"])
    folder_of = {str(f): tracked(str(f), job.rule.name) for job in jobs for f in job.output}
    by_rule: dict[str, list] = {}
    for job in jobs:
        by_rule.setdefault(job.rule.name, []).append(job)
    stages = {}
    for rule, rule_jobs in by_rule.items():
        per_dataset: dict[str | None, list] = {}
        for job in rule_jobs:
            per_dataset.setdefault(dataset_of(job, datasets), []).append(job)
        if None in per_dataset:
            if len(per_dataset) > 1:
                raise SystemExit(f"rule {rule}: some jobs belong to a dataset and some do not")
            stages[rule] = stage(rule_jobs, config, folder_of)
            continue
        names = [d for d in datasets if d in per_dataset]
        templates = [stage(per_dataset[d], config, folder_of, d, ITEM) for d in names]
        if all(t == templates[0] for t in templates):
            stages[rule] = {"foreach": names, "do": templates[0]}
        else:  # datasets configured differently (e.g. other explanation methods): one stage each
            stages.update({f"{rule}-{d}": stage(per_dataset[d], config, folder_of, d) for d in names})
    document = {"stages": stages}
    if plots := plot_definitions({str(f) for job in jobs for f in job.output}, datasets):
        document["plots"] = plots
    return document


def render(document: dict) -> str:
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="project folder holding workflow/ and config/")
    parser.add_argument("--check", action="store_true", help="compare with the existing dvc.yaml instead of writing")
    args = parser.parse_args(argv)
    text = render(dvc_stages(args.root.resolve()))
    target = args.root / "dvc.yaml"
    if not args.check:
        target.write_text(text)
        return 0
    current = target.read_text() if target.is_file() else ""
    if current == text:
        return 0
    sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                               "dvc.yaml", "generated from the Snakemake DAG"))
    print("dvc.yaml does not match the Snakemake DAG: run `python workflow/make_dvc_yaml.py`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
