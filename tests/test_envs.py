"""The workflow's software as the Snakemake ecosystem expects it, checked without building anything:

- workflow/envs/medxgan.yaml, the conda environment of every rule (`snakemake --sdm conda`), is
  Python 3.11 with this repository's package installed by pip, so every dependency pyproject.toml
  lists comes with it;
- every rule that runs a command declares that environment, and `snakemake --lint` has nothing to say;
- the Dockerfile (`snakemake --sdm apptainer`) installs the same package on Python 3.11, with a
  PyTorch that pyproject.toml accepts, and the Snakefile's `container:` is the image that
  workflow/profiles/kubernetes runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflow"
ENV_FILE = WORKFLOW / "envs" / "medxgan.yaml"
CONDA = "../envs/medxgan.yaml"  # as every rules file names it, relative to workflow/rules/
RULE_FILES = [WORKFLOW / "Snakefile", *sorted((WORKFLOW / "rules").glob("*.smk"))]
ACTIONS = ("shell", "run", "script", "notebook", "wrapper", "cwl", "template_engine")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PYTHON = "3.11"


EXTRAS = re.compile(r"\[([^\]]+)\]$")  # pip's `path[extra,extra]`


def snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load(ENV_FILE.read_text())


def pip_entries(env: dict) -> list[str]:
    sections = [item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(sections) == 1, "the env file has no (or several) pip: sections"
    return sections[0]


def conda_packages(env: dict) -> dict[str, str]:
    """name -> the rest of the spec, for the conda (not pip) dependencies."""
    specs = [item for item in env["dependencies"] if isinstance(item, str)]
    return {re.match(r"[A-Za-z0-9_.-]+", spec).group(): spec[re.match(r"[A-Za-z0-9_.-]+", spec).end():].strip()
            for spec in specs}


def test_env_file_is_python_311_from_conda_forge_with_pip(env: dict):
    assert env["channels"] == ["conda-forge"]
    packages = conda_packages(env)
    assert packages["python"] in (f"={PYTHON}", f"=={PYTHON}", f"={PYTHON}.*"), packages["python"]
    assert "pip" in packages, "the pip: section needs pip itself from conda"


def test_env_file_installs_this_repository_with_pip(env: dict):
    # conda runs pip in the env file's folder, so a relative path is relative to workflow/envs/.
    installs = [entry.split()[-1] for entry in pip_entries(env) if not entry.startswith("-") or entry.startswith("-e ")]
    repos = [path for path in installs if (ENV_FILE.parent / path.split("[")[0]).resolve() == REPO]
    assert repos, f"no pip entry of {ENV_FILE.name} installs the repository at {REPO}: {pip_entries(env)}"
    root = ENV_FILE.parent / repos[0].split("[")[0]
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["name"] == "medxgan"
    # the jobs run Snakemake's notebooks and the public datasets' downloads: both extras come along
    assert set(EXTRAS.findall(repos[0])[0].split(",")) == {"workflow", "data"}, repos[0]
    assert not any("--no-deps" in entry for entry in pip_entries(env)), "the package's dependencies must come with it"


def test_every_pyproject_dependency_is_satisfiable_in_the_env(env: dict):
    """pip installs the package with all of [project] dependencies; the env's Python must be one the
    package accepts, and a conda package that is also a dependency must not be pinned outside its range."""
    assert Version(PYTHON) in SpecifierSet(PYPROJECT["requires-python"])
    specs = [*PYPROJECT["dependencies"], *PYPROJECT["optional-dependencies"]["workflow"],
             *PYPROJECT["optional-dependencies"]["data"]]
    wanted = {Requirement(spec).name.lower(): Requirement(spec) for spec in specs}
    assert {"torch", "snakemake", "h5py"} <= set(wanted)
    for name, spec in conda_packages(env).items():
        if name.lower() in wanted and re.fullmatch(r"==?[0-9][0-9.]*", spec):
            assert Version(spec.lstrip("=")) in wanted[name.lower()].specifier, f"conda pins {name}{spec}"


def rule_blocks(path: Path) -> dict[str, str]:
    """Each rule's (or checkpoint's) text in a Snakefile: from `rule NAME:` to the next unindented line."""
    blocks, name = {}, None
    for line in path.read_text().splitlines():
        if (match := re.match(r"(?:rule|checkpoint) (\w+):", line)):
            name = match.group(1)
            blocks[name] = ""
        elif line and not line[0].isspace() and not line.startswith("#"):
            name = None
        elif name:
            blocks[name] += line + "\n"
    return blocks


def test_every_rule_that_runs_something_declares_the_conda_env():
    blocks = {name: (path, text) for path in RULE_FILES for name, text in rule_blocks(path).items()}
    listed = snakemake("--list-rules")
    assert listed.returncode == 0, listed.stderr
    names = {line.strip() for line in listed.stdout.splitlines() if line.strip()}
    assert set(blocks) == names, "the rule files' rules and `snakemake --list-rules` disagree"
    runners = {name: value for name, value in blocks.items()
               if re.search(rf"^    ({'|'.join(ACTIONS)}):", value[1], re.MULTILINE)}
    assert len(runners) > 25 and set(blocks) - set(runners) == {"all", "ablation"}  # targets run nothing
    for name, (path, text) in runners.items():
        conda = re.search(r"^    conda:\n        \"([^\"]+)\"", text, re.MULTILINE)
        assert conda and conda.group(1) == CONDA, f"rule {name} ({path.name}) does not declare conda: {CONDA!r}"
        assert (path.parent / conda.group(1)).resolve() == ENV_FILE, f"rule {name}: {CONDA} is not {ENV_FILE}"


def test_snakemake_lint_finds_nothing():
    lint = snakemake("--lint")
    output = lint.stdout + lint.stderr
    assert lint.returncode == 0, output
    assert "conda" not in output.lower() and "Lints for" not in output, output


def test_dockerfile_installs_the_package_on_python_311_with_an_accepted_torch():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^FROM python:{re.escape(PYTHON)}-slim\b", dockerfile, re.MULTILINE)
    wanted = {Requirement(spec).name: Requirement(spec).specifier for spec in PYPROJECT["dependencies"]}
    for package in ("torch", "torchvision"):
        pin = re.search(rf"\b{package}==([0-9][0-9.]*)", dockerfile)
        assert pin and Version(pin.group(1)) in wanted[package], f"the Dockerfile's {package} is not in {wanted[package]}"
    assert "--index-url https://download.pytorch.org/whl/cpu" in dockerfile
    assert re.search(r'^RUN pip install "?(\.|/[^\s"\[]+)\[workflow,data,template\]"?( |$)', dockerfile, re.MULTILINE), \
        "the package (with its workflow, data and template extras) is not installed"
    assert not re.search(r"^ENTRYPOINT", dockerfile, re.MULTILINE), "apptainer exec runs bash -c in the image"


def test_snakefile_container_is_the_kubernetes_profiles_image():
    image = yaml.safe_load((WORKFLOW / "profiles" / "kubernetes" / "config.yaml").read_text())["container-image"]
    containers = re.findall(r"^container: \"([^\"]+)\"", (WORKFLOW / "Snakefile").read_text(), re.MULTILINE)
    assert containers == [f"docker://{image}"]
