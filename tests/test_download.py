"""Downloads against a real loopback HTTP server: checksums, resume, truncation, safe unzipping, fallback."""

from __future__ import annotations

import errno
import json
import logging
import platform
import re
import socket
import stat
import subprocess
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict
from datetime import datetime, timedelta, timezone

import pytest

import medxgan
from medxgan.data import download
from medxgan.data.download import (HOST_METADATA, KAGGLE_CREDENTIALS_HELP, PINNED, UNCHECKED, ArchiveRoute,
                                   DataSourceError, Expected, Fetched, FetchedFile, FigshareArticleRoute, FigshareRoute,
                                   GitHubRoute, HuggingFaceRoute, KaggleRoute, RouteUnavailable, extract_zip, fetch_file,
                                   fetch_first, get_json, tree_digest, write_source_record)
from loopback import LoopbackServer, md5, sha256, zip_bytes

PAYLOAD = bytes(range(256)) * 1600  # 400 KiB, several read chunks


@pytest.fixture
def server():
    with LoopbackServer() as running:
        running.files["/data.bin"] = PAYLOAD
        yield running


def _utc_time(text: str) -> datetime:
    """A recorded time, which must be ISO 8601 with the UTC offset spelled out."""
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0), f"{text!r} is not a UTC time"
    return moment


def test_fetch_checks_the_hash_and_reuses_a_checked_file(server, tmp_path):
    expected = Expected(len(PAYLOAD), "md5", md5(PAYLOAD), HOST_METADATA)
    item = fetch_file(f"{server.url}/data.bin", tmp_path / "downloads" / "data.bin", tmp_path, expected)
    assert (tmp_path / "downloads" / "data.bin").read_bytes() == PAYLOAD
    assert (item.path, item.size, item.algorithm, item.hash) == ("downloads/data.bin", len(PAYLOAD), "md5", md5(PAYLOAD))
    fetch_file(f"{server.url}/data.bin", tmp_path / "downloads" / "data.bin", tmp_path, expected)
    assert len(server.requests) == 1  # checked again on disk, not fetched again


def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    server.cut_once["/data.bin"] = 300_000
    dest, part = tmp_path / "data.bin", tmp_path / "data.bin.part"
    with pytest.raises(DataSourceError, match="the transfer stopped after .* bytes.*the next run resumes it"):
        fetch_file(f"{server.url}/data.bin", dest, tmp_path, Expected(len(PAYLOAD), "sha256", sha256(PAYLOAD)))
    kept = part.stat().st_size
    assert not dest.exists() and 0 < kept <= 300_000
    fetch_file(f"{server.url}/data.bin", dest, tmp_path, Expected(len(PAYLOAD), "sha256", sha256(PAYLOAD)))
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == ("/data.bin", f"bytes={kept}-")


def test_a_corrupted_cached_file_is_fetched_again_not_reused(server, tmp_path, caplog):
    """A file already in place is not trusted by its name: the same size with other bytes fails the
    hash, is reported and deleted, and the host's copy is fetched whole in its place."""
    dest = tmp_path / "downloads" / "data.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD[::-1])  # same name and size, other content
    expected = Expected(len(PAYLOAD), "md5", md5(PAYLOAD), HOST_METADATA)
    with caplog.at_level(logging.WARNING, logger="medxgan.data.download"):
        item = fetch_file(f"{server.url}/data.bin", dest, tmp_path, expected)
    assert f"{server.url}/data.bin: checksum mismatch: md5 {md5(PAYLOAD[::-1])}" in caplog.text
    assert dest.read_bytes() == PAYLOAD and item.hash == md5(PAYLOAD) and item.size == len(PAYLOAD)
    assert server.requests == [("/data.bin", None)]  # fetched whole, not resumed from the corrupt copy


def test_a_host_ignoring_the_range_gives_the_whole_file_once(server, tmp_path):
    """Resuming from a host that answers 200 with the whole body: the part is started again, not
    appended to (which would repeat its first bytes). Nothing pinned, so only the bytes can tell."""
    server.ignore_range = True
    dest, part = tmp_path / "data.bin", tmp_path / "data.bin.part"
    part.write_bytes(PAYLOAD[:100_000])
    item = fetch_file(f"{server.url}/data.bin", dest, tmp_path)
    assert server.requests == [("/data.bin", "bytes=100000-")]  # it did ask to resume
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert (item.size, item.algorithm, item.hash) == (len(PAYLOAD), "sha256", sha256(PAYLOAD))


