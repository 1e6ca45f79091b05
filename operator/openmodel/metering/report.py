"""The numbers people ask for, from the metering's counters (docs/cost.md): cost per hour,
tokens per GPU-hour, cost per million tokens, utilisation, and the break-even against a
paid API. Pure: the counters come in as `Usage` per ModelDeployment, read either from
the operator's own /metrics (since metering began) or from a Prometheus for a period
(`openmodel cost`, cli.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Final

from openmodel.engine_metrics.exposition import parse_exposition
from openmodel.metering.ledger import ModelKey

HOURS_PER_MONTH: Final = 730.0  # 365 * 24 / 12
# The counter behind each Usage field (a Prometheus counter's sample has `_total`).
SERIES: Final = {
    "gpu_seconds": "openmodel_gpu_seconds_total",
    "busy_gpu_seconds": "openmodel_gpu_busy_seconds_total",
    "prompt_tokens": "openmodel_engine_prompt_tokens_total",
    "generation_tokens": "openmodel_engine_generation_tokens_total",
    "cost": "openmodel_cost_total",
}
RATE_SERIES: Final = "openmodel_cost_per_hour"


@dataclass
class Usage:
    gpu_seconds: float = 0.0
    busy_gpu_seconds: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    cost: float = 0.0
    cost_per_hour: float = 0.0  # the rate now (own metrics) or on average (a period)
    accelerators: set[str] = field(default_factory=set)

    def add(self, other: Usage) -> None:
        for f in fields(self):
            if f.name == "accelerators":
                self.accelerators |= other.accelerators
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def tokens(self) -> float:
        return self.prompt_tokens + self.generation_tokens

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0

    @property
    def utilisation(self) -> float | None:
        return self.busy_gpu_seconds / self.gpu_seconds if self.gpu_seconds else None

    @property
    def tokens_per_gpu_hour(self) -> float | None:
        return self.tokens / self.gpu_hours if self.gpu_seconds else None

    @property
    def cost_per_million_tokens(self) -> float | None:
        return self.cost / self.tokens * 1e6 if self.tokens else None


@dataclass(frozen=True)
class ApiPrices:
    """A paid API's list prices per million prompt and generated tokens."""

    prompt_per_million: float
    generation_per_million: float

    def cost_of(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.prompt_per_million
            + usage.generation_tokens * self.generation_per_million
        ) / 1e6

    def break_even_tokens_per_month(self, usage: Usage) -> float | None:
        """The monthly volume, at this model's mix of prompt and generated tokens, at which
        the API would cost what keeping the fleet costs (its cost per hour, all month):
        below it the API is cheaper. None when the mix or the fleet's cost is unknown."""
        if not usage.tokens or usage.cost_per_hour <= 0:
            return None
        per_token = self.cost_of(usage) / usage.tokens
        return usage.cost_per_hour * HOURS_PER_MONTH / per_token if per_token > 0 else None


def usage_from_exposition(text: str) -> dict[ModelKey, Usage]:
    """Per ModelDeployment, from the operator's /metrics (the leader's: it alone counts)."""
    exposition = parse_exposition(text)
    found: dict[ModelKey, Usage] = {}
    wanted = {series: name for name, series in SERIES.items()} | {RATE_SERIES: "cost_per_hour"}
    for sample in exposition.samples:
        name = wanted.get(sample.name)
        namespace, md = sample.label("namespace"), sample.label("name")
        if name is None or namespace is None or md is None:
            continue
        usage = found.setdefault((namespace, md), Usage())
        setattr(usage, name, getattr(usage, name) + sample.value)
        accelerator = sample.label("accelerator")
        if accelerator:
            usage.accelerators.add(accelerator)
    return found


Query = Callable[[str], Iterable[tuple[Mapping[str, str], float]]]


def usage_from_prometheus(query: Query, period: str, hours: float) -> dict[ModelKey, Usage]:
    """Per ModelDeployment over the last `period` (a PromQL duration such as 30d, `hours`
    long), with `query` running an instant PromQL query and yielding (labels, value)."""
    found: dict[ModelKey, Usage] = {}
    for name, series in SERIES.items():
        by = "namespace, name, accelerator" if "gpu" in name else "namespace, name"
        for labels, value in query(f"sum by ({by}) (increase({series}[{period}]))"):
            key = (labels.get("namespace", ""), labels.get("name", ""))
            usage = found.setdefault(key, Usage())
            setattr(usage, name, getattr(usage, name) + value)
            if labels.get("accelerator"):
                usage.accelerators.add(labels["accelerator"])
    for usage in found.values():
        usage.cost_per_hour = usage.cost / hours if hours > 0 else 0.0
    return found


def by_namespace(usages: Mapping[ModelKey, Usage]) -> dict[str, Usage]:
    totals: dict[str, Usage] = {}
    for (namespace, _), usage in usages.items():
        totals.setdefault(namespace, Usage()).add(usage)
    return totals


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.{digits}f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.{digits}f}k"
    return f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def report_lines(
    usages: Mapping[ModelKey, Usage],
    currency: str,
    api: ApiPrices | None = None,
    unpriced: Iterable[str] = (),
) -> list[str]:
    """The table `openmodel cost` prints: one row per ModelDeployment, then per namespace."""
    head = [
        "MODEL", "GPU-H", "BUSY", f"COST ({currency})", f"{currency}/H", "PROMPT TOK",
        "GEN TOK", "TOK/GPU-H", f"{currency}/1M TOK",
    ]  # fmt: skip
    if api is not None:
        head += [f"API ({currency})", "BREAK-EVEN TOK/MONTH"]
    rows = [head]

    def row(label: str, usage: Usage) -> list[str]:
        cells = [
            label,
            _num(usage.gpu_hours),
            _percent(usage.utilisation),
            _num(usage.cost),
            _num(usage.cost_per_hour),
            _num(usage.prompt_tokens, 0),
            _num(usage.generation_tokens, 0),
            _num(usage.tokens_per_gpu_hour, 0),
            _num(usage.cost_per_million_tokens),
        ]
        if api is not None:
            cells += [_num(api.cost_of(usage)), _num(api.break_even_tokens_per_month(usage), 1)]
        return cells

    for (namespace, name), usage in sorted(usages.items()):
        rows.append(row(f"{namespace}/{name}", usage))
    for namespace, usage in sorted(by_namespace(usages).items()):
        rows.append(row(f"{namespace} (namespace)", usage))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    missing = sorted(set(unpriced))
    if missing:
        lines.append(
            f"no price for {', '.join(missing)}: their GPU time is counted, not its cost "
            "(cost.gpuHourPrices in the platform config)"
        )
    return lines
