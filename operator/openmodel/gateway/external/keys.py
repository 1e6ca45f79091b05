"""Each ExternalModel's key, read from the Secret its spec names, in the ExternalModel's
own namespace (a `get` by name the namespace grants the gateway: docs/api.md).

Read when first needed, kept in memory only, read again after `MAX_AGE_S` and at once
after the upstream refused it (a rotated key). A key that cannot be read fails the
request closed (`KeyUnavailable`, whose message names the ExternalModel and the Secret,
never a value). The reads are blocking client calls, run off the event loop; concurrent
requests needing the same key share one read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from openmodel.api import SecretKeyRef
from openmodel.external_model import ExternalModel

MAX_AGE_S: Final = 60.0

# (namespace, secret name) -> the Secret's `data` (base64 values); raises on failure.
ReadSecret = Callable[[str, str], dict[str, str]]
_Where = tuple[str, str, str]  # namespace, secret, key


class KeyUnavailable(Exception):
    """The key could not be read; the message is safe to show a client."""


@dataclass
class ExternalKeys:
    read_secret: ReadSecret
    clock: Callable[[], float] = time.monotonic
    _known: dict[_Where, tuple[str, float]] = field(default_factory=dict)
    _reading: dict[_Where, asyncio.Task[str]] = field(default_factory=dict)

    async def key(self, external: ExternalModel) -> str | None:
        """The key, or None when the ExternalModel names no Secret (an upstream that
        needs none). Raises KeyUnavailable."""
        ref = external.api_key_secret
        if ref is None:
            return None
        where = (external.namespace, ref.name, ref.key)
        known = self._known.get(where)
        if known is not None and self.clock() - known[1] < MAX_AGE_S:
            return known[0]
        reading = self._reading.get(where)
        if reading is None:
            reading = asyncio.create_task(self._read(external, ref, where))
            self._reading[where] = reading
            reading.add_done_callback(lambda _: self._reading.pop(where, None))
        return await asyncio.shield(reading)

    def forget(self, external: ExternalModel) -> None:
        """The upstream refused the key: read it again on the next request."""
        ref = external.api_key_secret
        if ref is not None:
            self._known.pop((external.namespace, ref.name, ref.key), None)

    async def _read(self, external: ExternalModel, ref: SecretKeyRef, where: _Where) -> str:
        what = (
            f"the key of ExternalModel {external.namespace}/{external.name} (Secret "
            f"`{ref.name}`, key `{ref.key}`)"
        )
        try:
            data = await asyncio.to_thread(self.read_secret, external.namespace, ref.name)
        except Exception as e:  # forbidden, missing, API server down: all fail closed
            status = getattr(e, "status", None)
            raise KeyUnavailable(
                f"{what} could not be read (HTTP {status or type(e).__name__}): the gateway "
                "needs `get` on that Secret in its namespace (docs/api.md)"
            ) from None
        encoded = (data or {}).get(ref.key)
        if not encoded:
            raise KeyUnavailable(f"{what} has no such key")
        try:
            key = base64.b64decode(encoded, validate=True).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            raise KeyUnavailable(f"{what} is not valid text") from None
        if not key or "\n" in key or "\r" in key:
            raise KeyUnavailable(f"{what} is empty or spans lines")
        self._known[where] = (key, self.clock())
        return key