def test_a_complete_part_answered_416_is_checked_and_kept(server, tmp_path):
    """A run stopped after the last byte but before the rename: the resume asks for bytes past the end,
    the host answers 416, and the part (checked: right size and hash) becomes the file, not fetched again."""
    dest, part = tmp_path / "data.bin", tmp_path / "data.bin.part"
    part.write_bytes(PAYLOAD)
    item = fetch_file(f"{server.url}/data.bin", dest, tmp_path, Expected(len(PAYLOAD), "sha256", sha256(PAYLOAD)))
    assert server.requests == [("/data.bin", f"bytes={len(PAYLOAD)}-")]
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert (item.size, item.hash) == (len(PAYLOAD), sha256(PAYLOAD))


@pytest.mark.parametrize("content, reason", [(PAYLOAD[::-1], "checksum mismatch"),
                                             (PAYLOAD + b"extra", f"too long: {len(PAYLOAD) + 5} bytes")])
def test_a_bad_part_answered_416_is_reported_and_deleted(server, tmp_path, content, reason):
    """416 says only that nothing follows the bytes we have; the size and hash checks still decide."""
    dest, part = tmp_path / "data.bin", tmp_path / "data.bin.part"
    part.write_bytes(content)
    with pytest.raises(DataSourceError, match=reason):
        fetch_file(f"{server.url}/data.bin", dest, tmp_path, Expected(len(PAYLOAD), "sha256", sha256(PAYLOAD)))
    assert server.requests == [("/data.bin", f"bytes={len(content)}-")]
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_checksum_is_reported_and_the_file_deleted(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(DataSourceError, match=r"data\.bin: checksum mismatch: md5 .* expected 0{32}"):
        fetch_file(f"{server.url}/data.bin", dest, tmp_path, Expected(len(PAYLOAD), "md5", "0" * 32))
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_file_is_reported_and_the_file_deleted(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD[:5000]  # the host's copy is short
    with pytest.raises(DataSourceError, match=f"truncated: 5000 bytes, expected {len(PAYLOAD)}"):
        fetch_file(f"{server.url}/data.bin", tmp_path / "data.bin", tmp_path, Expected(len(PAYLOAD), "md5", md5(PAYLOAD)))
    assert list(tmp_path.iterdir()) == []


def test_every_request_names_the_client(server, tmp_path):
    """Hosts see who is asking (some refuse clients that do not say): the metadata call, a fresh
    transfer and a resumed one all carry `User-Agent: medxgan-download`."""
    server.serve_json("/api/meta", {"files": []})
    server.files["/small.bin"] = b"small"
    assert get_json(f"{server.url}/api/meta") == {"files": []}
    fetch_file(f"{server.url}/small.bin", tmp_path / "small.bin", tmp_path)
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    expected = Expected(len(PAYLOAD), "sha256", sha256(PAYLOAD))
    fetch_file(f"{server.url}/data.bin", tmp_path / "data.bin", tmp_path, expected)
    assert server.requests == [("/api/meta", None), ("/small.bin", None), ("/data.bin", "bytes=1000-")]
    assert [headers["User-Agent"] for headers in server.headers_received] == ["medxgan-download"] * 3


def test_a_host_that_cannot_be_used_makes_the_route_unavailable_naming_the_url(server, tmp_path):
    """Nothing listening, a missing file, an answer that is not JSON: each says which URL failed
    and how, and leaves nothing behind."""
    def fetch(url):
        return fetch_file(url, tmp_path / "data.bin", tmp_path)

    with LoopbackServer() as gone:
        closed = gone.url  # nothing listens there any more
    for call, url in [(get_json, f"{closed}/api/meta"), (fetch, f"{closed}/data.bin")]:
        with pytest.raises(RouteUnavailable, match=f"^{re.escape(url)}: .*[Cc]onnection refused"):
            call(url)
    for call, url in [(get_json, f"{server.url}/api/missing"), (fetch, f"{server.url}/missing.bin")]:
        with pytest.raises(RouteUnavailable, match=f"^{re.escape(url)}: HTTP 404$"):
            call(url)
    server.files["/api/page"] = b"<html>a sign-in page</html>"
    with pytest.raises(RouteUnavailable, match=f"^{re.escape(server.url)}/api/page: the answer is not JSON: "):
        get_json(f"{server.url}/api/page")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def silent_host():
    """A host that takes connections and never answers: the kernel queues them and nobody accepts.
    After 5 s it closes, which resets them, so a client with no timeout fails instead of hanging."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)
    closer = threading.Timer(5, listener.close)
    closer.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    closer.cancel()
    listener.close()


def test_a_host_that_never_answers_is_unavailable_after_the_timeout(silent_host, tmp_path, monkeypatch):
    """TIMEOUT_S without an answer makes a host unreachable, for the metadata call and the transfer
    alike; the tests wait 0.2 s, not the real minute."""
    monkeypatch.setattr(download, "TIMEOUT_S", 0.2)
    with pytest.raises(RouteUnavailable, match=f"^{re.escape(silent_host)}/api/meta: .*timed out"):
        get_json(f"{silent_host}/api/meta")
    with pytest.raises(RouteUnavailable, match=f"^{re.escape(silent_host)}/data.bin: .*timed out"):
        fetch_file(f"{silent_host}/data.bin", tmp_path / "data.bin", tmp_path)


def _zip_with(tmp_path, entry: zipfile.ZipInfo, content: bytes = b"x"):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("fine/a.txt", b"fine")
        zipped.writestr(entry, content)
    return archive


# Names written on Windows count too: backslash separators, a leading backslash, a drive letter in
# either case. On POSIX zipfile keeps them as written (a backslash is an ordinary character there), so
# only the name check stands between them and a Windows user's disk or a re-packed archive.
@pytest.mark.parametrize("name", ["../escaped.txt", "/absolute.txt", "fine/../../escaped.txt",
                                  "..\\escaped.txt", "fine\\..\\..\\escaped.txt", "\\absolute.txt",
                                  "C:escaped.txt", "c:\\absolute.txt"])
def test_an_entry_escaping_the_target_rejects_the_archive(tmp_path, name):
    archive = _zip_with(tmp_path, zipfile.ZipInfo(name))
    with zipfile.ZipFile(archive) as zipped:
        assert zipped.namelist() == ["fine/a.txt", name]
    with pytest.raises(DataSourceError, match="would land outside the target folder; nothing was extracted"):
        extract_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_a_symbolic_link_entry_rejects_the_archive(tmp_path):
    link = zipfile.ZipInfo("fine/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip_with(tmp_path, link, b"/etc/passwd")
    with pytest.raises(DataSourceError, match="'fine/link' is a symbolic link"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_archive_is_reported(tmp_path):
    archive = tmp_path / "a.zip"
    data = bytearray(zip_bytes({"a.txt": b"hello world" * 100}))
    data[40] ^= 0xFF  # inside the stored data: the CRC no longer matches
    archive.write_bytes(bytes(data))
    with pytest.raises(DataSourceError, match="corrupt archive"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_archive_is_unpacked_beside_its_target_not_in_the_system_temp_folder(tmp_path, monkeypatch):
    """The unpacking folder lies next to the target, so moving it into place is a rename on one
    filesystem whatever TMPDIR is: a system temp folder that cannot be used changes nothing."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp-folder"))
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"Lung/a.txt": b"a"}))
    target = tmp_path / "raw" / "a"
    assert extract_zip(archive, target) == target
    assert (target / "Lung" / "a.txt").read_text() == "a"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a"]  # no partial folder left beside it


