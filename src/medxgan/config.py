"""Configuration: load and validate `config/config.yaml`, resolve one dataset's settings.

The same functions serve the Snakefile (which validates with `snakemake.utils.validate`) and the
command line, so a step run by hand sees exactly the settings a workflow run would.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import jsonschema
import yaml

from medxgan.files import portable_path, write_json

SECTIONS = ("data", "classifier", "oracle", "gan", "encoder", "inversion", "explain", "evaluate", "figures", "checks")
# What a public dataset's `source` entry leaves out (our choices; see config/paper.yaml).
SOURCE_DEFAULTS = {
    "val_fraction": 0.1,  # share of the training images moved to validation
    "test_fraction": 0.2,  # share held out for testing where the source has no test split
    "near_duplicate_distance": 4,  # perceptual-hash bits (of 64) within which two images count as copies
}
# The config's schema, shipped in the package: in a clone of the project, a link to the workflow's
# workflow/schemas/config.schema.yaml (where Snakemake's workflow template keeps it), in a wheel a copy.
PROJECT_SCHEMA = Path(__file__).with_name("config.schema.yaml").resolve()
MANIFEST_REPORT = "manifest_check.json"  # results/{dataset}/: the manifest check's report names its manifest
# results/{dataset}/: the manifest the folder's results are of, written once, by the first passing manifest check.
# No rule's output: Snakemake deletes a failed rule's outputs (the report among them), never this record.
OWNER_RECORD = "manifest_owner.json"


class ConfigError(ValueError):
    """A configuration value or command-line argument is missing or wrong; the message names it."""


def validate(config: dict, schema_path: str | Path) -> None:
    schema = yaml.safe_load(Path(schema_path).read_text())
    _refuse_invalid("configuration", jsonschema.Draft202012Validator(schema).iter_errors(config))


def _refuse_invalid(what: str, errors) -> None:
    """One line naming every invalid key and what is wrong with it, if any is (with the schema's
    `explanation` of a rule across keys, where it gives one)."""
    errors = sorted(errors, key=lambda e: list(e.path))
    if errors:
        raise ConfigError(f"invalid {what}: " + "; ".join(_error_line(e) for e in errors))


def _error_line(error: jsonschema.ValidationError) -> str:
    explanation = error.schema.get("explanation") if isinstance(error.schema, dict) else None
    return f"{'.'.join(map(str, error.path)) or '(top level)'}: {error.message}" + (f" ({explanation})" if explanation else "")


RUN_WIDE_KEYS = ("seed", "device", "precision")


def validate_settings(settings: dict, schema_path: str | Path = PROJECT_SCHEMA, complete: tuple[str, ...] = ()) -> None:
    """A step's `--settings` against the config's schema: each section by its definition, the
    run-wide keys by theirs, so a hand-written settings file is checked as a config file is.
    The sections and run-wide keys in `complete` must be there, each section with every key, as
    the config's `defaults` must (a bundle's settings: nothing fills in what they lack)."""
    if not isinstance(settings, dict):
        raise ConfigError(f"invalid settings: a JSON object of sections is needed, not {type(settings).__name__}")
    schema = yaml.safe_load(Path(schema_path).read_text())
    settings = _without_class_names(settings)
    full_sections = schema["properties"]["defaults"]["properties"]
    properties = {key: full_sections[key] if key in complete else {"$ref": f"#/$defs/{key}"}
                  for key in settings if key in schema["$defs"] and key in SECTIONS}
    properties.update({key: schema["properties"][key] for key in RUN_WIDE_KEYS if key in settings})
    checked = {"$defs": schema["$defs"], "properties": properties, "required": list(complete)}
    _refuse_invalid("settings", jsonschema.Draft202012Validator(checked).iter_errors(settings))


def _without_class_names(settings: dict) -> dict:
    """Settings without the data section's class names, which come from the dataset's entry, not
    from the schema's data section."""
    if not isinstance(settings.get("data"), dict):
        return settings
    return {**settings, "data": {k: v for k, v in settings["data"].items() if k not in ("negative", "positive")}}


