"""The one HTTP session task images are downloaded through: which hosts, how long, how much.

``get_local_path`` (the SDK) builds the URL and attaches Label Studio's token; this session decides
whether the request may go out at all and bounds it:

- Hosts: Label Studio's own (the one the current download resolves against), IMAGE_HOSTS and
  IMAGE_CLOUD_HOSTS; anything else is refused before a connection is made, so a client cannot make
  the backend probe other hosts or ports. Only http and https.
- The token goes only to Label Studio's media paths (uploads, local files, the storage proxy, a task's
  presign endpoint), never to its API; a redirect to another host or scheme drops it.
- Redirects are followed here, at most MAX_REDIRECTS, each hop checked like the first.
- Size: Content-Length above the cap is refused unread; a body without one is counted while it
  streams and cut at the cap. Time: each read waits at most IMAGE_DOWNLOAD_TIMEOUT, the whole
  download at most IMAGE_DOWNLOAD_DEADLINE (plus one read), however slowly the server trickles.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import unquote, urljoin, urlsplit

import requests

MAX_REDIRECTS = 5
READ_CHUNK = 256 * 1024
# Label Studio paths the token may go to, after LS's own base path: what get_local_path downloads.
_MEDIA_PATH = re.compile(r"/(data/upload/.+|data/local-files/?|storage-data/uploaded/?|tasks/[0-9]+/presign/?)")


class DownloadRefused(RuntimeError):
    """A download was not made or was cut off; the message names the URL and the rule."""


# The Label Studio base URL the download in progress resolves against (set around get_local_path).
_label_studio: ContextVar[str] = ContextVar("label_studio", default="")


@contextmanager
def label_studio_base(url: str) -> Iterator[None]:
    """Within the block, ``url``'s host counts as Label Studio's (allowed, and the only one given the token)."""
    token = _label_studio.set(url.rstrip("/"))
    try:
        yield
    finally:
        _label_studio.reset(token)


def host_allowed(host: str, port: int | None, patterns: tuple[str, ...]) -> bool:
    """Whether ``host[:port]`` matches one of ``patterns``: "name", "name:port", "*.domain" or "*"."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern == "*":
            return True
        name, _, wanted_port = pattern.partition(":")
        if wanted_port and (port is None or wanted_port != str(port)):
            continue
        if name == host or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:100] + "…"


class BoundedSession(requests.Session):
    """requests.Session with the host rules, redirect handling and size/time bounds above; no cookies.

    One instance serves every download from any thread (its connection pool is shared).
    """

    def __init__(self, timeout: float, deadline: float, max_bytes: int, hosts: tuple[str, ...]) -> None:
        super().__init__()
        self._timeout = min(timeout, deadline)
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._hosts = hosts
        # Shared by concurrent downloads: a cookie one response sets must not ride along on the others.
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))

    def request(self, method, url, *args, **kwargs):  # noqa: ANN001, ANN201 - requests' own signature
        deadline = time.monotonic() + self._deadline
        kwargs.update(timeout=self._timeout, stream=True, allow_redirects=False)
        headers = dict(kwargs.pop("headers", None) or {})
        for _ in range(MAX_REDIRECTS + 1):
            self.check(url, with_token="Authorization" in headers)
            response = super().request(method, url, *args, headers=headers, **kwargs)
            if not response.is_redirect:
                _read_body(response, url, self._max_bytes, deadline)
                return response
            target = urljoin(response.url, response.headers["location"])
            response.close()
            if _origin(target) != _origin(url):
                headers.pop("Authorization", None)  # the token stays with Label Studio
            url = target
            if time.monotonic() > deadline:
                break
        raise DownloadRefused(f"{_short(url)}: more than {MAX_REDIRECTS} redirects, or redirects past "
                              f"the {self._deadline:g} s download deadline")

    def check(self, url: str, with_token: bool = False) -> None:
        """Raises DownloadRefused unless ``url`` may be fetched (with the token, when ``with_token``)."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise DownloadRefused(f"{_short(url)} is not an http(s) URL (nor a Label Studio path)")
        base = _label_studio.get()
        base_parts = urlsplit(base) if base else None
        is_label_studio = base_parts is not None and _origin(url)[1] == base_parts.netloc.lower()
        if not is_label_studio and not host_allowed(parts.hostname, parts.port, self._hosts):
            raise DownloadRefused(
                f"{_short(url)}: host {parts.hostname!r} is not an allowed image host (IMAGE_HOSTS; "
                "Label Studio's own host and IMAGE_CLOUD_HOSTS are allowed)")
        if with_token and is_label_studio:
            path = unquote(parts.path)
            prefix = base_parts.path.rstrip("/")
            inner = path[len(prefix):] if path.startswith(prefix) else ""
            if ".." in path.split("/") or not _MEDIA_PATH.fullmatch(inner):
                raise DownloadRefused(
                    f"{_short(url)}: the Label Studio token is sent only to media paths (/data/upload/, "
                    "/data/local-files/, /storage-data/uploaded/, /tasks/<id>/presign/)")


def _read_body(response: requests.Response, url: str, max_bytes: int, deadline: float) -> None:
    """Read the body into ``response`` (as requests would without ``stream``), within the bounds."""
    if response.status_code >= 400:
        response._content = b""  # noqa: SLF001 - the body of an error is not needed, only its status
        response.close()
        return
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        response.close()
        raise DownloadRefused(f"{_short(url)} is {int(length)} bytes, above the {max_bytes}-byte download "
                              "limit (MAX_IMAGE_DOWNLOAD_MB)")
    body = bytearray()
    try:
        # read1 returns what one socket read gives: a trickling server cannot hide behind a large chunk size.
        while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
            body += chunk
            if len(body) > max_bytes:
                raise DownloadRefused(f"{_short(url)}: more than {max_bytes} bytes without a Content-Length "
                                      "that says so (MAX_IMAGE_DOWNLOAD_MB)")
            if time.monotonic() > deadline:
                raise DownloadRefused(f"{_short(url)}: download not finished by its deadline "
                                      f"({len(body)} bytes received; IMAGE_DOWNLOAD_DEADLINE)")
    except BaseException:
        response.close()
        raise
    response._content = bytes(body)  # noqa: SLF001 - what Response.content would have read
    response._content_consumed = True  # noqa: SLF001
    response.close()  # fully read: the connection goes back to the pool