def test_the_next_route_is_tried_when_one_is_unavailable(server, tmp_path):
    archive = zip_bytes({"Training/a.txt": b"a"})
    repo = "someone/data"
    server.serve_json(f"/api/datasets/{repo}/tree/main",
                      [{"type": "file", "path": "Training.zip", "size": len(archive),
                        "lfs": {"oid": sha256(archive), "size": len(archive)}}])
    server.files[f"/datasets/{repo}/resolve/main/Training.zip"] = archive
    routes = {"first": HuggingFaceRoute("nobody/missing", "main", ("x.zip",)),
              "second": HuggingFaceRoute(repo, "main", ("Training.zip",))}
    fetched, skipped = fetch_first(routes, ["first", "second"], tmp_path, {"first": server.url, "second": server.url})
    assert fetched.route == "huggingface" and len(skipped) == 1 and "HTTP 404" in skipped[0]
    assert (fetched.root / "Training" / "Training" / "a.txt").read_text() == "a"
    assert fetched.files[0].hash == sha256(archive) and fetched.files[0].checked_against == HOST_METADATA
    with pytest.raises(DataSourceError, match="no route could fetch the dataset: first: .*HTTP 404"):
        fetch_first(routes, ["first"], tmp_path, {"first": server.url})


# The two routes whose hosts publish no hash: the zip's path on the host, where it is kept, and
# the hash measured on arrival, recorded as unchecked.
ZIP_ROUTES = [
    (GitHubRoute("someone/Data-Set", "3ea9f4e"), "/someone/Data-Set/zip/3ea9f4e",
     "downloads/github/Data-Set-3ea9f4e.zip", "github.com/someone/Data-Set", "3ea9f4e"),
    (FigshareArticleRoute(1512427, 5), "/ndownloader/articles/1512427/versions/5",
     "downloads/figshare-article/article-1512427-v5.zip", "figshare article 1512427", "5"),
]