def merge(base: dict, override: dict) -> dict:
    """`override` laid over `base`, nested mappings merged key by key (as Snakemake's --configfile does)."""
    merged = dict(base)
    for key, value in override.items():
        both_dicts = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = merge(base[key], value) if both_dicts else value
    return merged


def load_config(*paths: str | Path) -> dict:
    """One or more config files, each laid over the previous one, validated against the first's schema."""
    config = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        config = merge(config, yaml.safe_load(path.read_text()) or {})
    validate(config, PROJECT_SCHEMA)
    return config


def user_dataset_name(manifest: Path) -> str:
    """The manifest's folder name and 8 hex digits of its absolute path: two manifests (two folders
    called `scans`, or one called `synthetic-mri`) never share a results folder."""
    digest = hashlib.sha256(str(manifest.resolve()).encode()).hexdigest()[:8]
    return f"{manifest.resolve().parent.name}-{digest}"


def add_user_manifest(config: dict, results: Path = Path("results")) -> str | None:
    """Register `manifest=... negative=... positive=...` as a dataset named `name=...` or, without
    one, `user_dataset_name(manifest)`.

    Returns that dataset's name, or None when no manifest was given. Refuses a name that is already
    a configured dataset, or whose results folder holds the results of another manifest
    (`check_results_owner`).
    """
    manifest = config.get("manifest")
    if not manifest:
        return None
    missing = [key for key in ("negative", "positive") if not config.get(key)]
    if missing:
        raise ConfigError(f"manifest={manifest} also needs {' and '.join(k + '=LABEL' for k in missing)}")
    path = Path(manifest).resolve()
    if not path.is_file():
        raise ConfigError(f"manifest file not found: {manifest}")
    name = str(config["name"]) if config.get("name") else user_dataset_name(path)
    if name in config["datasets"]:
        raise ConfigError(f"name={name} is a configured dataset (config `datasets`); give your manifest another name")
    if Path(name).name != name or name in (".", ".."):
        raise ConfigError(f"name={name!r} must be a plain folder name, without '/'")
    check_results_owner(results / name, path)
    config["datasets"][name] = {"manifest": str(path), "negative": str(config["negative"]), "positive": str(config["positive"])}
    if config.get("family"):
        config["datasets"][name]["family"] = config["family"]
    return name


def check_results_owner(folder: str | Path, manifest: str | Path) -> None:
    """Stop before a run would replace results that another manifest produced: the folder's owner
    record says which (`record_results_owner`) or, in a folder from before owner records, its
    manifest check's report. A relative path in either is relative to the working directory."""
    folder, manifest = Path(folder), Path(manifest).resolve()
    for record in (folder / OWNER_RECORD, folder / MANIFEST_REPORT):
        if not record.is_file():
            continue
        try:
            owner = json.loads(record.read_text())["manifest"]
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{record} cannot be read ({error}): move {folder} aside or choose another name=") \
                from None
        if Path(owner).resolve() != manifest:
            raise ConfigError(f"{folder} holds the results of manifest {owner}, not {manifest}: "
                              f"choose another name=... or move {folder} aside")


def record_results_owner(folder: str | Path, manifest: str | Path) -> None:
    """Mark `folder` as holding `manifest`'s results, where it has no owner yet (see OWNER_RECORD);
    the path is recorded as `portable_path` gives it, so a built-in dataset's record holds in any clone."""
    record = Path(folder) / OWNER_RECORD
    if not record.is_file():
        write_json(record, {"manifest": portable_path(manifest)})


