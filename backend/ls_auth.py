"""The credential sent to Label Studio when downloading task images.

Two kinds of API key exist: a legacy token (sent as ``Authorization: Token <key>``) and a personal
access token, which is a JWT *refresh* token that must be exchanged at ``/api/token/refresh/`` for
a short-lived access token (sent as ``Bearer``). The SDK's client does the exchange and caches the
access token until it expires; this module asks it for the header value it would send.
"""

from __future__ import annotations

import logging
import threading

from label_studio_sdk.client import LabelStudio

from training.labelstudio.client import LabelStudioSource

log = logging.getLogger(__name__)


class LabelStudioAuthError(RuntimeError):
    """The API key cannot be used (expired personal access token, refresh refused, LS unreachable)."""


class LabelStudioAuth:
    """Resolves an API key into the token to send to ``url`` (and only there)."""

    def __init__(self, url: str, api_key: str) -> None:
        if not url or not api_key:
            raise ValueError(f"Label Studio URL and API key are both needed, got url={url!r} and "
                             f"{'a key' if api_key else 'no key'}")
        self.url = url.rstrip("/")
        self._api_key = api_key
        self._client: LabelStudio | None = None
        self._lock = threading.Lock()

    def source(self, timeout: float = 10.0, retries: int = 2) -> LabelStudioSource:
        """This Label Studio and key for API calls (``training.labelstudio.client``)."""
        return LabelStudioSource(self.url, self._api_key, timeout=timeout, retries=retries)

    def _sdk_client(self) -> LabelStudio:
        with self._lock:
            if self._client is None:
                try:
                    self._client = LabelStudio(base_url=self.url, api_key=self._api_key, timeout=10)
                except Exception as exc:  # the SDK raises ApiError for an expired personal access token
                    raise LabelStudioAuthError(f"LABEL_STUDIO_API_KEY is not usable: {_describe(exc)}") from exc
            return self._client

    def access_token(self) -> str:
        """The legacy token as is, or a fresh access token for a personal access token."""
        client = self._sdk_client()
        try:
            # The SDK's own header: "Token <legacy>" or "Bearer <access>" (refreshing when expired).
            header = client._client_wrapper.get_headers()["Authorization"]  # noqa: SLF001 - no public accessor
        except Exception as exc:  # refresh failures arrive as ApiError or httpx errors
            raise LabelStudioAuthError(
                f"cannot exchange the personal access token at {self.url}/api/token/refresh/: {_describe(exc)}"
            ) from exc
        return header.split(" ", 1)[1]


def _describe(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    return f"{type(exc).__name__}: {body if body is not None else exc}"
