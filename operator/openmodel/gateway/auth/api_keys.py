"""API keys for callers outside the cluster: `om_<id>_<secret>`, checked against APIKey
objects (openmodel.dev/v1alpha1, namespaced) that hold only the key's SHA-256 digest and
the ServiceAccount of their own namespace whose rights the key carries. Pure: the index
is fed from a watch (gateway/auth/api_key_watch.py) and answers without I/O.

Why SHA-256 and not a slow KDF: a KDF protects secrets a person chose, whose few bits a
GPU can enumerate. The secret here is 32 random bytes (256 bits) from the OS's CSPRNG;
guessing one from its digest is as hard as inverting SHA-256, whatever the hash speed,
and a fast hash keeps the check on every request at a microsecond.

The id (16 random characters) finds the record without scanning; two records claiming
one id (one copied into another namespace) are both tried, each against its own digest,
so a copy gains nothing: only the secret's holder matches, with its own record's rights.
Deleting the APIKey revokes the key at once (the watch); rotating is creating another
key, moving clients to it, then deleting the old one. The APIKey is owned by its
ServiceAccount (ownerReference, set by `openmodel apikey create`): deleting the
ServiceAccount garbage-collects its keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from openmodel.gateway.auth.credentials import API_KEY_PREFIX, ApiKeyCredential
from openmodel.gateway.caller import Caller, CallerKind

API_KEY_KIND: Final = "APIKey"
API_KEY_PLURAL: Final = "apikeys"
API_KEY_VERSION: Final = "v1alpha1"
HASH_PREFIX: Final = "sha256:"
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
_ID_CHARS: Final = 16
_SECRET_BYTES: Final = 32


def key_digest(key_id: str, secret: str) -> str:
    """What an APIKey stores: `sha256:<hex>` of the whole key string."""
    whole = f"{API_KEY_PREFIX}{key_id}_{secret}"
    return HASH_PREFIX + hashlib.sha256(whole.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """(key id, the key to hand out once, its digest to store)."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_CHARS))
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return key_id, f"{API_KEY_PREFIX}{key_id}_{secret}", key_digest(key_id, secret)


def api_key_object(
    namespace: str,
    name: str,
    service_account: str,
    service_account_uid: str,
    key_id: str,
    digest: str,
) -> dict[str, Any]:
    """The APIKey to create: the digest, never the key; owned by its ServiceAccount."""
    return {
        "apiVersion": f"openmodel.dev/{API_KEY_VERSION}",
        "kind": API_KEY_KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "name": service_account,
                    "uid": service_account_uid,
                }
            ],
        },
        "spec": {"serviceAccountName": service_account, "keyId": key_id, "keyHash": digest},
    }


def service_account_groups(namespace: str) -> tuple[str, ...]:
    """The groups the API server gives every ServiceAccount token of `namespace`."""
    return ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    namespace: str
    name: str
    service_account: str
    key_id: str
    digest: str  # sha256:<hex>

    def caller(self) -> Caller:
        return Caller(
            CallerKind.SERVICE_ACCOUNT,
            self.namespace,
            self.service_account,
            api_key=self.name,
            groups=service_account_groups(self.namespace),
        )


def record_from(body: Mapping[str, Any]) -> ApiKeyRecord | None:
    """An APIKey object -> its record; None for one being deleted or malformed (the CRD's
    schema refuses those, this is the gateway not trusting it)."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    if meta.get("deletionTimestamp"):
        return None
    account, key_id, digest = spec.get("serviceAccountName"), spec.get("keyId"), spec.get("keyHash")
    if not (isinstance(account, str) and account and isinstance(key_id, str) and key_id):
        return None
    if not (isinstance(digest, str) and digest.startswith(HASH_PREFIX)):
        return None
    return ApiKeyRecord(meta.get("namespace", ""), meta.get("name", ""), account, key_id, digest)


@dataclass
class ApiKeyIndex:
    """Every APIKey the watch has seen, by key id."""

    by_object: dict[tuple[str, str], ApiKeyRecord] = field(default_factory=dict)
    by_id: dict[str, list[ApiKeyRecord]] = field(default_factory=dict)
    synced: bool = False  # the first full list arrived: a key not found is unknown

    def replace(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        self.by_object = {}
        for body in bodies:
            record = record_from(body)
            if record is not None:
                self.by_object[(record.namespace, record.name)] = record
        self._reindex()
        self.synced = True

    def put(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        where = (meta.get("namespace", ""), meta.get("name", ""))
        record = record_from(body)
        if record is None:
            self.by_object.pop(where, None)
        else:
            self.by_object[where] = record
        self._reindex()

    def delete(self, namespace: str, name: str) -> None:
        self.by_object.pop((namespace, name), None)
        self._reindex()

    def _reindex(self) -> None:
        by_id: dict[str, list[ApiKeyRecord]] = {}
        for record in self.by_object.values():
            by_id.setdefault(record.key_id, []).append(record)
        self.by_id = by_id

    def caller(self, credential: ApiKeyCredential) -> Caller | None:
        """The key's caller; None for a key no APIKey holds (wrong, revoked, rotated away)."""
        candidates = self.by_id.get(credential.key_id)
        if not candidates:
            return None
        digest = key_digest(credential.key_id, credential.secret)
        for record in candidates:
            if hmac.compare_digest(digest, record.digest):
                return record.caller()
        return None
