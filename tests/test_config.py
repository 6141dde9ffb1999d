"""The configuration: schema validation names the key at fault; dataset settings merge as documented."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from medxgan.config import (ConfigError, add_user_manifest, dataset_settings, load_config, step_settings, validate_resolved,
                            variant_settings)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path / "config"


def edit(config_dir: Path, change) -> Path:
    path = config_dir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))
    return path


def test_shipped_config_is_valid():
    config = load_config(REPO / "config" / "config.yaml")
    assert set(config["datasets"]) == {"synthetic-cxr", "synthetic-mri"}


OVERLAYS = sorted(path.name for path in (REPO / "config").glob("*.yaml") if path.name != "config.yaml")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_shipped_overlay_is_valid_over_the_config_and_listed_in_its_readme(overlay: str):
    base = load_config(REPO / "config" / "config.yaml")
    config = load_config(REPO / "config" / "config.yaml", REPO / "config" / overlay)
    assert config != base  # it changes something
    assert f"| `{overlay}` |" in (REPO / "config" / "README.md").read_text()
    validate_resolved(config)  # every dataset's and variant's settings, laid together


def test_keys_valid_apart_but_not_together_are_refused_naming_the_dataset_variant_and_key(config_dir: Path):
    """A variant widens G0 but forgets that `ablation.base` makes G plain: the file is valid, the variant's
    settings laid over the base are not, and the refusal says where and what to do."""
    config = load_config(edit(config_dir, lambda c: c["ablation"]["variants"].update(g0_wide={"gan": {"anatomy_width": 0.25}})))
    with pytest.raises(ConfigError) as refused:
        validate_resolved(config)
    message = str(refused.value)
    assert message.startswith("invalid settings of dataset synthetic-cxr, ablation variant g0_wide: "
                              "gan.anatomy_width: 0.25 is not of type 'null'"), message
    assert "set gan.composition: masked, or gan.anatomy_width: null" in message
    config["ablation"]["variants"]["g0_wide"]["gan"]["composition"] = "masked"
    validate_resolved(config)
    config["ablation"]["variants"]["g0_wide"]["gan"]["composition"] = "plain"  # refused where it is written
    (config_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"ablation.variants.g0_wide.gan.anatomy_width: 0.25 is not of type 'null' \(a plain G"):
        load_config(config_dir / "config.yaml")


def test_the_lesion_overlay_trains_and_inverts_as_the_ablation_variant_it_reports():
    """docs/results.md reports config/lesion.yaml by the ablation's `wide_evidence`: the same settings."""
    config = load_config(REPO / "config" / "config.yaml")
    overlaid = load_config(REPO / "config" / "config.yaml", REPO / "config" / "lesion.yaml")
    sections = ("gan", "encoder", "inversion")
    for dataset in config["datasets"]:
        assert (variant_settings(config, dataset, "wide_evidence", config["seed"], *sections)
                == step_settings(overlaid, dataset, *sections))


def test_wrong_type_names_the_key(config_dir: Path):
    path = edit(config_dir, lambda c: c["defaults"]["gan"].update(steps="many"))
    with pytest.raises(ConfigError, match=r"defaults\.gan\.steps: 'many' is not of type 'integer'"):
        load_config(path)


def test_unknown_method_is_refused(config_dir: Path):
    path = edit(config_dir, lambda c: c["defaults"]["explain"].update(methods=["difference", "lime"]))
    with pytest.raises(ConfigError, match=r"defaults\.explain\.methods\.1"):
        load_config(path)


def test_unknown_metric_is_refused_with_its_name(config_dir: Path):
    path = edit(config_dir, lambda c: c["datasets"]["synthetic-cxr"].update(evaluate={"metrics": ["pointing_gme"]}))
    with pytest.raises(ConfigError, match=r"datasets\.synthetic-cxr\.evaluate\.metrics\.0: 'pointing_gme' is not one of"):
        load_config(path)


def test_dataset_overrides_one_key_and_keeps_the_rest(config_dir: Path):
    path = edit(config_dir, lambda c: c["datasets"]["synthetic-mri"].update(gan={"lambda_cls": 2.0}))
    config = load_config(path)
    mri, cxr = dataset_settings(config, "synthetic-mri"), dataset_settings(config, "synthetic-cxr")
    assert mri["gan"]["lambda_cls"] == 2.0 and cxr["gan"]["lambda_cls"] == config["defaults"]["gan"]["lambda_cls"]
    assert mri["gan"]["steps"] == cxr["gan"]["steps"]
    assert mri["data"]["positive"] == "tumor"


