"""What every step shares: the `@step` registry its command line is built from, the arguments
several steps take, and the `Context` a step runs in (settings, device, precision, networks by
role, test images, provenance).

Importing this module loads no torch; a `Context` loads it when a step first asks for a device.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from medxgan.config import (
    ConfigError,
    add_user_manifest,
    dataset_settings,
    load_config,
    validate_settings,
)
from medxgan.shards import check_chunk, parse_chunk


@dataclass(frozen=True)
class Argument:
    """One command-line argument: argparse's `add_argument(*flags, **options)`."""

    flags: tuple[str, ...]
    options: dict = field(default_factory=dict)

    def __init__(self, *flags: str, **options):
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "options", options)


@dataclass(frozen=True)
class Step:
    """A pipeline step: `medxgan NAME` runs `function(Context)`. Steps with `settings` read the run's
    settings (--settings JSON, or --config with --dataset)."""

    name: str
    help: str
    function: Callable[[Context], None]
    arguments: tuple[Argument, ...]
    settings: bool


STEPS: dict[str, Step] = {}


def step(name: str, help: str, *arguments: Argument, settings: bool = True):
    """Register the decorated function as the step `name` (see `medxgan.pipeline.cli`)."""
    def register(function):
        if name in STEPS:
            raise ValueError(f"step {name!r} is registered twice")
        STEPS[name] = Step(name, help, function, arguments, settings)
        return function
    return register


def _chunk(text: str) -> tuple[int, int]:
    try:
        return parse_chunk(text)
    except ConfigError as error:  # argparse then prints this message, not a generic "invalid value"
        raise argparse.ArgumentTypeError(str(error)) from error


def out(help: str) -> Argument:
    return Argument("--out", type=Path, required=True, help=help)


def out_dir(help: str) -> Argument:
    return Argument("--out-dir", type=Path, required=True, help=help)


MANIFEST = Argument("--manifest", type=Path, required=True,
                    help="the dataset's manifest.csv (columns path,label,split,mask_path,patient_id[,healthy_twin_path])")
CLASSIFIER = Argument("--classifier", type=Path, required=True,
                      help="classifier weights (.safetensors from train-classifier)")
GENERATOR = Argument("--generator", type=Path, required=True, help="generator weights (.safetensors from train-gan)")
INVERSION = Argument("--inversion", type=Path, required=True, help="latents.safetensors from invert")
ENCODER = Argument("--encoder", type=Path,
                   help="encoder weights (.safetensors from train-encoder); needed when inversion.init is encoder")
CHUNK = Argument("--chunk", type=_chunk, metavar="START:STOP",
                 help="only the positive test images at positions START to STOP-1, one chunk of a sharded run; START "
                      "and STOP must be multiples of the step's batch_size (STOP may be the last image's)")
SETTINGS_ARGUMENTS = (
    Argument("--settings", help="the step's settings as JSON text or a JSON file (the Snakefile passes this)"),
    Argument("--config", nargs="+", metavar="FILE",
             help="config files such as config/config.yaml, later ones laid over earlier ones (instead of --settings)"),
    Argument("--dataset", help="the dataset entry of --config to use"),
    Argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)"),
)


def _settings_json(given: str):
    """--settings: JSON text, or the path of a JSON file."""
    is_text = given.lstrip().startswith("{")
    if not is_text and not Path(given).is_file():
        raise ConfigError(f"--settings {given!r} is neither JSON text nor a file")
    try:
        return json.loads(given if is_text else Path(given).read_text())
    except ValueError as error:  # not JSON, or not UTF-8
        raise ConfigError(f"--settings{'' if is_text else ' ' + given} is not valid JSON: {error}") from None


class Context:
    """A step's arguments and what it derives from them, each loaded when first asked for."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = None

    @cached_property
    def settings(self) -> dict:
        a = self.args
        if a.settings:
            settings = _settings_json(a.settings)
            validate_settings(settings)
            return settings
        if not (a.config and a.dataset):
            raise ConfigError("give --settings JSON, or --config FILE together with --dataset NAME")
        config = load_config(*a.config)
        add_user_manifest(config)
        return dataset_settings(config, a.dataset)

    def start(self):
        """Seed every random source, choose the device (TF32 where it has it); the device."""
        from medxgan import hardware
        from medxgan.torch_utils import pick_device, seed_everything

        seed_everything(self.settings["seed"])
        self.device = pick_device(self.settings["device"])
        hardware.allow_tf32(self.device)
        return self.device

    @cached_property
    def precision(self) -> str:
        """'fp32' or 'bf16' for the `precision` setting on this device (logged, and recorded with
        the step's provenance)."""
        from medxgan import hardware

        return hardware.resolve_precision(self.settings["precision"], self.device)

    def network(self, role: str, path: Path | None = None):
        """The network for `role` (classifier, generator, encoder) from `path`, by default the
        argument named after the role; the file is checked to fit this run's data first."""
        from medxgan.artifacts import load_model

        return load_model(path or getattr(self.args, role), self.device, role, self.settings["data"])

    def encoder(self):
        """The encoder the inversion starts from, when inversion.init is encoder (None otherwise)."""
        from medxgan.inversion import check_encoder

        E = None if self.args.encoder is None else self.network("encoder")
        check_encoder(self.settings["inversion"], E)
        return E

    def split(self, split: str, label: str | None = None, positions: slice | None = None):
        from medxgan.data.manifest import load_split

        d = self.settings["data"]
        # the seed draws a validation split for a manifest without one, the same in every step
        return load_split(self.args.manifest, split, d["negative"], d["positive"], d["image_size"], d["channels"],
                          label=label, positions=positions, seed=self.settings["seed"])

    def test_positives(self, positions: slice | None = None):
        return self.split("test", label="positive", positions=positions)

    def count_test_positives(self) -> int:
        """How many positive test images the manifest lists: what a sharded step splits into chunks."""
        from medxgan.data.manifest import read_manifest

        d = self.settings["data"]
        table = read_manifest(self.args.manifest, d["negative"], d["positive"])
        return int(((table["split"] == "test") & (table["target"] == 1)).sum())

    def test_positives_of(self, section: str):
        """The positive test images a step works on, all or its --chunk, and the chunk's place among
        them (start, stop, total; empty for all) for the gather step."""
        if self.args.chunk is None:
            return self.test_positives(), {}
        start, stop = self.args.chunk
        total = self.count_test_positives()
        check_chunk(start, stop, total, self.settings[section]["batch_size"], section)
        return self.test_positives(slice(start, stop)), {"start": start, "stop": stop, "total": total}

    def with_labels(self, spec: dict) -> dict:
        """The spec with the dataset's two labels: a step given this file for another dataset says so."""
        d = self.settings["data"]
        return {**spec, "labels": [str(d["negative"]), str(d["positive"])]}

    def provenance(self, precision: str | None = None) -> dict:
        from medxgan.files import provenance

        return provenance(self.settings["seed"], self.device, precision)
