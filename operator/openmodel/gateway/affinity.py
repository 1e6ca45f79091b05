"""Prefix affinity: requests that begin alike go to the same pod, where the engine's
automatic prefix cache already holds that beginning, unless that pod is loaded beyond a
bound. Pure, no I/O.

The key of a request is a hash of its adapter (an adapter's cache is its own) and the
first `prefix_characters` characters of its prompt: a completion's prompt, or a chat's
messages as the chat template would lay them out (role, then text, in order), so that a
shared system prompt, and the conversation so far, lead to one pod.

The pod is chosen by consistent hashing with bounded load (Mirrokni, Thorup and
Zadimoghaddam, 2018): each pod owns `VIRTUAL_NODES` points on a 64-bit ring; the key's
point walks the ring to the first pod whose load (its outstanding work + 1) is within
`load_factor` x the mean load + 1, rounded up. So no pod ever takes more than that bound
while another has room, a pod that leaves moves only its own keys, and a new pod takes a
fair share from every other.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

VIRTUAL_NODES: Final = 64
_RING_CACHE_SIZE: Final = 256
T = TypeVar("T")


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return ""


def prompt_prefix(body: Mapping[str, Any], characters: int) -> str | None:
    """The first `characters` of what the engine will prefill, or None when the request
    has no prompt to speak of (embeddings of several inputs, a malformed body)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        text = []
        size = 0
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            piece = f"{message.get('role', '')}\n{_message_text(message.get('content'))}\n"
            text.append(piece)
            size += len(piece)
            if size >= characters:
                break
        joined = "".join(text)
        return joined[:characters] if joined else None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt[:characters]
    return None


def affinity_key(body: Mapping[str, Any], adapter: str | None, characters: int) -> int | None:
    prefix = prompt_prefix(body, characters)
    if prefix is None:
        return None
    return _hash64(f"{adapter or ''}\0{prefix}".encode())


class Ring:
    """The points of a set of pods on the hash ring."""

    def __init__(self, pods: Sequence[str]) -> None:
        points = sorted(
            (_hash64(f"{pod}#{i}".encode()), pod) for pod in pods for i in range(VIRTUAL_NODES)
        )
        self._hashes = [h for h, _ in points]
        self._pods = [p for _, p in points]
        self.size = len(set(pods))

    def walk(self, key: int) -> Iterator[str]:
        """Each pod once, in ring order from the key's point."""
        seen: set[str] = set()
        start = bisect.bisect_left(self._hashes, key)
        n = len(self._pods)
        for i in range(n):
            pod = self._pods[(start + i) % n]
            if pod not in seen:
                seen.add(pod)
                yield pod
                if len(seen) == self.size:
                    return


@dataclass
class RingCache:
    """Rings by pod set: pods change seldom, requests often."""

    _rings: OrderedDict[tuple[str, ...], Ring]

    @classmethod
    def empty(cls) -> RingCache:
        return cls(OrderedDict())

    def ring(self, pods: Sequence[str]) -> Ring:
        key = tuple(sorted(pods))
        found = self._rings.get(key)
        if found is None:
            found = self._rings[key] = Ring(key)
            if len(self._rings) > _RING_CACHE_SIZE:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(key)
        return found


def load_bound(loads: Sequence[float], load_factor: float) -> float:
    """The most outstanding work a pod may have after taking the request."""
    return math.ceil(load_factor * (sum(loads) + 1) / len(loads))


def bounded_pick(
    key: int,
    choices: Sequence[T],
    name: Callable[[T], str],
    load: Callable[[T], float],
    load_factor: float,
    rings: RingCache,
) -> T:
    """The first of `choices` on the ring from `key` whose load stays within the bound."""
    by_name = {name(c): c for c in choices}
    loads = {n: load(c) for n, c in by_name.items()}
    bound = load_bound(list(loads.values()), load_factor)
    for pod in rings.ring(list(by_name)).walk(key):
        if loads[pod] + 1 <= bound:
            return by_name[pod]
    # Unreachable with load_factor >= 1 (some pod is at or below the mean); kept total.
    return min(choices, key=load)
