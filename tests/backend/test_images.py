"""Task images: Label Studio credentials (legacy and personal access tokens), foreign hosts, formats."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from backend.image_source import ImageFetchError, ImageSource, prune_cache
from tests.backend.conftest import (
    FileServer,
    brush_task,
    encode,
    keypoint,
    make_settings,
    noise_image,
    predict_body,
)

UPLOAD = "/data/upload/3/cat.png"
# get_local_path asks Label Studio's storage proxy first (then falls back to /data/upload/...).
PROXY = "/storage-data/uploaded/?filepath=upload/3/cat.png"


@pytest.fixture
def foreign() -> FileServer:
    """Another host (a different host name and port than Label Studio's)."""
    server = FileServer(host="localhost").start()
    yield server
    server.stop()


def smooth_image(height: int, width: int) -> np.ndarray:
    """A picture with an unambiguous orientation: a bright block top-left, gradients elsewhere."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    image[: height // 4, : width // 5] = 250
    return image


def source(tmp_path, **overrides) -> ImageSource:
    return ImageSource(make_settings(tmp_path, "unused", **overrides))


def test_legacy_token_goes_to_label_studio_as_token(tmp_path, file_server):
    file_server.required_auth = "Token legacy-key-123"
    file_server.add(PROXY, encode(noise_image(20, 30)))
    images = source(tmp_path, LABEL_STUDIO_URL=file_server.url, LABEL_STUDIO_API_KEY="legacy-key-123")
    assert images.fetch(UPLOAD, task_id=1).shape == (20, 30, 3)
    assert file_server.requests[-1].headers["Authorization"] == "Token legacy-key-123"


def test_personal_access_token_is_exchanged_for_a_bearer_access_token(tmp_path, file_server):
    refresh = jwt.encode({"token_type": "refresh", "exp": int(time.time()) + 3600, "jti": "r"}, "k", "HS256")
    access = jwt.encode({"token_type": "access", "exp": int(time.time()) + 300, "jti": "a"}, "k", "HS256")
    file_server.refresh = lambda token: access if token == refresh else None
    file_server.required_auth = f"Bearer {access}"
    file_server.add(PROXY, encode(noise_image(20, 30)))
    file_server.add("/storage-data/uploaded/?filepath=upload/3/dog.png", encode(noise_image(10, 10)))
    images = source(tmp_path, LABEL_STUDIO_URL=file_server.url, LABEL_STUDIO_API_KEY=refresh)
    assert images.fetch(UPLOAD).shape == (20, 30, 3)
    assert images.fetch("/data/upload/3/dog.png").shape == (10, 10, 3)
    refreshes = [r for r in file_server.requests if r.path == "/api/token/refresh/"]
    assert len(refreshes) == 1  # the access token is cached until it expires
    image_requests = [r for r in file_server.requests if r.path.startswith("/storage-data")]
    assert all(r.headers["Authorization"] == f"Bearer {access}" for r in image_requests)


def test_refused_personal_access_token_is_a_clear_task_error(tmp_path, file_server):
    refresh = jwt.encode({"token_type": "refresh", "exp": int(time.time()) + 3600}, "k", "HS256")
    file_server.refresh = lambda token: None
    images = source(tmp_path, LABEL_STUDIO_URL=file_server.url, LABEL_STUDIO_API_KEY=refresh)
    with pytest.raises(ImageFetchError, match="personal access token"):
        images.fetch(UPLOAD, task_id=4)


def test_token_never_goes_to_another_host(tmp_path, file_server, foreign):
    file_server.required_auth = "Token secret-key"
    direct = foreign.add("/pic.png", encode(noise_image(12, 14)))
    foreign.add("/moved.png", encode(noise_image(8, 9)))
    # Label Studio redirecting to another host (as presigned cloud URLs do) must not carry the token along.
    file_server.redirects["/storage-data/uploaded/?filepath=upload/3/moved.png"] = foreign.url + "/moved.png"
    images = source(tmp_path, LABEL_STUDIO_URL=file_server.url, LABEL_STUDIO_API_KEY="secret-key")
    assert images.fetch(direct).shape == (12, 14, 3)
    assert images.fetch("/data/upload/3/moved.png").shape == (8, 9, 3)
    assert len(foreign.requests) == 2
    assert all("Authorization" not in r.headers for r in foreign.requests)
    assert all("secret-key" not in str(r.headers) for r in foreign.requests)


def test_setup_hostname_is_used_only_without_label_studio_url(tmp_path, file_server, foreign):
    file_server.required_auth = "Token from-setup"
    file_server.add(PROXY, encode(noise_image(20, 30)))
    images = source(tmp_path)
    images.remember_setup("3", file_server.url, "from-setup")
    assert images.fetch(UPLOAD, project="3").shape == (20, 30, 3)
    with pytest.raises(ImageFetchError, match="hostname"):
        images.fetch(UPLOAD, project="4")  # no /setup seen for project 4, no LABEL_STUDIO_URL
    # With LABEL_STUDIO_URL set, /setup's hostname (here another host) is ignored.
    configured = source(tmp_path, LABEL_STUDIO_URL=file_server.url, LABEL_STUDIO_API_KEY="from-setup")
    configured.remember_setup("3", foreign.url, "other-token")
    configured.cache_dir = tmp_path / "fresh-cache"  # no file cached by the first source
    assert configured.fetch(UPLOAD, project="3").shape == (20, 30, 3)
    assert foreign.requests == []


def test_unreachable_and_slow_hosts_fail_within_the_timeout(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections, never answers
    port = silent.getsockname()[1]
    images = source(tmp_path, IMAGE_DOWNLOAD_TIMEOUT=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(ImageFetchError, match="task 9"):
            images.fetch(f"http://127.0.0.1:{port}/slow.png", task_id=9)
        assert time.monotonic() - start < 5
    finally:
        silent.close()
    with pytest.raises(ImageFetchError, match="ConnectionError"):
        images.fetch("http://127.0.0.1:1/refused.png")


def test_data_uri_and_non_url_values(tmp_path):
    images = source(tmp_path)
    uri = "data:image/png;base64," + base64.b64encode(encode(noise_image(5, 6))).decode()
    assert images.fetch(uri).shape == (5, 6, 3)
    for value in (None, 5, "", ["x"]):
        with pytest.raises(ImageFetchError, match="not a URL"):
            images.fetch(value, task_id=2)


def test_huge_image_is_refused_from_its_header(tmp_path, file_server):
    url = file_server.add("/huge.png", encode(np.zeros((400, 500, 3), np.uint8)))
    with pytest.raises(ImageFetchError, match="above the limit"):
        source(tmp_path, MAX_IMAGE_PIXELS=100_000).fetch(url)


def test_cache_is_pruned_oldest_first(tmp_path):
    for k in range(5):
        path = tmp_path / f"f{k}"
        path.write_bytes(b"x" * 100)
        os.utime(path, (k, k))
    assert prune_cache(tmp_path, 250) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f3", "f4"]


def exif_rotated_jpeg(display: np.ndarray) -> bytes:
    """JPEG whose stored pixels are rotated; EXIF orientation 6 tells viewers to turn them upright."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(display, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    import io

    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_rotated_jpeg_is_seen_and_answered_upright(backend, project, shared_server, tmp_path):
    display = smooth_image(217, 333)
    rotated_url = shared_server.add(f"/{project}-exif.jpg", exif_rotated_jpeg(display), "image/jpeg")
    images = backend.services.images
    seen = images.fetch(rotated_url)
    assert seen.shape == (217, 333, 3)
    assert np.abs(seen.astype(int) - display).mean() < 4
    context = {"result": [keypoint(10, 12, width=333, height=217)]}
    (result,) = backend.client.post("/predict", json=predict_body(project, [brush_task(1, rotated_url)],
                                                                  context=context)).json()["results"]
    (region,) = result["result"]
    assert (region["original_width"], region["original_height"]) == (333, 217)
    rotated_mask = decode_rle(region["value"]["rle"]).reshape(217, 333, 4)[:, :, 3] > 0
    # The same click on the upright picture gives (nearly) the same mask: it lines up as displayed.
    upright_url = shared_server.add(f"/{project}-upright.jpg", encode(display, "JPEG", quality=95), "image/jpeg")
    (upright,) = backend.client.post("/predict", json=predict_body(project, [brush_task(1, upright_url)],
                                                                   context=context)).json()["results"]
    upright_mask = decode_rle(upright["result"][0]["value"]["rle"]).reshape(217, 333, 4)[:, :, 3] > 0
    iou = (rotated_mask & upright_mask).sum() / max(1, (rotated_mask | upright_mask).sum())
    assert iou > 0.9


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("gray16", (np.arange(37 * 41, dtype=np.uint16).reshape(37, 41) * 40)),
        ("gray8", np.arange(37 * 41, dtype=np.uint32).reshape(37, 41).astype(np.uint8)),
        ("rgba", np.dstack([noise_image(37, 41), np.full((37, 41), 128, np.uint8)])),
    ],
)
def test_unusual_pixel_formats_are_predicted(backend, project, shared_server, name, array):
    backend.publish(project, ["cat", "dog"], seed=1)
    url = shared_server.add(f"/{project}-{name}.png", encode(array))
    (result,) = backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)])).json()["results"]
    assert "error" not in result
    for region in result["result"]:
        assert (region["original_width"], region["original_height"]) == (41, 37)


