"""utils.weights.fetch against a real HTTP server on 127.0.0.1 that the tests start and control."""

import hashlib
import http.server
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

import utils.weights as weights
from utils.weights import WeightFile, WeightsError, fetch

FILE_SIZE = 300_000  # bytes served, several chunks at the test chunk size
TEST_CHUNK_SIZE = 16 * 1024
DROP_AFTER = 40_000  # bytes a dropping response sends before closing the connection
PATH = "/weights.bin"


@dataclass
class ServerBehavior:
    """What the test server does with the next requests, and what it has received."""

    data: bytes = b""
    drop_after: Optional[int] = None  # body bytes sent before the connection is closed; None sends all
    drops_left: float = 0  # responses that still drop; float("inf") drops every one
    stall: bool = False  # after drop_after bytes, stop sending until `release` is set instead of closing
    release: threading.Event = field(default_factory=threading.Event)
    wrong_content_range: bool = False  # respond to a Range request with the whole file labelled "bytes 0-"
    ignore_range: bool = False  # respond 200 with the whole file even when a Range header is sent
    status: Optional[int] = None  # respond to every request with this error status and no body
    content_type: Optional[str] = None  # a Content-Type header to send, e.g. "text/html"
    requests: list = field(default_factory=list)  # (path, Range header or None) per request received


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        behavior = self.server.behavior
        range_header = self.headers.get("Range")
        behavior.requests.append((self.path, range_header))

        if behavior.status is not None or self.path != PATH:
            self._send_error(behavior.status or 404)
            return

        start = self._range_start(range_header, behavior)
        if start is not None and start >= len(behavior.data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(behavior.data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        if start is not None and behavior.wrong_content_range:
            start = 0
        body = behavior.data[start or 0:]
        self.send_response(206 if range_header is not None and not behavior.ignore_range else 200)
        if range_header is not None and not behavior.ignore_range:
            self.send_header("Content-Range", f"bytes {start}-{len(behavior.data) - 1}/{len(behavior.data)}")
        if behavior.content_type:
            self.send_header("Content-Type", behavior.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._send_body(body, behavior)

    def _range_start(self, header, behavior):
        if header is None or behavior.ignore_range:
            return None
        return int(header.removeprefix("bytes=").split("-")[0])

    def _send_body(self, body, behavior):
        if behavior.drop_after is None or behavior.drops_left <= 0:
            self.wfile.write(body)
            return

        # Send the full Content-Length but only part of the body, then close: a dropped connection.
        behavior.drops_left -= 1
        self.wfile.write(body[:behavior.drop_after])
        self.wfile.flush()
        if behavior.stall:
            behavior.release.wait(timeout=10)
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _send_error(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass  # keep pytest output clean


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.behavior = ServerBehavior(data=os.urandom(FILE_SIZE))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.behavior.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def fast_and_local(monkeypatch):
    """Use small chunks, no retry wait and no environment settings, and allow requests to 127.0.0.1 only."""
    monkeypatch.setattr(weights, "CHUNK_SIZE", TEST_CHUNK_SIZE)
    monkeypatch.setattr(weights, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.delenv(weights.OFFLINE_ENV, raising=False)
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)

    real_get = weights.requests.get

    def local_get(url, *args, **kwargs):
        if not url.startswith("http://127.0.0.1:"):
            pytest.fail(f"test tried to download from {url}, but only the local test server is allowed")
        return real_get(url, *args, **kwargs)

    monkeypatch.setattr(weights.requests, "get", local_get)


def _url(server, path=PATH):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _entry(server, path=PATH, sha256="auto", size="auto"):
    data = server.behavior.data
    return WeightFile(
        name="test",
        url=_url(server, path),
        filename="weights.bin",
        sha256=hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256,
        size=len(data) if size == "auto" else size,
        description="random bytes served by the test server",
    )


def _fetch(entry, tmp_path, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("timeout", 5.0)
    return fetch(entry, cache_dir=tmp_path, **kwargs)


def test_download_plain(server, tmp_path):
    path = _fetch(_entry(server), tmp_path)

    assert path == tmp_path / "weights.bin"
    assert path.read_bytes() == server.behavior.data
    assert not (tmp_path / "weights.bin.part").exists()
    assert server.behavior.requests == [(PATH, None)]


def test_download_unknown_checksum_and_size(server, tmp_path):
    path = _fetch(_entry(server, sha256=None, size=None), tmp_path)

    assert path.read_bytes() == server.behavior.data


def test_wrong_sha256_deletes_part(server, tmp_path):
    entry = _entry(server, sha256="0" * 64)

    with pytest.raises(WeightsError) as error:
        _fetch(entry, tmp_path)

    message = str(error.value)
    assert "sha256 mismatch" in message
    assert "0" * 64 in message
    assert hashlib.sha256(server.behavior.data).hexdigest() in message
    assert not (tmp_path / "weights.bin").exists()
    assert not (tmp_path / "weights.bin.part").exists()


def test_wrong_size_deletes_part(server, tmp_path):
    entry = _entry(server, size=FILE_SIZE + 1)

    with pytest.raises(WeightsError) as error:
        _fetch(entry, tmp_path)

    assert f"has {FILE_SIZE} bytes, expected {FILE_SIZE + 1}" in str(error.value)
    assert not (tmp_path / "weights.bin").exists()
    assert not (tmp_path / "weights.bin.part").exists()


def test_drop_once_resumes(server, tmp_path):
    server.behavior.drop_after = DROP_AFTER
    server.behavior.drops_left = 1

    path = _fetch(_entry(server), tmp_path, retries=1)

    ranges = [range_header for _, range_header in server.behavior.requests]
    assert len(ranges) == 2
    assert ranges[0] is None
    assert ranges[1] == f"bytes={DROP_AFTER}-"
    assert path.read_bytes() == server.behavior.data


def test_drop_always_keeps_part(server, tmp_path):
    server.behavior.drop_after = DROP_AFTER
    server.behavior.drops_left = float("inf")

    with pytest.raises(WeightsError) as error:
        _fetch(_entry(server), tmp_path, retries=2)

    message = str(error.value)
    part = tmp_path / "weights.bin.part"
    assert "running again resumes" in message
    assert f"{3 * DROP_AFTER} bytes" in message
    assert len(server.behavior.requests) == 3
    assert part.read_bytes() == server.behavior.data[:3 * DROP_AFTER]
    assert not (tmp_path / "weights.bin").exists()


def test_drop_then_rerun_completes(server, tmp_path):
    server.behavior.drop_after = DROP_AFTER
    server.behavior.drops_left = 1
    with pytest.raises(WeightsError):
        _fetch(_entry(server), tmp_path, retries=0)

    path = _fetch(_entry(server), tmp_path, retries=0)

    assert server.behavior.requests[-1] == (PATH, f"bytes={DROP_AFTER}-")
    assert path.read_bytes() == server.behavior.data


def test_existing_part_resumed(server, tmp_path):
    offset = 123_457
    (tmp_path / "weights.bin.part").write_bytes(server.behavior.data[:offset])

    path = _fetch(_entry(server), tmp_path)

    assert server.behavior.requests == [(PATH, f"bytes={offset}-")]
    assert path.read_bytes() == server.behavior.data


def test_complete_part_gets_416(server, tmp_path):
    (tmp_path / "weights.bin.part").write_bytes(server.behavior.data)

    path = _fetch(_entry(server), tmp_path)

    assert server.behavior.requests == [(PATH, f"bytes={FILE_SIZE}-")]
    assert path.read_bytes() == server.behavior.data
    assert not (tmp_path / "weights.bin.part").exists()


def test_oversized_part_restarts(server, tmp_path):
    oversized = FILE_SIZE + 11
    (tmp_path / "weights.bin.part").write_bytes(server.behavior.data + b"extra bytes")

    path = _fetch(_entry(server, sha256=None, size=None), tmp_path, retries=0)

    assert server.behavior.requests == [(PATH, f"bytes={oversized}-"), (PATH, None)]
    assert path.read_bytes() == server.behavior.data


def test_wrong_content_range_restarts(server, tmp_path):
    server.behavior.wrong_content_range = True
    offset = 70_000
    (tmp_path / "weights.bin.part").write_bytes(server.behavior.data[:offset])

    path = _fetch(_entry(server), tmp_path, retries=0)

    assert server.behavior.requests == [(PATH, f"bytes={offset}-"), (PATH, None)]
    assert path.read_bytes() == server.behavior.data


def test_read_timeout_resumes(server, tmp_path):
    server.behavior.drop_after = DROP_AFTER
    server.behavior.drops_left = 1
    server.behavior.stall = True

    path = _fetch(_entry(server), tmp_path, retries=1, timeout=0.3)

    assert server.behavior.requests[1] == (PATH, f"bytes={DROP_AFTER}-")
    assert path.read_bytes() == server.behavior.data


def test_corrupt_part_fails_checksum(server, tmp_path):
    offset = 50_000
    (tmp_path / "weights.bin.part").write_bytes(b"\0" * offset)

    with pytest.raises(WeightsError) as error:
        _fetch(_entry(server), tmp_path)

    assert "sha256 mismatch" in str(error.value)
    assert not (tmp_path / "weights.bin.part").exists()
    assert not (tmp_path / "weights.bin").exists()


def test_range_ignored_restarts(server, tmp_path):
    server.behavior.ignore_range = True
    (tmp_path / "weights.bin.part").write_bytes(b"stale bytes from another file" * 1000)

    path = _fetch(_entry(server), tmp_path)

    assert server.behavior.requests == [(PATH, "bytes=29000-")]
    assert path.read_bytes() == server.behavior.data


def test_http_404_names_status_and_url(server, tmp_path):
    entry = _entry(server, path="/missing.bin")

    with pytest.raises(WeightsError) as error:
        _fetch(entry, tmp_path)

    message = str(error.value)
    assert "404" in message
    assert entry.url in message
    assert not (tmp_path / "weights.bin").exists()


def test_http_500_retried_then_fails(server, tmp_path):
    server.behavior.status = 500
    entry = _entry(server)

    with pytest.raises(WeightsError) as error:
        _fetch(entry, tmp_path, retries=2)

    message = str(error.value)
    assert "HTTP 500" in message
    assert entry.url in message
    assert len(server.behavior.requests) == 3
    assert not (tmp_path / "weights.bin").exists()
    assert not (tmp_path / "weights.bin.part").exists()


def test_offline_missing_no_request(server, tmp_path):
    entry = _entry(server)

    with pytest.raises(WeightsError) as error:
        _fetch(entry, tmp_path, offline=True)

    message = str(error.value)
    assert str(tmp_path / "weights.bin") in message
    assert entry.url in message
    assert weights.WEIGHTS_DIR_ENV in message
    assert server.behavior.requests == []


def test_offline_from_env(server, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, "true")

    with pytest.raises(WeightsError):
        _fetch(_entry(server), tmp_path)

    assert server.behavior.requests == []


def test_offline_env_invalid_value(server, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, "maybe")

    with pytest.raises(WeightsError) as error:
        _fetch(_entry(server), tmp_path)

    assert "'maybe'" in str(error.value)
    assert server.behavior.requests == []


def test_present_file_no_request(server, tmp_path):
    (tmp_path / "weights.bin").write_bytes(server.behavior.data)

    path = _fetch(_entry(server), tmp_path)

    assert path == tmp_path / "weights.bin"
    assert server.behavior.requests == []


def test_present_file_offline(server, tmp_path):
    (tmp_path / "weights.bin").write_bytes(server.behavior.data)

    path = _fetch(_entry(server), tmp_path, offline=True)

    assert path == tmp_path / "weights.bin"


def test_present_file_wrong_size(server, tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"truncated")

    with pytest.raises(WeightsError) as error:
        _fetch(_entry(server), tmp_path)

    message = str(error.value)
    assert "Delete the file" in message
    assert str(tmp_path / "weights.bin") in message
    assert server.behavior.requests == []


def test_unknown_name_lists_valid(tmp_path):
    with pytest.raises(WeightsError) as error:
        fetch("not-a-model", cache_dir=tmp_path, offline=True)

    message = str(error.value)
    assert "'not-a-model'" in message
    for name in weights.REGISTRY:
        assert name in message


def test_invalid_retries_rejected(server, tmp_path):
    with pytest.raises(WeightsError) as error:
        _fetch(_entry(server), tmp_path, retries=-1)

    assert "-1" in str(error.value)
    assert server.behavior.requests == []


def test_connection_refused_is_weights_error(tmp_path):
    # Bind a port and close it again, so nothing listens there.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    entry = WeightFile("test", f"http://127.0.0.1:{port}{PATH}", "weights.bin")

    with pytest.raises(WeightsError) as error:
        _fetch(entry, tmp_path, retries=1)

    message = str(error.value)
    assert entry.url in message
    assert "after 2 attempts" in message
    assert "Check the network connection" in message
    assert not (tmp_path / "weights.bin").exists()
    assert not (tmp_path / "weights.bin.part").exists()


def test_weights_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))

    assert weights.weights_dir() == tmp_path.resolve()


def test_weights_dir_default():
    assert weights.weights_dir() == Path(weights.__file__).resolve().parent.parent / "models"


class RecordingBar:
    """Stand-in for tqdm that records its arguments, its count, and whether the final file exists per update."""

    instances = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.count = kwargs["initial"]
        self.final_seen = []  # whether the final file existed at each update
        RecordingBar.instances.append(self)

    def update(self, count):
        self.count += count
        path = Path(self.watch_folder) / "weights.bin"
        self.final_seen.append(path.exists())

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


@pytest.fixture
def recording_bar(monkeypatch, tmp_path):
    RecordingBar.instances = []
    RecordingBar.watch_folder = tmp_path
    monkeypatch.setattr(weights, "tqdm", RecordingBar)
    return RecordingBar.instances


def test_final_absent_during_download(server, tmp_path, recording_bar):
    path = _fetch(_entry(server), tmp_path, progress=True)

    bar = recording_bar[0]
    assert len(bar.final_seen) > 1
    assert not any(bar.final_seen)
    assert path.exists()


def test_progress_starts_at_offset(server, tmp_path, recording_bar):
    bars = recording_bar
    offset = 200_000
    (tmp_path / "weights.bin.part").write_bytes(server.behavior.data[:offset])

    _fetch(_entry(server), tmp_path, progress=True)

    assert len(bars) == 1
    assert bars[0].kwargs["initial"] == offset
    assert bars[0].kwargs["total"] == FILE_SIZE
    assert bars[0].kwargs["disable"] is False
    assert bars[0].count == FILE_SIZE


def test_registry_entries_consistent():
    for name, entry in weights.REGISTRY.items():
        assert entry.name == name
        assert entry.url.startswith("https://")
        assert entry.description
        assert entry.sha256 is None or len(entry.sha256) == 64


def test_cli_lists_registry(tmp_path, capsys):
    (tmp_path / "ffhq.pkl.part").write_bytes(b"x" * 10)

    status = weights.main(["--dir", str(tmp_path)])

    output = capsys.readouterr().out
    assert status == 0
    assert "ffhq.pkl" in output
    assert "partial (10 bytes)" in output
    assert weights.REGISTRY["ffhq"].url in output


def test_cli_offline_missing_fails(tmp_path, capsys):
    status = weights.main(["ffhq", "--dir", str(tmp_path), "--offline"])

    error_output = capsys.readouterr().err
    assert status == 1
    assert str(tmp_path / "ffhq.pkl") in error_output
    assert not (tmp_path / "ffhq.pkl").exists()


def test_cli_unknown_name_fails(tmp_path, capsys):
    status = weights.main(["ffhq", "nope", "--dir", str(tmp_path), "--offline"])

    error_output = capsys.readouterr().err
    assert status == 1
    assert "'nope'" in error_output
    assert "ffhq" in error_output


def test_html_page_rejected(server, tmp_path):
    server.behavior.data = b"<!DOCTYPE html><html><body>Sign in</body></html>"
    server.behavior.content_type = "text/html; charset=utf-8"
    with pytest.raises(WeightsError, match="returned an HTML page instead of the file"):
        fetch(_entry(server, sha256=None, size=None), cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "weights.bin").exists()


def test_weights_dir_file_rejected(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "afile"
    not_a_folder.write_text("x")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(not_a_folder))
    with pytest.raises(WeightsError, match="is a file, not a folder"):
        weights.weights_dir()