def test_step_settings_hold_only_the_sections_asked_for():
    config = load_config(REPO / "config" / "config.yaml")
    settings = json.loads(step_settings(config, "synthetic-cxr", "data", "inversion"))
    assert set(settings) == {"data", "inversion", "seed", "device"}


def test_unknown_dataset_is_named():
    config = load_config(REPO / "config" / "config.yaml")
    with pytest.raises(ConfigError, match="'nope'"):
        dataset_settings(config, "nope")


def test_user_manifest_needs_both_labels(tmp_path: Path):
    manifest = tmp_path / "scans" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label,split,mask_path,patient_id\n")
    config = load_config(REPO / "config" / "config.yaml")
    config.update(manifest=str(manifest), negative="healthy", positive=None)
    with pytest.raises(ConfigError, match="positive=LABEL"):
        add_user_manifest(config)
    config.update(positive=1)
    name = add_user_manifest(config, results=tmp_path / "results")
    assert name.startswith("scans-") and dataset_settings(config, name)["data"]["positive"] == "1"


def user_manifest(folder: Path) -> Path:
    folder.mkdir(parents=True)
    manifest = folder / "manifest.csv"
    manifest.write_text("path,label,split,mask_path,patient_id\n")
    return manifest


def user_config(manifest: Path, **extra) -> dict:
    config = load_config(REPO / "config" / "config.yaml")
    config.update(manifest=str(manifest), negative="healthy", positive="sick", **extra)
    return config


def test_two_manifest_folders_of_one_name_get_two_datasets(tmp_path: Path):
    first, second = user_manifest(tmp_path / "a" / "scans"), user_manifest(tmp_path / "b" / "scans")
    names = [add_user_manifest(user_config(m), results=tmp_path / "results") for m in (first, second)]
    assert names[0] != names[1] and all(n.startswith("scans-") for n in names)
    assert add_user_manifest(user_config(first), results=tmp_path / "results") == names[0]  # stable


def test_a_manifest_folder_named_like_a_built_in_dataset_does_not_shadow_it(tmp_path: Path):
    name = add_user_manifest(user_config(user_manifest(tmp_path / "synthetic-mri")), results=tmp_path / "results")
    assert name != "synthetic-mri" and name.startswith("synthetic-mri-")
    with pytest.raises(ConfigError, match="name=synthetic-mri is a configured dataset"):
        add_user_manifest(user_config(user_manifest(tmp_path / "x"), name="synthetic-mri"), results=tmp_path / "results")


def test_a_name_whose_results_came_from_another_manifest_is_refused(tmp_path: Path):
    results = tmp_path / "results"
    (results / "study").mkdir(parents=True)
    other = user_manifest(tmp_path / "old")
    (results / "study" / "manifest_check.json").write_text(json.dumps({"manifest": str(other.resolve())}))
    assert add_user_manifest(user_config(other, name="study"), results=results) == "study"  # its own results
    with pytest.raises(ConfigError, match=r"results/study holds the results of manifest .*old/manifest\.csv"):
        add_user_manifest(user_config(user_manifest(tmp_path / "new"), name="study"), results=results)


def check_step(manifest: Path, report: Path, settings: str | None = None) -> int:
    """The check-manifest step, as the workflow's rule runs it (or with `settings` JSON)."""
    from medxgan.pipeline import cli

    chosen = ["--settings", settings] if settings else ["--config", str(REPO / "config" / "config.yaml"),
                                                        "--dataset", "synthetic-mri"]
    return cli.main(["check-manifest", *chosen, "--manifest", str(manifest), "--out", str(report)])


