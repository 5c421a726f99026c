"""The download code against an HTTP server on 127.0.0.1 (never the internet)."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nmt.data.download import cache_path, fetch
from nmt.errors import DownloadError

BODY = "".join(f"line {i}\n" for i in range(5000)).encode()


class Handler(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        Handler.requests.append(self.path)
        if self.path.startswith("/cut/"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 3])  # then close: an interrupted transfer
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.startswith("/missing/"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder):
    return [p.name for p in folder.iterdir()] if folder.exists() else []


def test_download_success_and_cache_reuse(server, tmp_path):
    url = f"{server}/files/train.en"
    path = fetch(url, tmp_path, sha256=hashlib.sha256(BODY).hexdigest())
    assert path.read_bytes() == BODY and path == cache_path(url, tmp_path)
    assert fetch(url, tmp_path) == path
    assert Handler.requests == ["/files/train.en"]  # the second fetch used the cache
    assert leftovers(tmp_path) == [path.name]


def test_interrupted_transfer_leaves_no_file(server, tmp_path):
    with pytest.raises(DownloadError, match="interrupted|download failed"):
        fetch(f"{server}/cut/train.en", tmp_path)
    assert leftovers(tmp_path) == []


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(f"{server}/files/train.en", tmp_path, sha256="0" * 64)
    assert leftovers(tmp_path) == []


def test_http_error_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        fetch(f"{server}/missing/train.en", tmp_path)
    assert leftovers(tmp_path) == []


def test_mirror_is_consulted_before_the_url(server, tmp_path):
    mirror = tmp_path / "mirror" / "corpus"
    mirror.mkdir(parents=True)
    (mirror / "train.en").write_bytes(b"mirrored\n")
    path = fetch(f"{server}/files/train.en", tmp_path / "dl", mirrors=[tmp_path / "mirror"], mirror_subdir="corpus")
    assert path == mirror / "train.en"
    assert Handler.requests == []
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(f"{server}/files/train.en", tmp_path / "dl", mirrors=[tmp_path / "mirror"], mirror_subdir="corpus",
              sha256="1" * 64)
