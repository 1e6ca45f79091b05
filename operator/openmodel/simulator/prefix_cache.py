"""The simulator's model of vLLM's automatic prefix caching.

A prompt's tokens (its words, as the simulator counts tokens) are cut into blocks of
`block_tokens`; each full block is keyed by a hash of every token from the start of the
prompt to the block's end, so a block matches only after the same beginning, as in
vLLM's block hashes. A request's hit is the run of its leading blocks already cached
(in tokens); then its full blocks are cached, the least recently used evicted beyond
`capacity_blocks`. The engine counts the prompt's tokens as queries and the hit as hits
(`vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total`, both in tokens, as
vLLM 0.32 does), and with `prefill_seconds_per_token` a hit saves that much prefill per
cached token.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

BLOCK_TOKENS: Final = 16
CAPACITY_BLOCKS: Final = 4096


@dataclass
class PrefixCache:
    block_tokens: int = BLOCK_TOKENS
    capacity_blocks: int = CAPACITY_BLOCKS
    _blocks: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def cached_tokens(self, tokens: Sequence[str]) -> int:
        """How many leading tokens were cached; the prompt's full blocks are cached after."""
        chain = hashlib.blake2b(digest_size=16)
        keys = []
        for start in range(0, len(tokens) - self.block_tokens + 1, self.block_tokens):
            for token in tokens[start : start + self.block_tokens]:
                chain.update(token.encode())
                chain.update(b"\0")
            keys.append(chain.copy().digest())
        hit = 0
        for key in keys:
            if key not in self._blocks:
                break
            hit += 1
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
        return hit * self.block_tokens