def test_a_failed_check_leaves_the_results_folder_owned_by_its_manifest(tmp_path: Path, capsys):
    """manifest=A name=proj checked; then a check that fails (equal labels), whose report Snakemake deletes
    with the failed job's outputs; then manifest=B name=proj: still refused, by the workflow and the step."""
    from medxgan.data.phantoms import write_phantom_dataset

    first, second = (write_phantom_dataset("synthetic-mri", tmp_path / folder / "scans", 64,
                                           {"train": 4, "val": 2, "test": 4}, 0.5, seed=seed)
                     for folder, seed in (("A", 0), ("B", 1)))
    results = tmp_path / "results"
    report = results / "proj" / "manifest_check.json"
    assert check_step(first, report) == 0
    same_labels = json.loads(step_settings(load_config(REPO / "config" / "config.yaml"), "synthetic-mri", "data"))
    same_labels["data"]["positive"] = same_labels["data"]["negative"]
    assert check_step(first, report, json.dumps(same_labels)) == 2
    report.unlink()  # what Snakemake does with a failed job's outputs
    owner = r"results/proj holds the results of manifest .*A/scans/manifest\.csv, not .*B/scans/manifest\.csv"
    with pytest.raises(ConfigError, match=owner):
        add_user_manifest(user_config(second, name="proj"), results=results)
    capsys.readouterr()
    assert check_step(second, report) == 2 and re.search(owner, capsys.readouterr().err)
    assert not report.exists()
    assert add_user_manifest(user_config(first, name="proj"), results=results) == "proj"


def test_later_config_files_override_earlier_ones_key_by_key(config_dir: Path):
    override = config_dir / "fast.yaml"
    override.write_text(yaml.safe_dump({"defaults": {"gan": {"steps": 7}}}))
    config = load_config(config_dir / "config.yaml", override)
    assert config["defaults"]["gan"]["steps"] == 7
    assert config["defaults"]["gan"]["nz1"] == load_config(config_dir / "config.yaml")["defaults"]["gan"]["nz1"]


def test_hand_written_settings_go_through_the_configs_schema():
    from medxgan.config import ConfigError, validate_settings

    good = {"data": {"image_size": 64, "channels": 1}, "gan": {"batch_size": 32}, "seed": 0, "device": "cpu"}
    validate_settings(good)
    with pytest.raises(ConfigError, match=r"data.image_size: 100 is not one of \[64, 128\]"):
        validate_settings({**good, "data": {"image_size": 100, "channels": 1}})
    with pytest.raises(ConfigError, match="gan.batch_size: 0 is less than the minimum of 1"):
        validate_settings({**good, "gan": {"batch_size": 0}})
    with pytest.raises(ConfigError, match="device: 'tpu' is not one of"):
        validate_settings({**good, "device": "tpu"})


def test_ablation_variants_lay_base_then_their_own_overrides_over_the_dataset():
    from medxgan.config import variant_settings

    config = load_config(REPO / "config" / "config.yaml")
    config["ablation"] = {"seeds": [3], "methods": ["difference"],
                          "base": {"gan": {"upsampling": "transposed", "steps": 7}},
                          "variants": {"base-only": {}, "resized": {"gan": {"upsampling": "resize"}}}}
    base_only = json.loads(variant_settings(config, "synthetic-cxr", "base-only", 3, "gan"))
    resized = json.loads(variant_settings(config, "synthetic-cxr", "resized", 3, "gan"))
    assert base_only["gan"]["upsampling"] == "transposed" and resized["gan"]["upsampling"] == "resize"
    assert base_only["gan"]["steps"] == resized["gan"]["steps"] == 7 and resized["seed"] == 3
    assert base_only["gan"]["nz1"] == dataset_settings(config, "synthetic-cxr")["gan"]["nz1"]
    with pytest.raises(ConfigError, match="unknown ablation variant 'nope'"):
        variant_settings(config, "synthetic-cxr", "nope", 3, "gan")


def test_variants_that_differ_only_downstream_share_the_first_ones_training():
    from medxgan.config import variant_source

    config = load_config(REPO / "config" / "config.yaml")
    config["ablation"] = {"seeds": [0], "methods": ["difference"], "base": {},
                          "variants": {"plain": {}, "longer": {"gan": {"steps": 9}},
                                       "local": {"inversion": {"local_weight": 1.0}},
                                       "longer-local": {"gan": {"steps": 9}, "inversion": {"local_weight": 1.0}}}}
    gan = ("data", "gan", "precision")
    sources = {v: variant_source(config, "synthetic-cxr", v, 0, *gan) for v in config["ablation"]["variants"]}
    assert sources == {"plain": "plain", "longer": "longer", "local": "plain", "longer-local": "longer"}
    assert variant_source(config, "synthetic-cxr", "local", 0, *gan, "inversion") == "local"


