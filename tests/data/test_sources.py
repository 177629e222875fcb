import functools
import gzip
import http.server
import shutil
import threading

import pytest

from fedmol.data.registry import DATASETS
from fedmol.data.sources import download, resolve_file, sha256_file
from fedmol.errors import ChecksumError, DataError


@pytest.fixture()
def http_root(tmp_path, data_dir):
    """A real HTTP server on loopback serving a copy of shared files (plain and gzipped)."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(data_dir / "bace.csv", root / "bace.csv")
    with open(data_dir / "clintox.csv", "rb") as src, gzip.open(root / "clintox.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_plain_verifies_and_is_atomic(http_root, tmp_path, data_dir):
    dest = tmp_path / "dl" / "bace.csv"
    download(f"{http_root}/bace.csv", dest, DATASETS["bace"].sha256, progress=False)
    assert sha256_file(dest) == DATASETS["bace"].sha256
    assert [p.name for p in dest.parent.iterdir()] == ["bace.csv"]  # no temporary left behind


def test_download_gz_is_decompressed(http_root, tmp_path):
    dest = tmp_path / "clintox.csv"
    download(f"{http_root}/clintox.csv.gz", dest, DATASETS["clintox"].sha256, progress=False)
    assert sha256_file(dest) == DATASETS["clintox"].sha256


def test_checksum_mismatch_leaves_nothing(http_root, tmp_path):
    dest = tmp_path / "dl" / "bace.csv"
    with pytest.raises(ChecksumError, match="does not match the registry's 0000"):
        download(f"{http_root}/bace.csv", dest, "0" * 64, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_http_error_is_a_data_error(http_root, tmp_path):
    with pytest.raises(DataError, match="download of .*/missing.csv failed: HTTP Error 404"):
        download(f"{http_root}/missing.csv", tmp_path / "x.csv", progress=False)
    assert not (tmp_path / "x.csv").exists()


def test_absent_file_is_downloaded_from_mirror(http_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMOL_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("FEDMOL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FEDMOL_MIRROR_URL", http_root)
    path, sha = resolve_file(DATASETS["clintox"], progress=False)
    assert path == tmp_path / "cache" / "raw" / "clintox.csv"
    assert sha == sha256_file(path) == DATASETS["clintox"].sha256
    again, _ = resolve_file(DATASETS["clintox"], progress=False)  # now found in the cache, no download
    assert again == path


def test_missing_file_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMOL_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("FEDMOL_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError) as e:
        resolve_file(DATASETS["hiv"], data_dir=tmp_path / "mine", allow_download=False)
    msg = str(e.value)
    assert "HIV.csv" in msg and str(tmp_path / "mine") in msg and str(tmp_path / "empty") in msg
    assert DATASETS["hiv"].url in msg and "--data-dir" in msg


def test_corrupt_local_file_is_refused(tmp_path, data_dir):
    bad = tmp_path / "BBBP.csv"
    bad.write_bytes((data_dir / "BBBP.csv").read_bytes()[:-10])
    with pytest.raises(ChecksumError, match="BBBP.csv: sha256 .* does not match"):
        resolve_file(DATASETS["bbbp"], data_dir=tmp_path)