def test_legacy_token_end_to_end_through_predict(make_backend, file_server):
    file_server.required_auth = "Token e2e-key"
    file_server.add(PROXY, encode(noise_image(40, 50)))
    backend = make_backend(LABEL_STUDIO_URL=file_server.url, LABEL_STUDIO_API_KEY="e2e-key")
    backend.publish("3", ["cat"], seed=1)
    (result,) = backend.client.post("/predict", json=predict_body("3", [brush_task(1, UPLOAD, 3)])).json()["results"]
    assert "error" not in result and result["model_version"].endswith("-p3-v1")


def test_downloads_share_one_keep_alive_connection_and_keep_no_cookies(tmp_path):
    png = encode(noise_image(8, 8))
    seen: list[tuple[tuple, str | None]] = []

    class KeepAlive(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append((self.client_address, self.headers.get("Cookie")))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Set-Cookie", "sessionid=abc; Path=/")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    images = source(tmp_path)
    try:
        for i in range(3):
            images.fetch(f"http://127.0.0.1:{server.server_address[1]}/img-{i}.png", task_id=i)
    finally:
        images.close()
        server.shutdown()
    assert len({address for address, _ in seen}) == 1  # one TCP connection for three downloads
    assert [cookie for _, cookie in seen] == [None, None, None]
