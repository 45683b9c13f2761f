"""The admin console's access rule: ``Authorization: Bearer <ADMIN_TOKEN>`` on every API call.

- ADMIN_TOKEN unset: the console is off; its routes are not mounted, so everything under /admin is 404.
- The token is compared in constant time (``hmac.compare_digest`` of SHA-256 digests: neither the
  content nor the length of the expected token leaks through timing).
- A token in the query string is refused even when it is right: URLs end up in access logs,
  browser history and Referer headers. The console's page asks for the token and sends it as a header.
- Basic auth (BASIC_AUTH_USER/PASS) does not apply under /admin: one Authorization header cannot carry
  both, and the admin token is the stronger, admin-only credential.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request
from fastapi.exceptions import HTTPException

# Query parameters a client might try to pass a token in; any of them is refused.
TOKEN_QUERY_NAMES = frozenset({"token", "access_token", "admin_token", "bearer", "auth", "authorization"})


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def token_ok(given: str, expected: str) -> bool:
    """Constant time in the content and length of both tokens; an empty expected token matches nothing."""
    return bool(expected) and hmac.compare_digest(_digest(given), _digest(expected))


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, detail=message, headers={"WWW-Authenticate": 'Bearer realm="samloop-admin"'})


def require_admin_token(request: Request) -> None:
    """Dependency of every /admin/api route."""
    expected: str = request.app.state.settings.ADMIN_TOKEN
    in_query = sorted(name for name in request.query_params if name.lower() in TOKEN_QUERY_NAMES)
    if in_query:
        raise _unauthorized(f"tokens are not accepted in the query string (got {', '.join(in_query)}): "
                            "send the header 'Authorization: Bearer <ADMIN_TOKEN>'")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _unauthorized("admin API: send the header 'Authorization: Bearer <ADMIN_TOKEN>'")
    if not token_ok(given.strip(), expected):
        raise _unauthorized("admin API: wrong token (compare with ADMIN_TOKEN in the backend's environment)")
