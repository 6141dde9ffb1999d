"""DVC beside Snakemake, with the real dvc and snakemake commands.

- dvc.yaml and the Snakemake DAG of the default config track the same outputs, and dvc.yaml is what
  workflow/make_dvc_yaml.py writes from that DAG (so the two cannot drift apart);
- `dvc repro` runs the pipeline once and then has nothing to do; a changed inversion setting reruns
  only inversion and what depends on it;
- `dvc push` to a local-folder remote, then `make pull`'s script in a fresh clone restores data,
  weights and results, and Snakemake then has nothing to do;
- `dvc metrics show` and `dvc metrics diff` compare each dataset's headline numbers (metrics.json,
  kept in git), not provenance, and `dvc plots` draws the GAN's losses and the deletion/insertion
  curves from their tables; recorded paths are relative to the repository.

The runs use the end-to-end tests' tiny configuration (workflow_runs.py) on one dataset, with
dvc.yaml written for that config by the same generator: DVC runs one stage at a time, each a Snakemake call that starts
`medxgan` anew, so one dataset keeps them to about two minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import pytest
import yaml
from workflow_runs import TINY

from medxgan.config import merge

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATASET = "synthetic-mri"  # the only dataset of the tiny runs
PROJECT_FILES = ("config", "workflow", "notebooks", "dvc.yaml", ".dvcignore", ".gitignore")
WEIGHTS = (f"results/{DATASET}/classifier/model.safetensors", f"results/{DATASET}/gan/generator.safetensors")
HEADLINE = f"results/{DATASET}/metrics.json"  # the evaluate step's headline numbers: DVC's only metrics, in git


def run(cwd: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    # HOME and DVC's site cache beside the repository, so nothing is read or written outside tmp_path.
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd.parent), "DVC_NO_ANALYTICS": "1",
           "DVC_SITE_CACHE_DIR": str(site_cache(cwd)),
           "GIT_AUTHOR_NAME": "medxgan", "GIT_AUTHOR_EMAIL": "medxgan@example.org",
           "GIT_COMMITTER_NAME": "medxgan", "GIT_COMMITTER_EMAIL": "medxgan@example.org"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def site_cache(root: Path) -> Path:
    return root.parent / "dvc-site-cache"


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def copy_project(dest: Path) -> Path:
    """The files a user's clone holds that the workflow and DVC read (the package is installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, dest / name)
    shutil.rmtree(dest / "workflow" / "__pycache__", ignore_errors=True)
    for folder in ("data", "results"):
        (dest / folder).mkdir()
        (dest / folder / ".gitkeep").touch()
    return dest


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stages_run(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output(result)))


def snakemake_dry_run(root: Path) -> str:
    return output(run(root, "snakemake", "--cores", "1", "-n"))


# ---------------------------------------------------------------------------------------------
# dvc.yaml against the Snakemake DAG of the default config (no step runs)


def snakemake_outputs(root: Path) -> set[str]:
    """Every output file of the default DAG, as `snakemake --summary` lists them."""
    summary = run(root, "snakemake", "--cores", "1", "--dry-run", "--forceall", "--summary", "--nolock").stdout
    lines = [line.split("\t") for line in summary.splitlines()]
    header = next(i for i, cells in enumerate(lines) if cells[0] == "output_file")
    return {cells[0] for cells in lines[header + 1:] if cells[0]}


def dvc_outputs(root: Path) -> set[str]:
    """Every out, metric and plot of dvc.yaml's stages, as DVC resolves them (foreach expanded)."""
    from dvc.repo import Repo

    with Repo(str(root), uninitialized=True, config={"core": {"site_cache_dir": str(site_cache(root))}}) as repo:
        return {str(PurePosixPath(out.def_path)) for stage in repo.index.stages for out in stage.outs}


def drift(root: Path) -> tuple[set[str], set[str]]:
    """(Snakemake outputs no DVC out covers, DVC outs that hold no Snakemake output).

    A DVC out covers a Snakemake output when it is that file or a folder holding it (prepare's
    folder of images beside its manifest)."""
    snakemake, dvc = snakemake_outputs(root), dvc_outputs(root)

    def covers(out: str, path: str) -> bool:
        return path == out or path.startswith(out + "/")

    only_snakemake = {path for path in snakemake if not any(covers(out, path) for out in dvc)}
    only_dvc = {out for out in dvc if not any(covers(out, path) for path in snakemake)}
    return only_snakemake, only_dvc


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "checkout")


