"""Fetching a dataset's files: HTTP with resume and checksums, Kaggle through kagglehub, safe unzipping.

Every file fetched is checked (size and hash) before anything reads it, and recorded in
`data/{dataset}/SOURCE.json`. A transfer that stops half way leaves `<name>.part` behind, which
the next run resumes with an HTTP Range request; a file whose size or hash is wrong is deleted
and reported. Archives are unpacked into a temporary folder that is renamed into place only
when every entry is safe and intact.

A route is one way of getting a dataset (Kaggle, Hugging Face, GitHub, figshare, an archive URL).
A route that cannot be used here (host unreachable, file not found, credentials needed) raises
RouteUnavailable and the next route in the dataset's fallback order is tried; a file that arrives
corrupt or incomplete stops the download with a DataSourceError.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import requests

from medxgan.files import progress, provenance, write_json

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16  # read and written at a time: a dropped connection loses at most this much
TIMEOUT_S = 60  # seconds without an answer before a host counts as unreachable
HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
USER_AGENT = "medxgan-download"

# Where each kind of route downloads from; `source.urls` in the config overrides any of them
# (a local mirror, or the loopback server of the tests).
DEFAULT_BASE_URLS = {
    "huggingface": "https://huggingface.co",
    "github": "https://codeload.github.com",
    "figshare": "https://api.figshare.com/v2",
    "figshare-article": "https://figshare.com",
}

# What the recorded hash was checked against.
PINNED = "pinned in the source definition or config"
HOST_METADATA = "host metadata"
UNCHECKED = "none published: recorded at download"


class DataSourceError(ValueError):
    """A download, archive or source folder that cannot be used; the message names the file or URL."""


class RouteUnavailable(Exception):
    """This route cannot be used here (unreachable, not found, credentials needed): try the next one."""


@dataclass
class FetchedFile:
    """One file as fetched and checked: what SOURCE.json lists."""

    url: str
    path: str  # where it lies, relative to the dataset folder
    size: int
    algorithm: str
    hash: str
    checked_against: str
    retrieved: str  # when the file was completed (UTC, ISO 8601)


@dataclass
class Fetched:
    """A dataset as one route delivered it: the folder to prepare from, and what was fetched."""

    route: str
    location: str  # the Kaggle handle, repository or URL
    version: str
    root: Path
    files: list[FetchedFile] = field(default_factory=list)


@dataclass(frozen=True)
class Expected:
    """What a file should be, where known."""

    size: int | None = None
    algorithm: str = "sha256"
    hash: str | None = None
    checked_against: str = UNCHECKED


def file_hash(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def get_json(url: str) -> dict | list:
    """A host's metadata (figshare's or Hugging Face's API)."""
    try:
        response = requests.get(url, timeout=TIMEOUT_S, headers={"User-Agent": USER_AGENT})
    except requests.RequestException as err:
        raise RouteUnavailable(f"{url}: {err}") from err
    if not response.ok:
        raise RouteUnavailable(f"{url}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError as err:
        raise RouteUnavailable(f"{url}: the answer is not JSON: {err}") from err


def _transfer(url: str, part: Path) -> None:
    """Append the rest of `url` to `part`, resuming after the bytes it already has."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_S)
    except requests.RequestException as err:
        raise RouteUnavailable(f"{url}: {err}") from err
    with response:
        if have and response.status_code == HTTP_RANGE_NOT_SATISFIABLE:
            return  # nothing after the bytes we have: the size and hash checks decide
        if not response.ok:
            raise RouteUnavailable(f"{url}: HTTP {response.status_code}")
        if have and response.status_code != HTTP_PARTIAL_CONTENT:
            have = 0  # the host ignored the range: start again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else None
        try:
            with open(part, "ab" if have else "wb") as out, \
                    progress(total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-len(".part")]) as bar:
                for chunk in response.iter_content(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
        except requests.RequestException as err:
            raise DataSourceError(f"{url}: the transfer stopped after {part.stat().st_size} bytes ({err}); "
                                  f"{part} is kept and the next run resumes it") from err


def _check(path: Path, url: str, expected: Expected) -> str:
    """The file's hash; a file of the wrong size or hash is deleted and reported."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        path.unlink()
        kind = "truncated" if size < expected.size else "too long"
        raise DataSourceError(f"{url}: file is {kind}: {size} bytes, expected {expected.size}; "
                              f"deleted, nothing was prepared")
    actual = file_hash(path, expected.algorithm)
    if expected.hash is not None and actual != expected.hash.lower():
        path.unlink()
        raise DataSourceError(f"{url}: checksum mismatch: {expected.algorithm} {actual}, expected {expected.hash} "
                              f"({expected.checked_against}); deleted, nothing was prepared")
    return actual


def fetch_file(url: str, dest: Path, dataset_dir: Path, expected: Expected = Expected()) -> FetchedFile:
    """Download `url` to `dest` (resuming a `.part` left by an earlier run) and check it.

    A `dest` already there from an earlier run is checked again instead of fetched; one that fails
    the check (a disk error, a hand edit) is deleted and fetched afresh.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = None
    if dest.is_file():
        try:
            digest = _check(dest, url, expected)
        except DataSourceError as error:
            log.warning("the copy already downloaded failed its check, fetching it again: %s", error)
    if digest is None:
        part = dest.with_name(dest.name + ".part")
        _transfer(url, part)
        digest = _check(part, url, expected)
        os.replace(part, dest)
    return FetchedFile(url=url, path=str(dest.relative_to(dataset_dir)), size=dest.stat().st_size,
                       algorithm=expected.algorithm, hash=digest, checked_against=expected.checked_against,
                       retrieved=_utc(dest.stat().st_mtime))


# --- archives ----------------------------------------------------------------------------

def _unsafe_reason(member: zipfile.ZipInfo, target: Path) -> str | None:
    if stat.S_ISLNK(member.external_attr >> 16):
        return "is a symbolic link"
    name = member.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        return "would land outside the target folder"
    if not (target / name).resolve().is_relative_to(target.resolve()):
        return "would land outside the target folder"
    return None


def extract_zip(archive: Path, target: Path) -> Path:
    """Unpack `archive` into `target`, all or nothing; an unpacked `target` from an earlier run is kept.

    Entries that are symbolic links or would land outside `target` reject the whole archive.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            for member in members:
                reason = _unsafe_reason(member, partial)
                if reason:
                    raise DataSourceError(f"{archive}: entry {member.filename!r} {reason}; nothing was extracted")
            for member in progress(members, desc=f"unpacking {archive.name}", unit="file"):
                zipped.extract(member, partial)
        os.replace(partial, target)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DataSourceError(f"{archive}: corrupt archive ({err}); nothing was extracted") from err
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return target


def extract_fetched(fetched: Fetched, dataset_dir: Path) -> Fetched:
    """Unpack every fetched zip into `raw/<route>/<name without .zip>/`, the folder preparation reads."""
    raw = dataset_dir / "raw" / fetched.route
    for item in fetched.files:
        path = dataset_dir / item.path
        if zipfile.is_zipfile(path):
            extract_zip(path, raw / path.stem)
    fetched.root = raw
    return fetched


def tree_digest(root: Path) -> tuple[str, int, int, list[str]]:
    """sha256 over every file under `root` (sorted by path): the digest, file count, bytes, and
    the `sha256sum` lines of every file."""
    lines, total = [], 0
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in progress(files, desc="hashing", unit="file"):
        lines.append(f"{file_hash(path, 'sha256')}  {path.relative_to(root).as_posix()}")
        total += path.stat().st_size
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return digest, len(files), total, lines


# --- routes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HuggingFaceRoute:
    """Files of a Hugging Face dataset repository; their sha256 comes from the Hub's file listing."""

    repo: str
    revision: str
    files: tuple[str, ...]
    kind: str = "huggingface"

    def fetch(self, dataset_dir: Path, base_url: str) -> Fetched:
        listing = get_json(f"{base_url}/api/datasets/{self.repo}/tree/{self.revision}")
        entries = {entry["path"]: entry for entry in listing if isinstance(entry, dict) and "path" in entry}
        fetched = Fetched(self.kind, f"{base_url}/datasets/{self.repo}", self.revision, dataset_dir)
        for name in self.files:
            if name not in entries:
                raise RouteUnavailable(f"{self.repo}@{self.revision}: no file {name!r} in the repository")
            lfs = entries[name].get("lfs")  # large files carry their sha256; small ones only a git id
            expected = (Expected(lfs["size"], "sha256", lfs["oid"], HOST_METADATA) if lfs
                        else Expected(entries[name].get("size")))
            url = f"{base_url}/datasets/{self.repo}/resolve/{self.revision}/{name}"
            fetched.files.append(fetch_file(url, dataset_dir / "downloads" / self.kind / name, dataset_dir, expected))
        return extract_fetched(fetched, dataset_dir)


@dataclass(frozen=True)
class GitHubRoute:
    """A repository's zip at a fixed commit; GitHub publishes no hash, so the one measured is recorded."""

    repo: str
    commit: str
    kind: str = "github"

    def fetch(self, dataset_dir: Path, base_url: str) -> Fetched:
        url = f"{base_url}/{self.repo}/zip/{self.commit}"
        name = f"{self.repo.split('/')[-1]}-{self.commit}.zip"
        fetched = Fetched(self.kind, f"github.com/{self.repo}", self.commit, dataset_dir)
        fetched.files.append(fetch_file(url, dataset_dir / "downloads" / self.kind / name, dataset_dir))
        return extract_fetched(fetched, dataset_dir)


@dataclass(frozen=True)
class FigshareRoute:
    """Every file of a figshare article version; the API lists each file's size and md5."""

    article: int
    version: int
    kind: str = "figshare"

    def fetch(self, dataset_dir: Path, base_url: str) -> Fetched:
        meta = get_json(f"{base_url}/articles/{self.article}/versions/{self.version}")
        fetched = Fetched(self.kind, f"figshare article {self.article}", str(self.version), dataset_dir)
        for item in meta.get("files", []):
            expected = Expected(item["size"], "md5", item["computed_md5"], HOST_METADATA)
            dest = dataset_dir / "downloads" / self.kind / Path(item["name"]).name
            fetched.files.append(fetch_file(item["download_url"], dest, dataset_dir, expected))
        if not fetched.files:
            raise RouteUnavailable(f"figshare article {self.article} version {self.version} lists no files")
        return extract_fetched(fetched, dataset_dir)


@dataclass(frozen=True)
class FigshareArticleRoute:
    """A figshare article version as one zip (no published hash: the one measured is recorded)."""

    article: int
    version: int
    kind: str = "figshare-article"

    def fetch(self, dataset_dir: Path, base_url: str) -> Fetched:
        url = f"{base_url}/ndownloader/articles/{self.article}/versions/{self.version}"
        fetched = Fetched(self.kind, f"figshare article {self.article}", str(self.version), dataset_dir)
        dest = dataset_dir / "downloads" / self.kind / f"article-{self.article}-v{self.version}.zip"
        fetched.files.append(fetch_file(url, dest, dataset_dir))
        return extract_fetched(fetched, dataset_dir)


@dataclass(frozen=True)
class ArchiveRoute:
    """A copy of the dataset's archive at a URL of the user's choice (`source.archive` in the config)."""

    url: str
    sha256: str | None = None
    kind: str = "archive"

    def fetch(self, dataset_dir: Path, base_url: str | None = None) -> Fetched:
        expected = Expected(hash=self.sha256, checked_against=PINNED if self.sha256 else UNCHECKED)
        name = Path(urlparse(self.url).path).name or "archive.zip"
        fetched = Fetched(self.kind, self.url, self.sha256 or "unpinned", dataset_dir)
        fetched.files.append(fetch_file(self.url, dataset_dir / "downloads" / self.kind / name, dataset_dir, expected))
        return extract_fetched(fetched, dataset_dir)


KAGGLE_CREDENTIALS_HELP = ("Kaggle asks for credentials to download {handle}: sign in on kaggle.com, accept the "
                           "dataset's terms, and put an API token in ~/.kaggle/kaggle.json (or set KAGGLE_USERNAME "
                           "and KAGGLE_KEY)")
KAGGLE_NEEDS_LOGIN = (401, 403)


@dataclass(frozen=True)
class KaggleRoute:
    """A Kaggle dataset through kagglehub, which checks the archive's MD5 against Kaggle's and unpacks
    it into its cache (`KAGGLEHUB_CACHE`). The unpacked files are hashed and listed in
    `files.sha256`, since the archive itself is not kept."""

    handle: str  # owner/slug, or owner/slug/versions/N to pin a version
    kind: str = "kaggle"

    def fetch(self, dataset_dir: Path, base_url: str | None = None) -> Fetched:
        root = Path(self._download())
        version = root.name if root.parent.name == "versions" else "unknown"
        digest, count, size, lines = tree_digest(root)
        listing = dataset_dir / "files.sha256"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("\n".join(lines) + "\n")
        tree = FetchedFile(url=f"kaggle:{self.handle}", path=str(root), size=size, algorithm="sha256 of files.sha256",
                           hash=digest, checked_against=f"kagglehub (archive MD5); {count} files listed in files.sha256",
                           retrieved=_utc(root.stat().st_mtime))
        return Fetched(self.kind, self.handle, version, root, [tree])

    def _download(self) -> str:
        import kagglehub  # loaded only for Kaggle downloads
        from kagglehub import exceptions

        try:
            return kagglehub.dataset_download(self.handle)
        except exceptions.KaggleApiHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            reason = (KAGGLE_CREDENTIALS_HELP.format(handle=self.handle) if status in KAGGLE_NEEDS_LOGIN
                      else f"kaggle {self.handle}: {err}")
            raise RouteUnavailable(reason) from err
        except (exceptions.UnauthenticatedError, exceptions.CredentialError) as err:
            raise RouteUnavailable(KAGGLE_CREDENTIALS_HELP.format(handle=self.handle)) from err
        except (requests.RequestException, exceptions.BackendError, exceptions.NotFoundError, OSError) as err:
            raise RouteUnavailable(f"kaggle {self.handle}: {err}") from err


def fetch_first(routes: dict, order: list[str], dataset_dir: Path, urls: dict[str, str]) -> tuple[Fetched, list[str]]:
    """The dataset from the first route in `order` that works, and why the ones before it did not."""
    skipped = []
    for name in order:
        if name not in routes:
            raise DataSourceError(f"source.routes: unknown route {name!r}; this source offers {', '.join(routes)}")
        route = routes[name]
        base_url = urls.get(name, DEFAULT_BASE_URLS.get(name))
        log.info("fetching through %s", name)
        try:
            return route.fetch(dataset_dir, base_url), skipped
        except RouteUnavailable as err:
            log.warning("%s unavailable: %s", name, err)
            skipped.append(f"{name}: {err}")
    raise DataSourceError("no route could fetch the dataset: " + "; ".join(skipped))


def write_source_record(dataset_dir: Path, dataset: str, source: str, fetched: Fetched, skipped: list[str]) -> Path:
    """SOURCE.json: where the data came from, each file's size and hash, and when."""
    root = fetched.root.resolve()
    inside = root.is_relative_to(dataset_dir.resolve())
    record = {
        "dataset": dataset,
        "source": source,
        "route": fetched.route,
        "location": fetched.location,
        "version": fetched.version,
        "root": str(root.relative_to(dataset_dir.resolve()) if inside else root),
        "files": [asdict(item) for item in fetched.files],
        "routes_skipped": skipped,
        "recorded": _utc(datetime.now(timezone.utc).timestamp()),
        "provenance": provenance(),
    }
    path = dataset_dir / "SOURCE.json"
    write_json(path, record)
    return path