@pytest.mark.parametrize("route, host_path, kept_as, location, version", ZIP_ROUTES, ids=["github", "figshare-article"])
def test_a_zip_route_fetches_its_archive_records_the_measured_hash_and_unpacks_it(
        server, tmp_path, route, host_path, kept_as, location, version):
    archive = zip_bytes({"top/Training/a.txt": b"a"})
    server.files[host_path] = archive
    fetched = route.fetch(tmp_path, server.url)
    assert (fetched.route, fetched.location, fetched.version) == (route.kind, location, version)
    [item] = fetched.files
    assert (item.url, item.path, item.size) == (server.url + host_path, kept_as, len(archive))
    assert (item.algorithm, item.hash, item.checked_against) == ("sha256", sha256(archive), UNCHECKED)
    assert (tmp_path / kept_as).read_bytes() == archive
    unpacked = tmp_path / "raw" / route.kind / (tmp_path / kept_as).stem
    assert fetched.root == tmp_path / "raw" / route.kind
    assert (unpacked / "top" / "Training" / "a.txt").read_text() == "a"


@pytest.mark.parametrize("route", [r[0] for r in ZIP_ROUTES], ids=["github", "figshare-article"])
def test_a_zip_route_missing_on_its_host_is_unavailable(server, tmp_path, route):
    with pytest.raises(RouteUnavailable, match="HTTP 404"):
        route.fetch(tmp_path, server.url)
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("host_path, kept_as", [("/mirror/covidqu.zip", "downloads/archive/covidqu.zip"),
                                                 ("/", "downloads/archive/archive.zip")], ids=["named", "unnamed"])
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "unpinned"])
def test_the_archive_route_checks_a_pinned_hash_and_records_an_unpinned_one(server, tmp_path, host_path, kept_as,
                                                                            pinned):
    archive = zip_bytes({"COVID-QU-Ex/a.txt": b"a"})
    server.files[host_path] = archive
    url = server.url + host_path
    fetched = ArchiveRoute(url, sha256(archive) if pinned else None).fetch(tmp_path)
    assert (fetched.route, fetched.location, fetched.version) == ("archive", url,
                                                                 sha256(archive) if pinned else "unpinned")
    [item] = fetched.files
    assert (item.path, item.hash, item.checked_against) == (kept_as, sha256(archive), PINNED if pinned else UNCHECKED)
    assert (fetched.root / (tmp_path / kept_as).stem / "COVID-QU-Ex" / "a.txt").read_text() == "a"


def test_the_archive_route_refuses_an_archive_that_is_not_the_pinned_one(server, tmp_path):
    server.files["/covidqu.zip"] = zip_bytes({"a.txt": b"a"})
    with pytest.raises(DataSourceError, match=f"checksum mismatch.*expected {'0' * 64} \\({PINNED}\\)"):
        ArchiveRoute(f"{server.url}/covidqu.zip", "0" * 64).fetch(tmp_path)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "downloads" / "archive" / "covidqu.zip").exists()


