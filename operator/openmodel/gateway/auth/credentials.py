"""Read the credential of a request from its `Authorization` header, cheaply and without
any I/O: a malformed header, an overlong token or a token of neither shape is refused
here, before anything is asked of the API server.

Two shapes, both sent as `Authorization: Bearer <credential>` (what OpenAI's SDKs send
with `api_key=`):
- an API key of ours, `om_<id>_<secret>` (gateway/auth/api_keys.py);
- a JSON Web Token (`<header>.<payload>.<signature>`, base64url): ServiceAccount tokens,
  projected ones included, and other tokens the API server's authenticators issue as
  JWTs. Its `exp` is read (not trusted: the API server verifies the signature) only to
  cache a review no longer than the token lives.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Final

# A projected ServiceAccount token is about 1 KB; OIDC tokens with many groups reach a few.
# aiohttp refuses any header line over 8,190 bytes itself (400), before this check.
MAX_CREDENTIAL_CHARS: Final = 6144
API_KEY_PREFIX: Final = "om_"
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_KEY_ID: Final = re.compile(r"[a-z0-9]{16}")
_KEY_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{32,128}")


@dataclass(frozen=True, slots=True)
class BearerToken:
    token: str
    expires_at: float | None  # the JWT's `exp` (unix seconds), as the token claims it


@dataclass(frozen=True, slots=True)
class ApiKeyCredential:
    key_id: str
    secret: str


@dataclass(frozen=True, slots=True)
class Malformed:
    reason: str  # says what is wrong, never echoes the credential


Credential = BearerToken | ApiKeyCredential


def _b64url_json(segment: str) -> object:
    padded = segment + "=" * (-len(segment) % 4)
    try:
        return json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError):  # ValueError covers JSON and UTF-8 errors
        return None


def _jwt(token: str) -> BearerToken | Malformed:
    parts = token.split(".")
    if len(parts) != 3 or not all(_BASE64URL.fullmatch(p) for p in parts):
        return Malformed("the bearer token is neither an API key nor a JWT")
    header = _b64url_json(parts[0])
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        return Malformed("the bearer token is not a JWT (no header with `alg`)")
    claims = _b64url_json(parts[1])
    if not isinstance(claims, dict):
        return Malformed("the bearer token is not a JWT (its payload is not a JSON object)")
    exp = claims.get("exp")
    expires = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    return BearerToken(token, expires)


def parse_authorization(header: str | None) -> Credential | Malformed | None:
    """The credential in an `Authorization` header value; None when there is none."""
    if header is None:
        return None
    if len(header) > MAX_CREDENTIAL_CHARS + 16:
        return Malformed(f"the credential is longer than {MAX_CREDENTIAL_CHARS} characters")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return Malformed("the Authorization header must be `Bearer <token or API key>`")
    value = value.strip()
    if not value:
        return Malformed("the Authorization header has no token after `Bearer`")
    if value.startswith(API_KEY_PREFIX):
        key_id, sep, secret = value[len(API_KEY_PREFIX) :].partition("_")
        if sep and _KEY_ID.fullmatch(key_id) and _KEY_SECRET.fullmatch(secret):
            return ApiKeyCredential(key_id, secret)
        return Malformed("the API key is not of the form om_<id>_<secret>")
    return _jwt(value)
