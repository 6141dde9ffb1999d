"""Downloads against a real loopback HTTP server: checksums, resume, truncation, safe unzipping, fallback."""

from __future__ import annotations

import errno
import hashlib
import logging
import stat
import subprocess
import zipfile

import pytest

from medxgan.data.download import (HOST_METADATA, PINNED, UNCHECKED, ArchiveRoute, DataSourceError, Expected,
                                   FigshareArticleRoute, GitHubRoute, HuggingFaceRoute, KaggleRoute, RouteUnavailable, extract_zip,
                                   fetch_file, fetch_first, tree_digest)
from loopback import LoopbackServer, md5, sha256, zip_bytes

PAYLOAD = bytes(range(256)) * 1600  # 400 KiB, several read chunks


@pytest.fixture
def server():
    with LoopbackServer() as running:
        running.files["/data.bin"] = PAYLOAD
        yield running


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
    assert f"checksum mismatch: md5 {md5(PAYLOAD[::-1])}" in caplog.text
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


def _zip_with(tmp_path, entry: zipfile.ZipInfo, content: bytes = b"x"):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("fine/a.txt", b"fine")
        zipped.writestr(entry, content)
    return archive


@pytest.mark.parametrize("name", ["../escaped.txt", "/absolute.txt", "fine/../../escaped.txt"])
def test_an_entry_escaping_the_target_rejects_the_archive(tmp_path, name):
    archive = _zip_with(tmp_path, zipfile.ZipInfo(name))
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


def test_tree_digest_hashes_the_sha256sum_listing_of_every_file(tmp_path):
    """The listing Kaggle downloads are recorded by: one `sha256sum` line per file, sorted by path,
    which `sha256sum -c` accepts; the digest is the sha256 of those lines."""
    files = {"b/two.png": b"22", "a.txt": b"1", "b/a/three": b"333", "c d/é.txt": b""}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    (tmp_path / "empty folder").mkdir()
    digest, count, size, lines = tree_digest(tmp_path)
    expected = [f"{hashlib.sha256(files[name]).hexdigest()}  {name}" for name in sorted(files)]
    assert lines == expected and count == 4 and size == sum(len(c) for c in files.values())
    assert digest == hashlib.sha256("\n".join(expected).encode()).hexdigest()
    (tmp_path / "listing.sha256").write_text("\n".join(lines) + "\n")
    checked = subprocess.run(["sha256sum", "-c", "listing.sha256"], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout.count(": OK") == 4


def test_kaggle_asking_for_credentials_says_so(tmp_path, monkeypatch):
    """kagglehub against a loopback stand-in for Kaggle's API (kagglesdk's TEST endpoint, port 7777)."""
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-credentials"))
    try:
        kaggle = LoopbackServer(port=7777)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            pytest.skip("port 7777 is in use")
        raise
    with kaggle:
        kaggle.missing_status = 401
        with pytest.raises(RouteUnavailable, match="Kaggle asks for credentials to download owner/slug"):
            KaggleRoute("owner/slug").fetch(tmp_path)
    assert kaggle.requests, "kagglehub did not reach the stand-in server"