def sha256sum_accepts(listing, folder) -> int:
    """How many files `sha256sum -c listing`, run in `folder`, finds intact (0 if it rejects any)."""
    checked = subprocess.run(["sha256sum", "-c", str(listing)], cwd=folder, capture_output=True, text=True)
    return checked.stdout.count(": OK") if checked.returncode == 0 else 0


def test_tree_digest_hashes_the_sha256sum_listing_of_every_file(tmp_path):
    """The listing Kaggle downloads are recorded by: one `sha256sum` line per file, sorted by path,
    which `sha256sum -c` accepts; the digest is the sha256 of those lines."""
    files = {"b/two.png": b"22", "a.txt": b"1", "b/a/three": b"333", "c d/é.txt": b""}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    (tmp_path / "empty folder").mkdir()
    digest, count, size, lines = tree_digest(tmp_path)
    expected = [f"{sha256(files[name])}  {name}" for name in sorted(files)]
    assert lines == expected and count == 4 and size == sum(len(c) for c in files.values())
    assert digest == sha256("\n".join(expected).encode())
    (tmp_path / "listing.sha256").write_text("\n".join(lines) + "\n")
    assert sha256sum_accepts("listing.sha256", tmp_path) == 4


def test_huggingface_checks_a_large_files_sha256_and_a_small_files_size(server, tmp_path):
    """Large (LFS) files carry their sha256 in the listing, small ones only their size and a git id:
    the hash is checked where published, the size otherwise. Entries that are not files with a path
    are skipped."""
    repo, revision = "someone/chest-xray", "v1.0"
    images, labels = zip_bytes({"Training/a.txt": b"a"}), b"file,label\na.txt,0\n"
    server.serve_json(f"/api/datasets/{repo}/tree/{revision}", [
        "a stray string", {"type": "directory", "oid": "0" * 40},
        {"type": "file", "path": "Training.zip", "size": len(images),
         "lfs": {"oid": sha256(images), "size": len(images)}},
        {"type": "file", "path": "labels.csv", "size": len(labels), "oid": "1" * 40}])
    server.files[f"/datasets/{repo}/resolve/{revision}/Training.zip"] = images
    server.files[f"/datasets/{repo}/resolve/{revision}/labels.csv"] = labels
    fetched = HuggingFaceRoute(repo, revision, ("Training.zip", "labels.csv")).fetch(tmp_path, server.url)
    assert (fetched.route, fetched.location, fetched.version) == ("huggingface", f"{server.url}/datasets/{repo}",
                                                                   revision)
    assert [(item.path, item.size, item.algorithm, item.hash, item.checked_against) for item in fetched.files] == [
        ("downloads/huggingface/Training.zip", len(images), "sha256", sha256(images), HOST_METADATA),
        ("downloads/huggingface/labels.csv", len(labels), "sha256", sha256(labels), UNCHECKED)]
    assert fetched.root == tmp_path / "raw" / "huggingface"
    assert (fetched.root / "Training" / "Training" / "a.txt").read_text() == "a"


@pytest.mark.parametrize("listed, error, message", [
    ({"path": "labels.csv", "size": 19}, DataSourceError, "labels.csv: file is truncated: 18 bytes, expected 19"),
    ({"path": "labels.csv", "size": 18, "lfs": {"oid": "0" * 64, "size": 18}}, DataSourceError,
     f"labels.csv: checksum mismatch: sha256 .*, expected {'0' * 64} \\({HOST_METADATA}\\)"),
    ({"path": "other.csv", "size": 18}, RouteUnavailable,
     "^someone/chest-xray@main: no file 'labels.csv' in the repository$"),
], ids=["small-file-wrong-size", "large-file-wrong-sha256", "not-listed"])
def test_huggingface_refuses_a_file_other_than_the_one_listed(server, tmp_path, listed, error, message):
    repo = "someone/chest-xray"
    server.serve_json(f"/api/datasets/{repo}/tree/main", [{"type": "file", **listed}])
    server.files[f"/datasets/{repo}/resolve/main/labels.csv"] = b"file,label\na.txt,0"  # 18 bytes
    with pytest.raises(error, match=message):
        HuggingFaceRoute(repo, "main", ("labels.csv",)).fetch(tmp_path, server.url)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "downloads" / "huggingface" / "labels.csv").exists()