def dataset_settings(config: dict, dataset: str) -> dict:
    """Defaults merged with the dataset's overrides, plus the run-wide seed, device and precision and, for a
    built-in dataset, its phantom settings, for a public one its source settings."""
    if dataset not in config["datasets"]:
        raise ConfigError(f"unknown dataset {dataset!r}; configured: {', '.join(config['datasets'])}")
    entry = config["datasets"][dataset]
    settings = {section: {**copy.deepcopy(config["defaults"][section]), **entry.get(section, {})} for section in SECTIONS}
    settings["data"].update(negative=str(entry["negative"]), positive=str(entry["positive"]))
    settings.update(seed=config["seed"], device=config["device"], precision=config["precision"],
                    phantom=entry.get("phantom"),
                    source={**SOURCE_DEFAULTS, **entry["source"]} if "source" in entry else None)
    return settings


def validate_resolved(config: dict, schema_path: str | Path = PROJECT_SCHEMA) -> None:
    """Each dataset's settings, and each ablation variant's, as its steps will receive them, against
    the schema's sections: a rule across keys (a plain G has no anatomy width) can break only once
    the defaults, a dataset's and a variant's overrides are laid together, and is refused here,
    before the first job runs, rather than when the step that reads it starts."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    sections = [section for section in SECTIONS if section in schema["$defs"]]
    validator = jsonschema.Draft202012Validator(
        {"$defs": schema["$defs"], "properties": {section: {"$ref": f"#/$defs/{section}"} for section in sections}})
    for dataset in config["datasets"]:
        resolved = {f"dataset {dataset}": dataset_settings(config, dataset)}
        for variant in config.get("ablation", {}).get("variants", {}):
            resolved[f"dataset {dataset}, ablation variant {variant}"] = json.loads(
                variant_settings(config, dataset, variant, config["seed"], *sections))
        for where, settings in resolved.items():
            checked = _without_class_names({section: settings[section] for section in sections})
            _refuse_invalid(f"settings of {where}", validator.iter_errors(checked))


def step_settings(config: dict, dataset: str, *sections: str) -> str:
    """The sections one step needs (and run-wide keys it reads besides seed and device, such as
    precision), as JSON: Snakemake reruns a step when exactly these change."""
    return _settings_json(dataset_settings(config, dataset), sections)


def variant_settings(config: dict, dataset: str, variant: str, seed: int, *sections: str) -> str:
    """Like `step_settings`, for one ablation variant trained with `seed`: `ablation.base`, then the
    variant's overrides (config `ablation.variants`), laid over the dataset's sections, and the
    run's seed replaced."""
    if variant not in config["ablation"]["variants"]:
        raise ConfigError(f"unknown ablation variant {variant!r}; configured: {', '.join(config['ablation']['variants'])}")
    full = dataset_settings(config, dataset)
    for overrides in (config["ablation"].get("base", {}), config["ablation"]["variants"][variant]):
        for section, values in overrides.items():
            full[section] = merge(full[section], values)
    return _settings_json({**full, "seed": seed}, sections)


def variant_source(config: dict, dataset: str, variant: str, seed: int, *sections: str) -> str:
    """The first variant of `ablation.variants` whose settings for `sections` equal this variant's:
    the one whose trained network this variant reuses, so variants that differ elsewhere (the
    inversion, say) share one training of each distinct GAN."""
    own = variant_settings(config, dataset, variant, seed, *sections)
    return next(other for other in config["ablation"]["variants"]
                if variant_settings(config, dataset, other, seed, *sections) == own)


def _settings_json(full: dict, sections: tuple[str, ...]) -> str:
    return json.dumps({key: full[key] for key in (*sections, "seed", "device")}, sort_keys=True)


def family_of(config: dict, dataset: str) -> str | None:
    """The dataset's family: which results notebook (notebooks/FAMILY.py) shows it; None for none."""
    return config["datasets"][dataset].get("family")


def manifest_path(config: dict, dataset: str) -> str:
    entry = config["datasets"][dataset]
    return entry["manifest"] if "manifest" in entry else f"data/{dataset}/manifest.csv"