def test_dvc_yaml_and_the_snakemake_dag_track_the_same_outputs(checkout: Path):
    only_snakemake, only_dvc = drift(checkout)
    assert not only_snakemake, f"Snakemake outputs missing from dvc.yaml: {sorted(only_snakemake)}"
    assert not only_dvc, f"dvc.yaml outs no Snakemake rule writes: {sorted(only_dvc)}"
    assert len(dvc_outputs(checkout)) > 40  # every step of both datasets, not an empty file


def test_drift_is_caught_both_ways(checkout: Path):
    rules = checkout / "workflow" / "rules" / "models.smk"
    text = rules.read_text()
    first_output = re.search(r"\n( +)output:\n", text)
    assert first_output, "models.smk has no output: block to extend"
    indent = first_output.group(1) * 2
    rules.write_text(text[:first_output.end()] + f'{indent}extra="results/{{dataset}}/extra.txt",\n'
                     + text[first_output.end():])
    dvc_yaml = yaml.safe_load((checkout / "dvc.yaml").read_text())
    summary = dvc_yaml["stages"]["summarize"]["outs"]
    dropped = summary.pop()
    (checkout / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))

    only_snakemake, only_dvc = drift(checkout)
    assert only_snakemake == {"results/synthetic-cxr/extra.txt", "results/synthetic-mri/extra.txt", dropped}
    assert not only_dvc
    check = run(checkout, sys.executable, "workflow/make_dvc_yaml.py", "--check", check=False)
    assert check.returncode == 1 and "extra.txt" in check.stdout and "make_dvc_yaml.py" in check.stderr


def test_dvc_yaml_is_what_the_generator_writes_from_the_dag(checkout: Path):
    check = run(checkout, sys.executable, "workflow/make_dvc_yaml.py", "--check", check=False)
    assert check.returncode == 0, f"dvc.yaml is out of date; run `make dvc.yaml`:\n{check.stdout}{check.stderr}"
    stages = yaml.safe_load((checkout / "dvc.yaml").read_text())["stages"]
    invert = stages["invert"]
    assert invert["foreach"] == ["synthetic-cxr", "synthetic-mri"]
    assert invert["do"]["cmd"].startswith("snakemake ") and "--allowed-rules invert" in invert["do"]["cmd"]
    params = invert["do"]["params"][0]["config/config.yaml"]
    assert "defaults.inversion" in params and "defaults.gan" not in params


# ---------------------------------------------------------------------------------------------
# dvc repro, push and pull on the tiny config


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> SimpleNamespace:
    """A git repository of the project on the tiny config, reproduced by `dvc repro` and pushed
    to a local-folder remote."""
    root = copy_project(tmp_path_factory.mktemp("dvc") / "project")
    config = merge(yaml.safe_load((root / "config" / "config.yaml").read_text()), TINY)
    config["datasets"] = {DATASET: config["datasets"][DATASET]}
    # the maps the headline metrics and the plots are checked for: DVC's stages, not each
    # method, are on trial here, and every method costs time in each of the explain stage's runs
    config["defaults"]["explain"]["methods"] = ["difference", "latent_ig", "gradcam", "ig"]
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    remote = root.parent / "remote"
    remote.mkdir()

    run(root, "git", "init", "--quiet")
    run(root, "dvc", "init", "--quiet")
    run(root, sys.executable, "workflow/make_dvc_yaml.py")  # dvc.yaml for this config's DAG
    run(root, "dvc", "remote", "add", "--default", "shared", str(remote))
    run(root, "git", "add", "--all")
    run(root, "git", "commit", "--quiet", "-m", "tiny project")
    first = run(root, "dvc", "repro")
    run(root, "git", "add", "dvc.lock", HEADLINE)  # metrics with cache: false live in git, as README says
    run(root, "git", "commit", "--quiet", "-m", "results")
    run(root, "dvc", "push")
    return SimpleNamespace(root=root, remote=remote, first=first,
                           weights={name: digest(root / name) for name in WEIGHTS})


def stale_stages(root: Path) -> set[str]:
    return set(json.loads(run(root, "dvc", "status", "--json").stdout))


def planned_rules(dry_run: str) -> set[str]:
    """Rule names of the `Job stats` table of a Snakemake dry run (none when nothing is to be done)."""
    if "Job stats:" not in dry_run:
        return set()
    table = dry_run.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0] for line in table.splitlines()[3:] if line.split() and line.split()[0] != "total"}