def test_figshare_fetches_every_listed_file_checking_its_size_and_md5(server, tmp_path):
    """Each file is kept under downloads/figshare by its base name only (a name with a path in it
    stays in that folder), checked against the size and md5 the API lists, and zips are unpacked."""
    images, notes = zip_bytes({"Lung/a.txt": b"a"}), b"notes"
    server.serve_json("/articles/1512427/versions/5", {"id": 1512427, "files": [
        {"name": "images.zip", "size": len(images), "computed_md5": md5(images), "download_url": f"{server.url}/f/1"},
        {"name": "../notes.txt", "size": len(notes), "computed_md5": md5(notes), "download_url": f"{server.url}/f/2"}]})
    server.files["/f/1"], server.files["/f/2"] = images, notes
    fetched = FigshareRoute(1512427, 5).fetch(tmp_path, server.url)
    assert (fetched.route, fetched.location, fetched.version) == ("figshare", "figshare article 1512427", "5")
    assert [(item.url, item.path, item.size, item.algorithm, item.hash, item.checked_against)
            for item in fetched.files] == [
        (f"{server.url}/f/1", "downloads/figshare/images.zip", len(images), "md5", md5(images), HOST_METADATA),
        (f"{server.url}/f/2", "downloads/figshare/notes.txt", len(notes), "md5", md5(notes), HOST_METADATA)]
    assert fetched.root == tmp_path / "raw" / "figshare"
    assert (fetched.root / "images" / "Lung" / "a.txt").read_text() == "a"


def test_figshare_refuses_a_file_of_another_size_and_an_article_without_files(server, tmp_path):
    notes = b"notes"
    server.serve_json("/articles/7/versions/2", {"files": [
        {"name": "notes.txt", "size": len(notes) + 1, "computed_md5": md5(notes),
         "download_url": f"{server.url}/f/2"}]})
    server.files["/f/2"] = notes
    with pytest.raises(DataSourceError, match="/f/2: file is truncated: 5 bytes, expected 6"):
        FigshareRoute(7, 2).fetch(tmp_path, server.url)
    for meta in ({"id": 7, "files": []}, {"id": 7}):  # an embargoed or private article lists none
        server.serve_json("/articles/7/versions/2", meta)
        with pytest.raises(RouteUnavailable, match="^figshare article 7 version 2 lists no files$"):
            FigshareRoute(7, 2).fetch(tmp_path, server.url)
    assert not (tmp_path / "raw").exists()


class DownRoute:
    """A stand-in route for `fetch_first` (the code under test here): it notes the base URL it is
    handed and is never available."""

    def __init__(self, name: str, handed: list):
        self.name, self.handed = name, handed

    def fetch(self, dataset_dir, base_url):
        self.handed.append(base_url)
        raise RouteUnavailable(f"{self.name} is down")


def test_fetch_first_hands_each_route_its_host_and_names_every_failure(tmp_path):
    """A route gets the URL configured for it, else its kind's public host (none for a route kind
    without one); when every route fails the error lists why, in order; a route the order names
    that the source lacks is a configuration error listing those it has."""
    handed = []
    routes = {name: DownRoute(name, handed) for name in ("github", "figshare", "archive")}
    with pytest.raises(DataSourceError, match="^no route could fetch the dataset: github: github is down; "
                                              "figshare: figshare is down; archive: archive is down$"):
        fetch_first(routes, ["github", "figshare", "archive"], tmp_path, {"figshare": "http://127.0.0.1:9/mirror"})
    assert handed == ["https://codeload.github.com", "http://127.0.0.1:9/mirror", None]
    with pytest.raises(DataSourceError, match="^source.routes: unknown route 'kaggle'; this source offers "
                                              "github, figshare, archive$"):
        fetch_first(routes, ["github", "kaggle"], tmp_path, {})


