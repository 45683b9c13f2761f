"""Issue 16, items 3, 6 and 8: image downloads a hostile task can ask for. Every one ends as a per-task
error naming the URL (never a server path), within bounded time and memory, and the Label Studio
token goes nowhere but Label Studio's media paths."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from backend.downloads import host_allowed
from backend.image_source import ImageFetchError, ImageSource
from tests.backend.conftest import FileServer, brush_task, encode, make_settings, noise_image, predict_body

MB = 1024 * 1024


class Streamer(BaseHTTPRequestHandler):
    """/chunked/<MB>: that many MB, chunked, no Content-Length; /trickle: one byte every 0.2 s, forever."""

    protocol_version = "HTTP/1.1"
    served: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.served.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path.startswith("/chunked/"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b"\x89PNG" + b"\0" * (MB - 4)
            try:
                for _ in range(int(self.path.rsplit("/", 1)[1])):
                    self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client hung up at its cap
            return
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        try:
            for _ in range(3000):  # ten minutes of trickle: far past any deadline
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass


@pytest.fixture
def streamer() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Streamer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def source(tmp_path, **overrides) -> ImageSource:
    return ImageSource(make_settings(tmp_path, "unused", **overrides))


def fetch_within(images: ImageSource, url: str, seconds: float) -> tuple[str, float]:
    """The ImageFetchError message and the time taken; fails (instead of hanging) past ``seconds``."""
    outcome: list[BaseException | None] = []
    start = time.monotonic()

    def run() -> None:
        try:
            images.fetch(url, task_id=7)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"fetch of {url} still running after {seconds} s"
    assert isinstance(outcome[0], ImageFetchError), outcome[0]
    return str(outcome[0]), time.monotonic() - start


# ----- item 3: size and time bounds -----------------------------------------------------------------
def test_chunked_body_without_length_is_cut_at_the_cap_and_not_cached(tmp_path, streamer):
    images = source(tmp_path, MAX_IMAGE_DOWNLOAD_MB=2)
    message, _ = fetch_within(images, f"{streamer}/chunked/40", 60)
    assert "MAX_IMAGE_DOWNLOAD_MB" in message and "/chunked/40" in message
    cached = list(images.cache_dir.glob("*")) if images.cache_dir.exists() else []
    assert cached == []


def test_trickling_server_is_cut_at_the_download_deadline(tmp_path, streamer):
    images = source(tmp_path, IMAGE_DOWNLOAD_TIMEOUT=1.0, IMAGE_DOWNLOAD_DEADLINE=2.0)
    message, took = fetch_within(images, f"{streamer}/trickle", 60)
    assert "IMAGE_DOWNLOAD_DEADLINE" in message
    assert took < 20  # deadline 2 s + one read of at most 1 s; before the fix: ten minutes


# ----- item 8: which hosts, and where the token goes ------------------------------------------------
def test_host_patterns():
    hosts = ("example.com", "*.amazonaws.com", "cdn.test:8443")
    assert host_allowed("example.com", None, hosts) and host_allowed("EXAMPLE.com.", 80, hosts)
    assert host_allowed("bucket.s3.amazonaws.com", 443, hosts) and not host_allowed("amazonaws.com", 443, hosts)
    assert not host_allowed("evil-amazonaws.com", 443, hosts) and not host_allowed("example.com.evil", 80, hosts)
    assert host_allowed("cdn.test", 8443, hosts) and not host_allowed("cdn.test", 443, hosts)
    assert host_allowed("anything", 1, ("*",))


def test_default_allow_list_refuses_other_hosts_before_connecting(tmp_path, file_server):
    url = file_server.add("/pic.png", encode(noise_image(8, 8)))
    images = source(tmp_path, IMAGE_HOSTS="")
    with pytest.raises(ImageFetchError, match="not an allowed image host"):
        images.fetch(url)
    # A closed port answers the same words as an open one: nothing to scan with.
    with pytest.raises(ImageFetchError, match="not an allowed image host"):
        images.fetch("http://127.0.0.1:1/closed.png")
    assert file_server.requests == []
    allowed = source(tmp_path, IMAGE_HOSTS=f"127.0.0.1:{file_server.server.server_address[1]}")
    assert allowed.fetch(url).shape[:2] == (8, 8)


def test_label_studio_host_is_allowed_and_its_redirects_checked(tmp_path, file_server):
    foreign = FileServer(host="localhost").start()
    try:
        file_server.add("/storage-data/uploaded/?filepath=upload/3/a.png", encode(noise_image(6, 7)))
        file_server.redirects["/storage-data/uploaded/?filepath=upload/3/away.png"] = foreign.add(
            "/away.png", encode(noise_image(5, 5)))
        images = source(tmp_path, IMAGE_HOSTS="", LABEL_STUDIO_URL=file_server.url, LABEL_STUDIO_API_KEY="k")
        assert images.fetch("/data/upload/3/a.png").shape[:2] == (6, 7)
        with pytest.raises(ImageFetchError, match="not an allowed image host"):
            images.fetch("/data/upload/3/away.png")
        assert foreign.requests == []
    finally:
        foreign.stop()


@pytest.mark.parametrize("path", ["/api/projects/", "/api/users/1", "/data/upload/../../api/users",
                                  "/data/upload/%2e%2e/%2e%2e/api/current-user/whoami", "/user/account"])
def test_token_goes_only_to_label_studio_media_paths(tmp_path, file_server, path):
    file_server.add(path, b"{}", "application/json")
    images = source(tmp_path, IMAGE_HOSTS="", LABEL_STUDIO_URL=file_server.url, LABEL_STUDIO_API_KEY="secret")
    with pytest.raises(ImageFetchError, match="token is sent only to media paths"):
        images.fetch(file_server.url + path)
    assert file_server.requests == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/etc/passwd", "../../etc/passwd", "gopher://x/1",
                                 "ftp://127.0.0.1/a.png", "http:///nohost.png"])
def test_non_http_urls_and_paths_are_refused(tmp_path, url):
    with pytest.raises(ImageFetchError, match="not an http\\(s\\) URL|hostname") as caught:
        source(tmp_path).fetch(url, task_id=3)
    assert "root:" not in str(caught.value)


# ----- item 6: messages without server paths; pixel limit ---------------------------------------------
def test_image_errors_name_the_url_never_the_cache_path(tmp_path, file_server):
    url = file_server.add("/notes.png", b"definitely not a picture", "image/png")
    images = source(tmp_path)
    with pytest.raises(ImageFetchError) as caught:
        images.fetch(url, task_id=5)
    message = str(caught.value)
    assert url in message and "not a readable image" in message
    assert str(tmp_path) not in message and str(images.cache_dir.resolve()) not in message


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny compressed row: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def test_default_pixel_limit_is_40_megapixels(tmp_path, file_server):
    settings = make_settings(tmp_path, "unused")
    assert settings.MAX_IMAGE_PIXELS == 40_000_000
    url = file_server.add("/big.png", png_header_only(8000, 5001))
    with pytest.raises(ImageFetchError, match="above the limit of 40000000 pixels"):
        source(tmp_path).fetch(url)


def truncated_jpeg() -> bytes:
    data = encode(noise_image(64, 64), "JPEG")
    return data[: len(data) // 3]


def gif_1x1() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, "GIF")
    return buffer.getvalue()


HOSTILE_IMAGES = {
    "bomb-png": (png_header_only(60_000, 60_000), "refused before decoding"),
    "header-only-png": (png_header_only(900, 900)[:33], "not a readable image"),
    "over-limit-png": (png_header_only(2000, 1000), "above the limit of 1000000 pixels"),
    "truncated-jpeg": (truncated_jpeg(), "corrupt"),
    "zero-bytes": (b"", "not a readable image"),
    "html": (b"<html><body>login</body></html>", "not a readable image"),
    "gzip-junk": (zlib.compress(b"\0" * 10 * MB), "not a readable image"),
}


def test_hostile_images_are_per_task_errors_and_the_rest_is_predicted(make_backend, file_server):
    backend = make_backend(MAX_IMAGE_PIXELS=1_000_000)
    backend.publish("8", ["cat", "dog"], seed=1)
    tasks = [brush_task(i, file_server.add(f"/h-{name}", body)) for i, (name, (body, _)) in
             enumerate(HOSTILE_IMAGES.items())]
    tiny = [brush_task(100, file_server.add("/1x1.png", encode(np.zeros((1, 1, 3), np.uint8)))),
            brush_task(101, file_server.add("/1x1.gif", gif_1x1()))]
    good = brush_task(200, file_server.add("/good.png", encode(noise_image(60, 80))))
    response = backend.client.post("/predict", json=predict_body("8", [*tasks, *tiny, good]))
    assert response.status_code == 200
    results = response.json()["results"]
    for (name, (_, words)), result in zip(HOSTILE_IMAGES.items(), results, strict=False):
        assert words in result.get("error", ""), (name, result)
        assert result["result"] == []
    assert all("error" not in r for r in results[-3:]), results[-3:]  # 1x1 images and the good one
    assert backend.client.get("/health").json()["status"] == "UP"


# ----- Label Studio down or slow ---------------------------------------------------------------------
def test_label_studio_down_or_silent_is_a_prompt_task_error(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts, never answers: a hung Label Studio
    hung = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        for ls_url, words in ((hung, "timed out"), ("http://127.0.0.1:1", "ConnectionError")):
            images = source(tmp_path, IMAGE_HOSTS="", LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY="legacy",
                            IMAGE_DOWNLOAD_TIMEOUT=1.0)
            message, took = fetch_within(images, "/data/upload/3/cat.png", 30)
            assert words in message and took < 10, (ls_url, message, took)
            assert "legacy" not in message  # the token is never in a message
    finally:
        silent.close()