def neighbours(root: Path, name: str) -> tuple[set[str], set[str]]:
    """The stages `name` depends on, directly or not, and those that depend on it, from DVC's graph."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root), config={"core": {"site_cache_dir": str(site_cache(root))}}) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        (stage,) = [s for s in graph if s.name == name]
        return {s.name for s in nx.descendants(graph, stage)}, {s.name for s in nx.ancestors(graph, stage)}


def clone(project: SimpleNamespace, dest: Path) -> Path:
    run(dest.parent, "git", "clone", "--quiet", str(project.root), str(dest))
    return dest


def test_repro_runs_every_stage_then_nothing(project):
    stages = set(run(project.root, "dvc", "stage", "list", "--name-only").stdout.split())
    assert {f"train_gan@{DATASET}", f"invert@{DATASET}", "summarize"} <= stages
    assert stages_run(project.first) == stages
    for name in (*WEIGHTS, f"results/{DATASET}/inversion/latents.safetensors", f"results/{DATASET}/metrics.csv",
                 f"results/{DATASET}/figures/pipeline.png", "results/summary.md", f"data/{DATASET}/manifest.csv"):
        assert (project.root / name).stat().st_size > 0, name

    again = run(project.root, "dvc", "repro")
    assert not stages_run(again), output(again)
    assert "Data and pipelines are up to date" in output(run(project.root, "dvc", "status"))
    assert "Nothing to be done" in snakemake_dry_run(project.root)  # DVC ran Snakemake: both agree


def test_metrics_and_plots_show(project, tmp_path: Path):
    """`dvc metrics show` lists the headline numbers alone (no provenance, settings or other reports);
    `dvc plots show` draws the figures and, from their tables, the GAN's losses per step and the
    deletion/insertion curves."""
    metrics = run(project.root, "dvc", "metrics", "show").stdout
    header = metrics.splitlines()[0].split()
    assert header[0] == "Path" and HEADLINE in metrics
    assert {"classifier.test.accuracy", "classifier.test.auroc", "inversion.reconstruction_ssim.mean",
            "difference.pointing_game.mean", "latent_ig.mask_auroc.ci_low",
            "random.deletion_auc.ci_high"} <= set(header)
    assert all(column.split(".")[-1] in ("mean", "ci_low", "ci_high", "accuracy", "auroc") for column in header[1:])
    for other in ("torch_threads", "cpu_count", "provenance", "settings", "classifier/metrics.json", "summary.json"):
        assert other not in metrics, other
    shown = json.loads(run(project.root, "dvc", "metrics", "show", "--json").stdout)
    (workspace,) = shown.values()  # the one revision shown: the workspace
    assert list(workspace["data"]) == [HEADLINE]

    run(project.root, "dvc", "plots", "show", "--out", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    assert f"results_{DATASET}_figures_pipeline.png" in page and f"results_{DATASET}_gan_losses.png" in page
    plots = json.loads(run(project.root, "dvc", "plots", "show", "--json").stdout)["data"]
    losses = plots[f"results/{DATASET}/gan/losses.csv"][0]["content"]
    assert losses["encoding"]["x"]["field"] == "step"
    assert {"d_loss", "g_classifier"} <= {point["field"] for point in losses["data"]["values"]}
    curves = plots[f"results/{DATASET}/metrics_curves.csv"][0]["content"]
    assert {point["method"] for point in curves["data"]["values"]} >= {"difference", "gradcam", "random"}
    assert curves["facet"]["column"]["field"] == "curve"  # workflow/dvc_plots/curves.json: mean per method


def flat(numbers: dict, prefix: str = "") -> dict:
    """metrics.json's leaves under DVC's dotted names."""
    leaves = {}
    for key, value in numbers.items():
        leaves |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return leaves


def test_metrics_diff_shows_two_seeds_headline_numbers_side_by_side(project, tmp_path: Path):
    """The committed run against a second one at another seed, with `dvc metrics diff`.

    A second full run would take as long again, so the second run redoes only the evaluate stage
    (`dvc repro --single-item`) with `seed` changed: the bootstrap intervals and the random reference
    heatmaps are drawn from the seed, so the explanation scores move, while C's test scores (from the
    committed run's training) stay. The diff then shows, per headline number, HEAD's value beside the
    workspace's and the change, and nothing but headline numbers."""
    copy = clone(project, tmp_path / "clone")
    run(copy, "workflow/dvc_pull.sh")
    config_path = copy / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["seed"] += 1
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    old = flat(json.loads((copy / HEADLINE).read_text()))
    rerun = run(copy, "dvc", "repro", "--single-item", f"evaluate@{DATASET}")
    assert stages_run(rerun) == {f"evaluate@{DATASET}"}, output(rerun)
    new = flat(json.loads((copy / HEADLINE).read_text()))
    assert set(new) == set(old) and new != old

    changed = json.loads(run(copy, "dvc", "metrics", "diff", "--json").stdout)[HEADLINE]
    assert changed and all(new[name] != old[name] for name in changed)
    assert any(name.startswith("random.") for name in changed)  # the random heatmaps follow the seed
    for name, values in changed.items():
        assert (values["old"], values["new"]) == (old[name], new[name])
    every = json.loads(run(copy, "dvc", "metrics", "diff", "--all", "--json").stdout)[HEADLINE]
    assert set(every) == set(old)
    assert every["classifier.test.accuracy"]["diff"] == 0  # C was not retrained

    table = run(copy, "dvc", "metrics", "diff", "--all").stdout
    assert table.split("\n")[0].split() == ["Path", "Metric", "HEAD", "workspace", "Change"]
    row = next(line.split() for line in table.splitlines() if " random.pointing_game.mean " in f" {line} ")
    assert row[0] == HEADLINE and float(row[2]) == old["random.pointing_game.mean"]
    assert float(row[3]) == new["random.pointing_game.mean"]
    assert "torch_threads" not in table and "provenance" not in table