def test_the_source_record_says_what_was_fetched_from_where_and_when(tmp_path):
    """SOURCE.json: the dataset and source, the route's location and version, where the files lie
    (relative to the dataset folder when inside it, absolute when outside, as Kaggle's cache is), each
    file, the routes skipped and why, when (UTC) and with what software."""
    dataset_dir = tmp_path / "data" / "covidqu"
    dataset_dir.mkdir(parents=True)
    item = FetchedFile("http://host/a.zip", "downloads/archive/a.zip", 3, "sha256", "ab" * 32, PINNED,
                       "2026-01-02T03:04:05+00:00")
    skipped = ["kaggle: Kaggle asks for credentials", "huggingface: HTTP 404"]
    before = datetime.now(timezone.utc).replace(microsecond=0)
    path = write_source_record(dataset_dir, "covidqu", "COVID-QU-Ex", Fetched(
        "archive", "http://host/a.zip", "unpinned", dataset_dir / "raw" / "archive", [item]), skipped)
    after = datetime.now(timezone.utc)
    assert path == dataset_dir / "SOURCE.json"
    record = json.loads(path.read_text())
    assert {key: record[key] for key in ("dataset", "source", "route", "location", "version", "root", "files",
                                         "routes_skipped")} == {
        "dataset": "covidqu", "source": "COVID-QU-Ex", "route": "archive", "location": "http://host/a.zip",
        "version": "unpinned", "root": "raw/archive", "files": [asdict(item)], "routes_skipped": skipped}
    assert before <= _utc_time(record["recorded"]) <= after
    assert (record["provenance"]["medxgan"], record["provenance"]["python"]) == (medxgan.__version__,
                                                                                 platform.python_version())
    cache = tmp_path / "cache" / "datasets" / "owner" / "slug" / "versions" / "3"
    record = json.loads(write_source_record(dataset_dir, "covidqu", "COVID-QU-Ex",
                                            Fetched("kaggle", "owner/slug/versions/3", "3", cache), []).read_text())
    assert (record["root"], record["routes_skipped"]) == (str(cache.resolve()), [])


# --- Kaggle, through the real kagglehub kept off the internet ------------------------------

# What kagglehub reads to find credentials, a Kaggle notebook or a Colab runtime: none of it from the
# machine running the tests.
KAGGLE_ENV = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_DATA_PROXY_URL",
              "KAGGLE_USER_SECRETS_TOKEN", "KAGGLE_DATA_PROXY_TOKEN", "KAGGLE_CACHE_MOUNT_FOLDER",
              "DISABLE_KAGGLE_CACHE", "TBE_RUNTIME_ADDR", "COLAB_RELEASE_TAG")


@pytest.fixture
def kaggle_cache(tmp_path, monkeypatch):
    """kagglehub with no credentials, its cache in `tmp_path`, and Kaggle's API at kagglesdk's TEST
    endpoint (localhost:7777), so that nothing it does can reach kaggle.com."""
    for name in KAGGLE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-credentials"))
    return tmp_path / "cache"


@pytest.fixture
def kaggle_api(kaggle_cache):
    """A loopback stand-in for Kaggle's API on the TEST endpoint's fixed port, 7777. Another run of
    these tests (a mutation run starts several) may hold the port for a moment: wait for it."""
    deadline = time.monotonic() + 15
    while True:
        try:
            api = LoopbackServer(port=7777)
            break
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            if time.monotonic() > deadline:
                pytest.skip("port 7777 is in use")
            time.sleep(0.05)
    with api:
        yield api


@pytest.mark.parametrize("status", [401, 403])
def test_kaggle_asking_for_credentials_says_so(kaggle_api, tmp_path, status):
    """Kaggle refusing an anonymous client (401, or 403 for terms not accepted) is a route needing
    credentials, and the message says how to give them."""
    kaggle_api.missing_status = status
    with pytest.raises(RouteUnavailable, match=f"^{re.escape(KAGGLE_CREDENTIALS_HELP.format(handle='owner/slug'))}$"):
        KaggleRoute("owner/slug").fetch(tmp_path)
    assert kaggle_api.requests, "kagglehub did not reach the stand-in server"


def test_kaggle_not_finding_the_dataset_passes_on_kaggles_answer(kaggle_api, tmp_path):
    """A dataset Kaggle does not have (or an API error): kagglehub's own message is passed on, after
    the handle it was about, not the credentials help."""
    kaggle_api.missing_status = 404
    with pytest.raises(RouteUnavailable, match="^kaggle owner/slug: 404 Client Error") as raised:
        KaggleRoute("owner/slug").fetch(tmp_path)
    assert "credentials" not in str(raised.value)


