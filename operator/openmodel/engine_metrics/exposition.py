"""Read an engine's queue gauge out of a Prometheus text exposition (format 0.0.4).

Two entry points:

* ``read_queue(body, names) -> MetricResult`` is what the autoscaler uses. It returns
  either a ``QueueReading`` (a finite, non-negative number of waiting requests, summed
  over all series of the queue gauge) or a ``MetricFailure`` whose ``kind`` says why
  there is no usable number and whose ``detail`` is meant for people (events, status).
* ``parse_exposition(text) -> Exposition`` parses a whole body strictly and raises
  ``ParseError`` (with the line number) on the first line that does not follow the format.
  Tests, the simulator's tests and debugging tools use it.

``read_queue`` applies the same strict line grammar, but only to the lines of the metric
families it reads (their samples and their ``# HELP``/``# TYPE`` lines). A real engine's
body carries hundreds of histogram lines the autoscaler never looks at; validating every one
of them on 500 pods each cycle would dominate the cycle's CPU time, and an exporter quirk
in an unrelated family must not freeze autoscaling. A body cut short in transit is caught
by the HTTP layer (Content-Length / chunked framing, see ``scrape``), not here.

The grammar follows Prometheus' own text parser (``expfmt``): ``#`` comments, ``HELP``
with ``\\\\`` and ``\\n`` escapes, ``TYPE`` (counter, gauge, histogram, summary, untyped),
optional label sets (``\\\\``, ``\\"``, ``\\n`` escapes, optional trailing comma), Go float
values including ``NaN``/``+Inf``/``-Inf``, optional integer millisecond timestamps,
spaces or tabs between tokens. Rejected: other escapes, duplicate label names, the same
series twice, a second ``TYPE`` for a family, ``TYPE`` after the family's samples,
Python-only number spellings (``1_000``), hex floats, OpenMetrics-only syntax.
A trailing ``\\r`` is tolerated so a proxy that rewrites line endings does not stop scaling.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from openmodel.engines.base import MetricNames

__all__ = [
    "Exposition",
    "FailureKind",
    "MetricFailure",
    "MetricNames",
    "MetricResult",
    "ParseError",
    "QueueReading",
    "Sample",
    "parse_exposition",
    "read_queue",
    "sum_or_inf",
]


# --- results --------------------------------------------------------------------------


class FailureKind(StrEnum):
    """Why a pod gave no usable queue value. Values are CamelCase so they can be used
    as Kubernetes event/condition reasons as they are."""

    MISSING = "MetricMissing"
    NOT_FINITE = "MetricNotFinite"
    NEGATIVE = "MetricNegative"
    EMPTY_BODY = "EmptyBody"
    MALFORMED = "MalformedExposition"
    HTTP_STATUS = "HTTPError"
    TIMEOUT = "Timeout"
    UNREACHABLE = "Unreachable"
    TRANSPORT = "TransportError"
    TOO_LARGE = "BodyTooLarge"


@dataclass(frozen=True, slots=True)
class QueueReading:
    """A usable sample: ``waiting`` is finite and >= 0 (summed over the gauge's series).
    ``running`` and the cumulative token counters are informational and None when absent
    or unusable."""

    waiting: float
    running: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class MetricFailure:
    """No usable sample from this pod, and why."""

    kind: FailureKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


# Narrow with `isinstance(result, QueueReading)`.
MetricResult = QueueReading | MetricFailure


# --- the strict line grammar ----------------------------------------------------------

_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'"(?:[^"\\]|\\.)*"'
_LABEL = rf"{_LABEL_NAME}[ \t]*=[ \t]*{_LABEL_VALUE}"
_LABEL_SET = rf"\{{[ \t]*(?:{_LABEL}(?:[ \t]*,[ \t]*{_LABEL})*[ \t]*,?[ \t]*)?\}}"

_SAMPLE_RE: Final = re.compile(
    rf"(?P<name>{_METRIC_NAME})[ \t]*(?P<labels>{_LABEL_SET})?"
    r"[ \t]+(?P<value>[^ \t]+)(?:[ \t]+(?P<ts>[^ \t]+))?[ \t]*"
)
_LABEL_RE: Final = re.compile(rf'({_LABEL_NAME})[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"')
# What Go's strconv.ParseFloat accepts for Prometheus values, minus hex floats.
_VALUE_RE: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
    r"|[nN][aA][nN]"
)
_TIMESTAMP_RE: Final = re.compile(r"-?[0-9]+")
# `#`, blanks, a keyword; the keyword only counts when a blank follows it.
_DIRECTIVE_RE: Final = re.compile(r"#[ \t]*(HELP|TYPE)[ \t]+(.*)")
_HELP_RE: Final = re.compile(rf"({_METRIC_NAME})(?:[ \t]+(.*))?")
_TYPE_RE: Final = re.compile(rf"({_METRIC_NAME})[ \t]+([a-z]+)[ \t]*")
_ESCAPE_RE: Final = re.compile(r"\\(.?)")
_TYPES: Final = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_INT64_MAX: Final = 2**63 - 1
# Longest line of a family we read. An engine's queue gauge line is ~200 characters; the
# regular expressions are linear but slow on megabytes of one line (1 s for 8 MB of an
# unclosed label value, on the event loop, where no deadline can interrupt it).
_MAX_LINE: Final = 64 * 1024


class ParseError(ValueError):
    """A line that does not follow the text format."""

    def __init__(self, line_no: int, reason: str) -> None:
        super().__init__(f"line {line_no}: {reason}")
        self.line_no = line_no
        self.reason = reason


class _LineError(ValueError):
    """A grammar error before the line number is known."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample line. ``labels`` keeps the order written."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    timestamp_ms: int | None = None

    def label(self, name: str) -> str | None:
        return next((v for k, v in self.labels if k == name), None)


@dataclass(frozen=True, slots=True)
class _Help:
    name: str
    text: str


@dataclass(frozen=True, slots=True)
class _Type:
    name: str
    type: str


def _unescape(raw: str, allowed: Mapping[str, str]) -> str:
    if "\\" not in raw:
        return raw

    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        if char not in allowed:
            raise _LineError(f"invalid escape sequence '\\{char}'")
        return allowed[char]

    return _ESCAPE_RE.sub(replace, raw)


_LABEL_ESCAPES: Final = {"\\": "\\", '"': '"', "n": "\n"}
_HELP_ESCAPES: Final = {"\\": "\\", "n": "\n"}


def _parse_value(token: str) -> float:
    if not _VALUE_RE.fullmatch(token):
        raise _LineError(f"invalid value {token!r}")
    return float(token)


def _parse_sample(line: str) -> Sample:
    match = _SAMPLE_RE.fullmatch(line)
    if match is None:
        raise _LineError(f"not a sample line: {line[:120]!r}")
    labels: tuple[tuple[str, str], ...] = ()
    label_text = match.group("labels")
    if label_text is not None and len(label_text) > 2:
        labels = tuple(
            (name, _unescape(value, _LABEL_ESCAPES))
            for name, value in _LABEL_RE.findall(label_text)
        )
        names = [name for name, _ in labels]
        if len(set(names)) != len(names):
            raise _LineError(f"duplicate label name in {label_text!r}")
    timestamp: int | None = None
    ts_token = match.group("ts")
    if ts_token is not None:
        if not _TIMESTAMP_RE.fullmatch(ts_token) or abs(int(ts_token)) > _INT64_MAX:
            raise _LineError(f"invalid timestamp {ts_token!r}")
        timestamp = int(ts_token)
    return Sample(match.group("name"), labels, _parse_value(match.group("value")), timestamp)


def _parse_line(line: str) -> Sample | _Help | _Type | None:
    """One line without its newline; None for blank lines and plain comments."""
    if line.endswith("\r"):
        line = line[:-1]
    if not line:
        return None
    if line[0] != "#":
        return _parse_sample(line)
    directive = _DIRECTIVE_RE.fullmatch(line)
    if directive is None:
        return None  # a plain comment (includes a bare "# HELP")
    keyword, rest = directive.groups()
    if keyword == "HELP":
        help_match = _HELP_RE.fullmatch(rest)
        if help_match is None:
            raise _LineError(f"invalid metric name in HELP line: {rest[:120]!r}")
        return _Help(help_match.group(1), _unescape(help_match.group(2) or "", _HELP_ESCAPES))
    type_match = _TYPE_RE.fullmatch(rest)
    if type_match is None or type_match.group(2) not in _TYPES:
        raise _LineError(f"invalid TYPE line: {rest[:120]!r}")
    return _Type(type_match.group(1), type_match.group(2))


class _FamilyBook:
    """The cross-line rules: one TYPE/HELP per family, TYPE before samples, no
    duplicate series."""

    def __init__(self) -> None:
        self.types: dict[str, str] = {}
        self.help: dict[str, str] = {}
        self.sampled: set[str] = set()
        self.series: set[tuple[str, frozenset[tuple[str, str]]]] = set()

    def add(self, item: Sample | _Help | _Type) -> None:
        if isinstance(item, Sample):
            key = (item.name, frozenset(item.labels))
            if key in self.series:
                raise _LineError(f"duplicate series {item.name}{dict(item.labels)}")
            self.series.add(key)
            self.sampled.add(item.name)
        elif isinstance(item, _Type):
            if item.name in self.types:
                raise _LineError(f"second TYPE line for {item.name}")
            if item.name in self.sampled:
                raise _LineError(f"TYPE line for {item.name} after its samples")
            self.types[item.name] = item.type
        else:
            if item.name in self.help:
                raise _LineError(f"second HELP line for {item.name}")
            self.help[item.name] = item.text


@dataclass(frozen=True, slots=True)
class Exposition:
    """A whole parsed body."""

    samples: tuple[Sample, ...]
    types: Mapping[str, str]
    help: Mapping[str, str]

    def values(self, name: str) -> list[float]:
        return [s.value for s in self.samples if s.name == name]


def parse_exposition(text: str) -> Exposition:
    """Parse a whole text exposition; raise ParseError on the first bad line."""
    book = _FamilyBook()
    samples: list[Sample] = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        try:
            item = _parse_line(line)
            if item is None:
                continue
            book.add(item)
        except _LineError as exc:
            raise ParseError(line_no, str(exc)) from None
        if isinstance(item, Sample):
            samples.append(item)
    return Exposition(tuple(samples), dict(book.types), dict(book.help))


# --- the autoscaler's fast path -------------------------------------------------------


_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:")
_DIRECTIVE_PREFIX_RE: Final = re.compile(r"#[ \t]*(?:HELP|TYPE)[ \t]+")


def _family_lines(body: str, name: str) -> Iterator[tuple[int, str]]:
    """(offset, line) of each sample, HELP or TYPE line of exactly `name`, in order.

    str.find skips through the body at C speed; a regular expression anchored at every
    line start was 10x slower on an engine's 80 KB body.
    """
    end = len(body)
    position = 0
    while (found := body.find(name, position)) != -1:
        line_start = body.rfind("\n", 0, found) + 1
        line_end = body.find("\n", found)
        if line_end == -1:
            line_end = end
        position = line_end
        after = found + len(name)
        if after < end and body[after] in _NAME_CHARS:
            continue  # a longer name that starts with this one
        prefix = body[line_start:found]
        if prefix and not _DIRECTIVE_PREFIX_RE.fullmatch(prefix):
            continue  # inside another line: a label value, a comment, a longer name
        yield line_start, body[line_start:line_end]


def _collect(body: str, name: str, *, gauge: bool) -> list[float] | MetricFailure:
    """The values of every series of `name`, checking its lines strictly."""
    book = _FamilyBook()
    values: list[float] = []
    for offset, line in _family_lines(body, name):
        if len(line) > _MAX_LINE:
            line_no = body.count("\n", 0, offset) + 1
            return MetricFailure(
                FailureKind.MALFORMED,
                f"line {line_no}: {len(line)} characters, over the {_MAX_LINE} read per line",
            )
        try:
            item = _parse_line(line)
            if item is None:
                continue
            book.add(item)
        except _LineError as exc:
            line_no = body.count("\n", 0, offset) + 1
            return MetricFailure(FailureKind.MALFORMED, f"line {line_no}: {exc}")
        if isinstance(item, Sample):
            values.append(item.value)
    declared = book.types.get(name, "gauge")
    if gauge and declared not in ("gauge", "untyped"):
        # A counter or histogram under this name is not a queue length we can trust.
        return MetricFailure(FailureKind.MALFORMED, f"{name} is declared {declared}, not gauge")
    return values


def sum_or_inf(values: Iterable[float]) -> float:
    """The exact sum of finite values, or inf when it overflows: ``math.fsum`` raises
    OverflowError on two series of 1e308, which would end the whole cycle."""
    try:
        return math.fsum(values)
    except OverflowError:
        return math.inf


def _usable(name: str, series: list[float]) -> float | MetricFailure:
    if not series:
        return MetricFailure(FailureKind.MISSING, f"no {name} in the exposition")
    if not all(math.isfinite(v) for v in series):
        return MetricFailure(FailureKind.NOT_FINITE, f"{name} is {_shown(series)}")
    if any(v < 0 for v in series):
        return MetricFailure(FailureKind.NEGATIVE, f"{name} is {_shown(series)}")
    total = sum_or_inf(series)
    if not math.isfinite(total):
        return MetricFailure(FailureKind.NOT_FINITE, f"{name} sums to more than a float holds")
    return total


def _shown(series: list[float]) -> str:
    # A body may carry thousands of series; a message names a few.
    head = ", ".join(f"{v:g}" for v in series[:5])
    return f"[{head}{', ...' if len(series) > 5 else ''}] ({len(series)} series)"


def read_queue(body: str, names: MetricNames) -> MetricResult:
    """The queue gauge of one pod's metrics body (`names`: the engine's
    `Engine.metric_names`), summed over its series (an engine may export one per engine
    core), or why there is none."""
    if not body or body.isspace():  # isspace() stops at the first character; no copy
        return MetricFailure(FailureKind.EMPTY_BODY, "the /metrics body is empty")
    queue_values = _collect(body, names.queue, gauge=True)
    if isinstance(queue_values, MetricFailure):
        return queue_values
    waiting = _usable(names.queue, queue_values)
    if isinstance(waiting, MetricFailure):
        return waiting
    informational: list[float | None] = []
    for name in (names.running, names.prompt_tokens, names.generation_tokens):
        if name is None:
            informational.append(None)
            continue
        values = _collect(body, name, gauge=False)
        if isinstance(values, MetricFailure):
            # Broken syntax anywhere in what we read makes the whole body suspect.
            return values
        usable = _usable(name, values)
        # Informational only: a missing or odd series must not block scaling.
        informational.append(usable if isinstance(usable, float) else None)
    running, prompt_tokens, generation_tokens = informational
    return QueueReading(waiting, running, prompt_tokens, generation_tokens)
