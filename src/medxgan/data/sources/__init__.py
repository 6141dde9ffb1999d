"""Public datasets, one module each: where to fetch them (routes, in fallback order) and how to
read their folders into Records. `download` fetches and checks a dataset and writes SOURCE.json;
`prepare` turns what was fetched into images, masks and manifest.csv.

A source module defines NAME, ROUTES (route name -> route), ROUTE_ORDER, DEDUPLICATE,
NEEDS_NEGATIVES_FROM (no negative class of its own) and collect(root) -> Collected.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from medxgan.data import preparation
from medxgan.data.download import ArchiveRoute, DataSourceError, fetch_first, write_source_record
from medxgan.data.preparation import Collected, PrepareOptions, Record
from medxgan.data.sources import brain_figshare, brain_sartaj, covid_qu_ex, covid_radiography

log = logging.getLogger(__name__)

SOURCES = {module.NAME: module for module in (brain_sartaj, brain_figshare, covid_qu_ex, covid_radiography)}
SOURCE_RECORD = "SOURCE.json"


def _module(s: dict):
    name = s["source"]["name"]
    if name not in SOURCES:
        raise DataSourceError(f"source.name: unknown source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def _routes(s: dict) -> tuple[dict, list[str]]:
    """The source's routes and the order to try them in; a configured archive URL is tried first."""
    module, src = _module(s), s["source"]
    routes = dict(module.ROUTES)
    order = list(src.get("routes") or module.ROUTE_ORDER)
    if src.get("archive"):
        routes["archive"] = ArchiveRoute(src["archive"]["url"], src["archive"].get("sha256"))
        if "archive" not in order:
            order.insert(0, "archive")
    return routes, order


def download(s: dict, dataset_dir: Path) -> Path:
    """Fetch and check the dataset through the first route that works; write SOURCE.json."""
    dataset_dir = Path(dataset_dir)
    routes, order = _routes(s)
    fetched, skipped = fetch_first(routes, order, dataset_dir, s["source"].get("urls") or {})
    return write_source_record(dataset_dir, dataset_dir.name, s["source"]["name"], fetched, skipped)


def borrowed_negatives(dataset_dir: Path, other: str, image_size: int) -> list[Record]:
    """The negatives of another prepared dataset beside this one (data/<other>/), in that dataset's splits."""
    other_dir = dataset_dir.parent / other
    manifest, report = other_dir / "manifest.csv", other_dir / "preparation.json"
    if not (manifest.is_file() and report.is_file()):
        raise DataSourceError(f"source.negatives_from: {manifest} not found; prepare dataset {other!r} first")
    settings = json.loads(report.read_text())["settings"]
    if settings["image_size"] != image_size:
        raise DataSourceError(f"source.negatives_from: {other!r} was prepared at {settings['image_size']} px and this "
                              f"dataset is set to {image_size} px (data.image_size): use the same size for both")
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    negatives = table[table.label == settings["negative"]]
    return [Record(other_dir / row.path, False, f"{other} {row.label}", row.split, patient_id=row.patient_id)
            for row in negatives.itertuples()]


def prepare(s: dict, dataset_dir: Path) -> Path:
    """Prepare the fetched dataset into dataset_dir (downloading it first if SOURCE.json is missing)."""
    dataset_dir = Path(dataset_dir)
    module, src = _module(s), s["source"]
    if module.NEEDS_NEGATIVES_FROM and not src.get("negatives_from"):
        raise DataSourceError(f"source.negatives_from: {module.NAME} has no negative class; name a prepared "
                              f"dataset whose negatives to use (e.g. brain-sartaj)")
    record_path = dataset_dir / SOURCE_RECORD
    if not record_path.is_file():
        download(s, dataset_dir)
    record = json.loads(record_path.read_text())
    if record["source"] != module.NAME:
        raise DataSourceError(f"{record_path}: fetched for source {record['source']!r}, not {module.NAME!r}: "
                              f"delete it to fetch again")
    collected: Collected = module.collect(dataset_dir / record["root"])
    if src.get("negatives_from"):
        collected.records += borrowed_negatives(dataset_dir, src["negatives_from"], s["data"]["image_size"])
    options = PrepareOptions.from_settings(s, module.DEDUPLICATE)
    source_summary = {key: record[key] for key in ("source", "route", "location", "version")}
    return preparation.prepare(collected, options, dataset_dir,
                               {"source": source_summary, "negatives_from": src.get("negatives_from")})