def test_kaggle_lists_and_hashes_every_file_of_the_cached_version(kaggle_cache, tmp_path):
    """A pinned version already in kagglehub's cache (its completion marker written, as after a
    download) is used as it lies; SOURCE.json gets one entry for the tree, and the dataset folder a
    `files.sha256` that `sha256sum -c` accepts from the cached folder."""
    handle = "owner/slug/versions/3"
    root = kaggle_cache / "datasets" / "owner" / "slug" / "versions" / "3"
    files = {"COVID-QU-Ex/Infection Segmentation/a.png": b"aa", "COVID-QU-Ex/readme.txt": b"hello", "meta.csv": b"x\n"}
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    (kaggle_cache / "datasets" / "owner" / "slug" / "3.complete").touch()
    dataset_dir = tmp_path / "data" / "covidqu"  # neither it nor its parent there yet
    lines = [f"{sha256(files[name])}  {name}" for name in sorted(files)]

    fetched = KaggleRoute(handle).fetch(dataset_dir)
    assert (fetched.route, fetched.location, fetched.version, fetched.root) == ("kaggle", handle, "3", root)
    [tree] = fetched.files
    assert (tree.url, tree.path, tree.size) == (f"kaggle:{handle}", str(root), sum(map(len, files.values())))
    assert (tree.algorithm, tree.hash) == ("sha256 of files.sha256",
                                           sha256("\n".join(lines).encode()))
    assert tree.checked_against == "kagglehub (archive MD5); 3 files listed in files.sha256"
    assert abs(_utc_time(tree.retrieved).timestamp() - root.stat().st_mtime) < 1
    listing = dataset_dir / "files.sha256"
    assert listing.read_text() == "\n".join(lines) + "\n"
    assert sha256sum_accepts(listing, root) == 3

    listing.write_text("stale\n")  # a rerun: the dataset folder is there now, the listing is written afresh
    assert KaggleRoute(handle).fetch(dataset_dir) == fetched
    assert listing.read_text() == "\n".join(lines) + "\n"


def test_in_a_kaggle_notebook_the_attached_dataset_is_used_and_its_version_is_unknown(kaggle_cache, server, tmp_path,
                                                                                       monkeypatch):
    """In a Kaggle notebook kagglehub asks the notebook's data proxy (here the loopback server) to
    attach the dataset and gets a folder under /kaggle/input, whose path names no version."""
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("KAGGLE_DATA_PROXY_URL", server.url)
    monkeypatch.setenv("KAGGLE_CACHE_MOUNT_FOLDER", str(tmp_path / "input"))
    route = KaggleRoute("owner/slug")
    # without the notebook's tokens kagglehub cannot ask: credentials are what is missing
    with pytest.raises(RouteUnavailable, match=f"^{re.escape(KAGGLE_CREDENTIALS_HELP.format(handle='owner/slug'))}$"):
        route.fetch(tmp_path / "data")
    assert server.requests == []
    monkeypatch.setenv("KAGGLE_USER_SECRETS_TOKEN", "jwt")
    monkeypatch.setenv("KAGGLE_DATA_PROXY_TOKEN", "proxy")
    # a proxy that refuses: unavailable, naming the dataset
    with pytest.raises(RouteUnavailable, match=r"^kaggle owner/slug: 404 Client Error"):
        route.fetch(tmp_path / "data")
    attach = "/kaggle-jwt-handler/AttachDatasourceUsingJwtRequest"
    assert server.requests == [(attach, None)]
    server.serve_json(attach, {"wasSuccessful": True, "result": {"mountSlug": "slug"}})
    mounted = tmp_path / "input" / "slug"
    mounted.mkdir(parents=True)
    (mounted / "a.png").write_bytes(b"aa")
    fetched = route.fetch(tmp_path / "data")
    assert (fetched.route, fetched.location, fetched.version, fetched.root) == ("kaggle", "owner/slug", "unknown",
                                                                                mounted)
    assert [(item.path, item.size) for item in fetched.files] == [(str(mounted), 2)]
