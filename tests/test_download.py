"""The downloader against real sockets: a dead address (the offline message) and a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from core.data import download as dl
from core.data import registry
from core.errors import UserFacingError

DEAD_URL = "http://127.0.0.1:9/bloodmnist.npz"  # the discard port: nothing listens, the connection is refused


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def point_registry_at(monkeypatch, url: str, md5: str) -> None:
    """Replace only the registry's address book: the download logic under test is the real one."""
    monkeypatch.setattr(registry, "url_and_md5", lambda size: (url, md5))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Promises more bytes than it sends, as a dropped connection does."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


class _BrokenChunkedHandler(http.server.BaseHTTPRequestHandler):
    """A chunked response cut inside a chunk: http.client raises IncompleteRead, not an OSError."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"1000\r\n" + b"x" * 100)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 (a free port) serving tmp_path/'served'."""
    served = tmp_path / "served"
    served.mkdir()
    servers = []

    def start(handler=None):
        handler = handler or functools.partial(_QuietHandler, directory=str(served))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield served, start
    for server in servers:
        server.shutdown()
        server.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_offline_message_names_file_target_and_url(monkeypatch, tmp_path):
    md5 = "0" * 32
    point_registry_at(monkeypatch, DEAD_URL, md5)
    root = tmp_path / "data"
    with pytest.raises(dl.DownloadError) as info:
        dl.download(28, root, timeout=5)
    message = str(info.value)
    target = root / "bloodmnist.npz"
    assert "bloodmnist.npz" in message
    assert str(target) in message
    assert DEAD_URL in message
    assert md5 in message
    assert "Could not download BloodMNIST 28 px" in message
    assert registry.DATA_DIR_ENV in message and "--data" in message
    assert isinstance(info.value, UserFacingError)
    assert info.value.__cause__ is None  # no chained traceback for users
    assert not target.exists()
    assert not (root / "bloodmnist.npz.part").exists()
    assert leftovers(root) == []


def test_offline_message_other_size(monkeypatch, tmp_path):
    point_registry_at(monkeypatch, DEAD_URL.replace("bloodmnist", "bloodmnist_64"), "1" * 32)
    with pytest.raises(dl.DownloadError) as info:
        dl.download(64, tmp_path, timeout=5)
    assert "bloodmnist_64.npz" in str(info.value)
    assert str(tmp_path / "bloodmnist_64.npz") in str(info.value)
    assert leftovers(tmp_path) == []


def test_offline_message_uses_real_registry_url(tmp_path):
    target = tmp_path / "bloodmnist_128.npz"
    message = dl.offline_message(128, target, "no network")
    url, md5 = registry.url_and_md5(128)
    assert url in message and md5 in message and str(target) in message and "no network" in message


def test_successful_download_renames_into_place(monkeypatch, tmp_path, http_server):
    served, start = http_server
    payload = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB chunk
    (served / "bloodmnist.npz").write_bytes(payload)
    base = start()
    point_registry_at(monkeypatch, f"{base}/bloodmnist.npz", hashlib.md5(payload).hexdigest())
    calls: list[tuple[int, int]] = []
    root = tmp_path / "data"
    path = dl.download(28, root, progress=lambda done, total: calls.append((done, total)), timeout=10)
    assert path == root / "bloodmnist.npz"
    assert path.read_bytes() == payload
    assert leftovers(root) == ["bloodmnist.npz"]  # no .part left
    assert len(calls) >= 2
    assert calls[-1] == (len(payload), len(payload))
    assert all(total == len(payload) for _, total in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert dl.md5sum(path) == hashlib.md5(payload).hexdigest()


def test_md5_mismatch_keeps_nothing(monkeypatch, tmp_path, http_server):
    served, start = http_server
    (served / "bloodmnist.npz").write_bytes(b"not the real file" * 100)
    base = start()
    expected = "f" * 32
    point_registry_at(monkeypatch, f"{base}/bloodmnist.npz", expected)
    root = tmp_path / "data"
    with pytest.raises(dl.DownloadError) as info:
        dl.download(28, root, timeout=10)
    assert "MD5" in str(info.value) and expected in str(info.value)
    assert "nothing was kept" in str(info.value)
    assert leftovers(root) == []


def failed_download(monkeypatch, tmp_path, http_server, path: str, handler=None) -> tuple[str, Path, str]:
    """Download from the test server at `path` (served by `handler`), which must fail: (url, root, message)."""
    _, start = http_server
    url = f"{start(handler)}/{path}"
    point_registry_at(monkeypatch, url, "a" * 32)
    root = tmp_path / "data"
    with pytest.raises(dl.DownloadError) as info:
        dl.download(28, root, timeout=10)
    assert url in str(info.value) and leftovers(root) == []
    return url, root, str(info.value)


def test_http_404_is_a_download_error(monkeypatch, tmp_path, http_server):
    _, _, message = failed_download(monkeypatch, tmp_path, http_server, "missing.npz")
    assert "not found" in message.lower()


def test_connection_dropped_mid_file_keeps_nothing(monkeypatch, tmp_path, http_server):
    _, _, message = failed_download(monkeypatch, tmp_path, http_server, "bloodmnist.npz", _TruncatingHandler)
    assert "nothing was kept" in message  # the MD5 check catches the short file


def test_broken_chunked_response_is_a_download_error(monkeypatch, tmp_path, http_server):
    _, root, message = failed_download(monkeypatch, tmp_path, http_server, "bloodmnist.npz", _BrokenChunkedHandler)
    assert str(root / "bloodmnist.npz") in message


def test_existing_file_with_right_md5_needs_no_network(monkeypatch, tmp_path):
    target = tmp_path / "bloodmnist.npz"
    target.write_bytes(b"already here")
    point_registry_at(monkeypatch, DEAD_URL, hashlib.md5(b"already here").hexdigest())
    calls = []
    assert dl.download(28, tmp_path, progress=lambda *a: calls.append(a), timeout=5) == target
    assert calls == []
    assert target.read_bytes() == b"already here"


def test_existing_file_with_wrong_md5_is_refused_and_kept(monkeypatch, tmp_path):
    target = tmp_path / "bloodmnist.npz"
    target.write_bytes(b"something else")
    point_registry_at(monkeypatch, DEAD_URL, "b" * 32)
    with pytest.raises(dl.DownloadError, match="MD5 differs"):
        dl.download(28, tmp_path, timeout=5)
    assert target.read_bytes() == b"something else"


def serve(monkeypatch, http_server, name: str, payload: bytes) -> None:
    """The test server serves `payload` as `name`, and the registry points at it with the right MD5."""
    served, start = http_server
    (served / name).write_bytes(payload)
    point_registry_at(monkeypatch, f"{start()}/{name}", hashlib.md5(payload).hexdigest())


def test_force_replaces_a_bad_file(monkeypatch, tmp_path, http_server):
    serve(monkeypatch, http_server, "bloodmnist_64.npz", b"good bytes")
    target = tmp_path / "bloodmnist_64.npz"
    target.write_bytes(b"bad bytes")
    assert dl.download(64, tmp_path, force=True, timeout=10) == target
    assert target.read_bytes() == b"good bytes"


def test_download_defaults_to_data_root(monkeypatch, tmp_path, http_server):
    serve(monkeypatch, http_server, "f.npz", b"abc")
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path / "root"))
    assert dl.download(28, timeout=10) == tmp_path / "root" / "bloodmnist.npz"


def test_md5sum(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"hello")
    assert dl.md5sum(f) == "5d41402abc4b2a76b9719d911017c592"