SCHEMA_FILE = REPO / "workflow" / "schemas" / "config.schema.yaml"


def schema_nodes(node: dict, where: str = "#"):
    """Every subschema below `node` with its JSON pointer, `node` first (values of `default` are data, not schemas)."""
    yield where, node
    for keyword in ("properties", "$defs"):
        for key, sub in node.get(keyword, {}).items():
            yield from schema_nodes(sub, f"{where}/{keyword}/{key}")
    for keyword in ("items", "additionalProperties", "propertyNames", "then"):
        if isinstance(node.get(keyword), dict):
            yield from schema_nodes(node[keyword], f"{where}/{keyword}")
    for keyword in ("allOf", "anyOf", "oneOf"):
        for index, sub in enumerate(node.get(keyword, [])):
            yield from schema_nodes(sub, f"{where}/{keyword}/{index}")


def schema_properties(schema: dict, node: dict) -> dict:
    """The properties a mapping checked by `node` may have: its own, its $ref's and its allOf parts'."""
    properties = dict(node.get("properties", {}))
    if "$ref" in node:
        properties.update(schema_properties(schema, schema["$defs"][node["$ref"].removeprefix("#/$defs/")]))
    for part in node.get("allOf", []):
        properties.update(schema_properties(schema, part))
    return properties


def defaults_unlike(schema: dict, node: dict, value, where: str) -> list[str]:
    """Where the schema's `default`s differ from `value` (config/config.yaml's), walking both together: a key
    whose schema has a `default` must equal it; a mapping without one needs a default for each of its keys."""
    if "default" in node:
        return [] if node["default"] == value else [f"{where}: default {node['default']!r}, config {value!r}"]
    properties = schema_properties(schema, node)
    if not (isinstance(value, dict) and properties):
        return [f"{where}: no default (config: {value!r})"]
    return [problem for key, sub in value.items()
            for problem in (defaults_unlike(schema, properties[key], sub, f"{where}.{key}") if key in properties
                            else [f"{where}.{key}: not in the schema"])]


def test_every_schema_property_has_a_description():
    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    undescribed = [f"{where}/{keyword}/{key}" for where, node in schema_nodes(schema)
                   for keyword in ("properties", "$defs") for key, sub in node.get(keyword, {}).items()
                   if not str(sub.get("description") or "").strip()]
    assert not undescribed, undescribed
    assert len([node for _, node in schema_nodes(schema) if "description" in node]) > 150  # the walk reached them all


def test_schema_defaults_are_the_shipped_config_and_valid():
    from medxgan.config import SOURCE_DEFAULTS

    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    unlike = defaults_unlike(schema, schema, config, "config")
    assert not unlike, unlike
    validator = jsonschema.Draft202012Validator(schema)
    invalid = [f"{where}: {error.message}" for where, node in schema_nodes(schema) if "default" in node
               for error in validator.evolve(schema=node).iter_errors(node["default"])]
    assert not invalid, invalid
    source = schema["properties"]["datasets"]["additionalProperties"]["properties"]["source"]["properties"]
    assert {key: source[key]["default"] for key in SOURCE_DEFAULTS} == SOURCE_DEFAULTS


def test_config_is_checked_against_the_workflows_schema_wherever_it_lies(config_dir: Path):
    from medxgan.config import PROJECT_SCHEMA

    assert PROJECT_SCHEMA == SCHEMA_FILE  # the package's schema is the workflow's, not a copy that could drift
    bad = yaml.safe_load((config_dir / "config.yaml").read_text()) | {"seed": "abc"}
    (config_dir / "config.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="seed"):
        load_config(config_dir / "config.yaml")
    assert not (REPO / "config" / "schema").exists()


def test_a_wheel_of_the_package_carries_the_schema(tmp_path: Path):
    """A package installed without its clone (pip install .) checks configs, step settings and bundles
    against the same schema: the wheel holds the workflow's schema itself, not a link to it."""
    import subprocess
    import sys
    import zipfile

    tree = tmp_path / "project"  # built from a copy: a build leaves build/ and egg-info behind
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("src", "workflow/schemas"):
        shutil.copytree(REPO / part, tree / part, symlinks=True, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("medxgan-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("medxgan/config.schema.yaml") == SCHEMA_FILE.read_bytes()
