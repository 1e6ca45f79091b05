"""The platform config's `cost` key: what the platform pays for what the engines hold,
and how the operator meters it (docs/cost.md).

```yaml
cost:
  currency: USD                  # the unit of every price below and of the cost metrics
  gpuHourPrices:                 # per accelerator (spec.gpu.type), per GPU and hour
    nvidia-h100-80gb: 2.50       # the platform's own figure: amortisation or cloud rate
    nvidia-l4: 0.45
  cpuCoreHourPrice: 0.02         # gpu.type cpu (CPU engines): per requested core-hour
  memoryGiBHourPrice: 0.003      # ... and per requested GiB-hour
  pollSeconds: 15                # how often pods are counted and engines' token counters read
  checkpointSeconds: 60          # how often (at most) the totals are saved for a restart
```

An accelerator without a price is still metered (GPU-seconds, tokens); its cost is not
counted and `openmodel cost` says which prices are missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openmodel.config.errors import ConfigError, checked_mapping

KEY = "cost"
# ISO 4217 codes, or any short unit a platform counts in (e.g. an internal credit).
_CURRENCY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,15}")


@dataclass(frozen=True)
class CostConfig:
    currency: str = "USD"
    gpu_hour_prices: Mapping[str, float] = field(default_factory=dict)
    cpu_core_hour_price: float | None = None
    memory_gib_hour_price: float | None = None
    poll_seconds: float = 15.0
    checkpoint_seconds: float = 60.0

    def gpu_hour_price(self, accelerator: str) -> float | None:
        return self.gpu_hour_prices.get(accelerator)


def _price(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a number >= 0, got {value!r}")
    if value < 0:
        raise ConfigError(f"{where} must be a number >= 0, got {value!r}")
    return float(value)


def _optional_price(raw: Mapping[str, Any], key: str) -> float | None:
    return None if raw.get(key) is None else _price(raw[key], f"{KEY}.{key}")


def _seconds(raw: Mapping[str, Any], key: str, default: float, least: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= least:
        raise ConfigError(f"{KEY}.{key} must be a number >= {least:g}, got {value!r}")
    return float(value)


def parse_cost(raw: Any) -> CostConfig:
    known = (
        "currency", "gpuHourPrices", "cpuCoreHourPrice", "memoryGiBHourPrice",
        "pollSeconds", "checkpointSeconds",
    )  # fmt: skip
    raw = checked_mapping({} if raw is None else raw, KEY, known)
    d = CostConfig()
    currency = raw.get("currency", d.currency)
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise ConfigError(
            f"{KEY}.currency must be a short unit name such as USD or EUR, got {currency!r}"
        )
    prices_raw = raw.get("gpuHourPrices") or {}
    if not isinstance(prices_raw, Mapping):
        raise ConfigError(f"{KEY}.gpuHourPrices must map accelerator names to prices")
    prices = {
        str(name): _price(value, f"{KEY}.gpuHourPrices.{name}")
        for name, value in prices_raw.items()
    }
    poll = _seconds(raw, "pollSeconds", d.poll_seconds, 1.0)
    checkpoint = _seconds(raw, "checkpointSeconds", d.checkpoint_seconds, poll)
    return CostConfig(
        currency=currency,
        gpu_hour_prices=prices,
        cpu_core_hour_price=_optional_price(raw, "cpuCoreHourPrice"),
        memory_gib_hour_price=_optional_price(raw, "memoryGiBHourPrice"),
        poll_seconds=poll,
        checkpoint_seconds=checkpoint,
    )
