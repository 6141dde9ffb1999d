# Set-up and the two everyday commands. `make run` and `make test` create the virtual environment
# when it is missing and install the package into it first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
CORES ?= 2
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup run test mutants mutants-recheck lock clean pull dvc.yaml readme

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: setup  ## the default DAG on the built-in synthetic datasets
	snakemake --cores $(CORES)

test: setup  ## the test suite (includes a tiny end-to-end workflow run)
	pytest

mutants: setup  ## mutation testing of the core modules (mutmut), then the kill rate per module and the survivors
	rm -rf mutants/tests mutants/mutmut-stats.json  # mutmut copies the tests once: fresh ones, mapped afresh
	mutmut run --max-children $(CORES)
	python tests/mutation_report.py

mutants-recheck: setup  ## after editing tests: the mutants that lived in the last `make mutants`, tested again
	rm -rf mutants/tests mutants/mutmut-stats.json
	mutmut run --max-children $(CORES) $$(python tests/mutation_report.py --lived)
	python tests/mutation_report.py

lock: setup  ## requirements.lock: the exact versions of this environment (the pip route's lock file)
	{ echo "# The environment the test suite and the README's numbers ran in (Python 3.11, Linux x86-64, CPU torch):"; \
	  echo "# pip install -r requirements.lock && pip install --no-deps -e .   (regenerate: make lock)"; \
	  pip freeze --exclude-editable | grep -v '^medxgan'; } > requirements.lock

pull: setup  ## data, weights and results from the DVC remote, marked up to date for Snakemake
	workflow/dvc_pull.sh

dvc.yaml: setup  ## regenerate dvc.yaml from the Snakemake DAG (after changing rules or datasets)
	python workflow/make_dvc_yaml.py

readme:  ## copy results/summary.md (after `make run`) into docs/results.md, between its two markers
	python workflow/readme_results.py --page docs/results.md

clean:  ## remove generated data and results (keeps the environment)
	rm -rf results/* data/synthetic-* .snakemake
	touch results/.gitkeep