def test_results_record_paths_relative_to_the_repository(project):
    """A record read in another clone names that clone's files: the inversion's manifest is the
    repository-relative path the workflow gave it (a manifest outside the repository stays absolute)."""
    record = json.loads((project.root / f"results/{DATASET}/inversion/provenance.json").read_text())
    assert record["manifest"] == f"data/{DATASET}/manifest.csv"
    for path in (project.root / "results").rglob("*.json"):
        if path.name != "manifest_check.json":  # the results folder's owner, compared as an absolute path
            assert str(project.root) not in path.read_text(), path


def test_pull_into_a_fresh_clone_restores_results_and_snakemake_has_nothing_to_do(project, tmp_path: Path):
    copy = clone(project, tmp_path / "clone")
    assert not (copy / WEIGHTS[0]).exists()
    run(copy, "dvc", "pull")
    assert {name: digest(copy / name) for name in WEIGHTS} == project.weights
    # DVC keeps no timestamps; say the prepared data were written last, after every result.
    day_ago = time.time() - 86400
    for path in (copy / "results").rglob("*"):
        os.utime(path, (day_ago, day_ago))
    assert "train_classifier" in planned_rules(snakemake_dry_run(copy))  # Snakemake would retrain

    run(copy, "workflow/dvc_pull.sh")  # what `make pull` runs
    assert "Nothing to be done" in snakemake_dry_run(copy)
    assert "Data and pipelines are up to date" in output(run(copy, "dvc", "status"))
    assert {name: digest(copy / name) for name in WEIGHTS} == project.weights

    # The restored steps carry their settings, so Snakemake still reruns what a change affects.
    dry = output(run(copy, "snakemake", "--cores", "1", "-n", "--config", "seed=1"))
    assert "train_classifier" in planned_rules(dry)


def test_changing_an_inversion_setting_reruns_only_inversion_and_what_depends_on_it(project, tmp_path: Path):
    """Rerunning the whole downstream part would cost most of a full run, so this runs inversion
    and checks that DVC and Snakemake then both want exactly inversion's dependants rerun."""
    copy = clone(project, tmp_path / "clone")
    run(copy, "workflow/dvc_pull.sh")
    config_path = copy / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["defaults"]["inversion"]["steps"] += 1
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    upstream, downstream = neighbours(copy, f"invert@{DATASET}")
    assert f"train_gan@{DATASET}" in upstream and {f"explain@{DATASET}", f"evaluate@{DATASET}", "summarize"} <= downstream

    refused = run(copy, "workflow/dvc_pull.sh", check=False)  # stale results are not stamped up to date
    assert refused.returncode == 1 and "run 'dvc repro'" in refused.stderr

    changed = stale_stages(copy)  # the stages reading the inversion settings
    assert f"invert@{DATASET}" in changed and changed <= {f"invert@{DATASET}"} | downstream

    rerun = run(copy, "dvc", "repro", f"invert@{DATASET}")
    assert stages_run(rerun) == {f"invert@{DATASET}"}, output(rerun)
    for stage in upstream:
        assert f"Stage '{stage}' didn't change" in output(rerun)
    assert {name: digest(copy / name) for name in WEIGHTS} == project.weights

    # New latents: DVC now wants the stages reading them; Snakemake wants the same steps and the
    # ones after them, and no training.
    assert f"invert@{DATASET}" not in stale_stages(copy)
    assert {f"explain@{DATASET}", f"evaluate@{DATASET}"} <= stale_stages(copy) <= downstream
    planned = planned_rules(snakemake_dry_run(copy))
    assert planned == {name.split("@")[0] for name in downstream} | {"all"}

