"""Prometheus text parsing and queue extraction (openmodel.engine_metrics.exposition)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openmodel.engine_metrics.exposition import (
    FailureKind,
    MetricFailure,
    MetricNames,
    ParseError,
    QueueReading,
    Sample,
    parse_exposition,
    read_queue,
)
from openmodel.engines import ENGINES

VLLM_METRICS = ENGINES["vllm"].metric_names
TGI_METRICS = ENGINES["tgi"].metric_names

# Verbatim from docs/engines.md.
VLLM_BODY = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0123
"""

TGI_BODY = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 3
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 8
"""

M = 'model_name="m"'


def waiting_body(*values: str, extra: str = "") -> str:
    lines = [
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
    ]
    lines += [
        f'vllm:num_requests_waiting{{engine="{i}",{M}}} {value}' for i, value in enumerate(values)
    ]
    return "\n".join(lines) + "\n" + extra


def failure_kind(body: str, names: MetricNames = VLLM_METRICS) -> FailureKind:
    result = read_queue(body, names)
    assert isinstance(result, MetricFailure), result
    return result.kind


# --- the documented formats -----------------------------------------------------------


def test_vllm_body_from_engine_docs():
    assert read_queue(VLLM_BODY, VLLM_METRICS) == QueueReading(waiting=0.0, running=2.0)


def test_tgi_body_from_engine_docs():
    assert read_queue(TGI_BODY, TGI_METRICS) == QueueReading(waiting=3.0, running=8.0)


def test_engine_table_names_both_engines():
    assert ENGINES["vllm"].metric_names.queue == "vllm:num_requests_waiting"
    assert ENGINES["tgi"].metric_names.queue == "tgi_queue_size"


def test_vllm_sums_over_engine_series():
    assert read_queue(waiting_body("3.0", "4.0", "0.5"), VLLM_METRICS) == QueueReading(7.5)


def test_queue_of_the_other_engine_is_missing():
    assert failure_kind(VLLM_BODY, TGI_METRICS) is FailureKind.MISSING
    assert failure_kind(TGI_BODY, VLLM_METRICS) is FailureKind.MISSING


def test_running_is_informational():
    no_running = read_queue(waiting_body("2"), VLLM_METRICS)
    assert no_running == QueueReading(waiting=2.0, running=None)
    nan_running = waiting_body("2", extra=f"vllm:num_requests_running{{{M}}} NaN\n")
    assert read_queue(nan_running, VLLM_METRICS) == QueueReading(waiting=2.0, running=None)
    assert read_queue("q 1\n", MetricNames(queue="q")) == QueueReading(1.0, None)


# --- failures, each with its own kind ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("", FailureKind.EMPTY_BODY),
        (" \n\n\t\n", FailureKind.EMPTY_BODY),
        (waiting_body("NaN"), FailureKind.NOT_FINITE),
        (waiting_body("1", "nan"), FailureKind.NOT_FINITE),
        (waiting_body("+Inf"), FailureKind.NOT_FINITE),
        (waiting_body("-Inf"), FailureKind.NOT_FINITE),
        (waiting_body("-1"), FailureKind.NEGATIVE),
        (waiting_body("5", "-0.5"), FailureKind.NEGATIVE),
        ("# HELP vllm:num_requests_waiting x\n# TYPE vllm:num_requests_waiting gauge\n",
         FailureKind.MISSING),
        ("<html><body>502 Bad Gateway</body></html>\n", FailureKind.MISSING),
        (waiting_body("3,0"), FailureKind.MALFORMED),
        (waiting_body("1_000"), FailureKind.MALFORMED),
        (waiting_body("0x10"), FailureKind.MALFORMED),
        (waiting_body(""), FailureKind.MALFORMED),
        (waiting_body("3 notatimestamp"), FailureKind.MALFORMED),
        (waiting_body("3 12 extra"), FailureKind.MALFORMED),
        ('vllm:num_requests_waiting{engine="0" 3\n', FailureKind.MALFORMED),
        ('vllm:num_requests_waiting{engine="0",engine="1"} 3\n', FailureKind.MALFORMED),
        ('vllm:num_requests_waiting{engine="\\t"} 3\n', FailureKind.MALFORMED),
        ('vllm:num_requests_waiting{engine=0} 3\n', FailureKind.MALFORMED),
        ('vllm:num_requests_waiting{,engine="0"} 3\n', FailureKind.MALFORMED),
        ('vllm:num_requests_waiting{0engine="0"} 3\n', FailureKind.MALFORMED),
        ("vllm:num_requests_waiting\n", FailureKind.MALFORMED),
        (waiting_body("1", "2").replace('engine="1"', 'engine="0"'), FailureKind.MALFORMED),
        ("# TYPE vllm:num_requests_waiting counter\nvllm:num_requests_waiting 3\n",
         FailureKind.MALFORMED),
        ("# TYPE vllm:num_requests_waiting histogram\n", FailureKind.MALFORMED),
        ("# TYPE vllm:num_requests_waiting gauge\n" * 2 + "vllm:num_requests_waiting 1\n",
         FailureKind.MALFORMED),
        ("vllm:num_requests_waiting 1\n# TYPE vllm:num_requests_waiting gauge\n",
         FailureKind.MALFORMED),
        ("# TYPE vllm:num_requests_waiting gaug\nvllm:num_requests_waiting 1\n",
         FailureKind.MALFORMED),
        ("# HELP vllm:num_requests_waiting bad \\escape\nvllm:num_requests_waiting 1\n",
         FailureKind.MALFORMED),
        ("# HELP vllm:num_requests_waiting a\n# HELP vllm:num_requests_waiting b\n"
         "vllm:num_requests_waiting 1\n", FailureKind.MALFORMED),
    ],
)  # fmt: skip
def test_unusable_bodies_fail_with_their_kind(body, kind):
    assert failure_kind(body) is kind


def test_malformed_failure_names_the_line():
    body = waiting_body("1") + 'vllm:num_requests_waiting{engine="9"} oops\n'
    result = read_queue(body, VLLM_METRICS)
    assert isinstance(result, MetricFailure)
    assert result.detail.startswith("line 4:"), result.detail
    assert "oops" in result.detail


def test_failure_str_is_reason_and_detail():
    failure = MetricFailure(FailureKind.TIMEOUT, "no answer in 2s")
    assert str(failure) == "Timeout: no answer in 2s"


# --- what the grammar accepts ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("vllm:num_requests_waiting 4", 4.0),
        ("vllm:num_requests_waiting 4 1712345678000", 4.0),
        ("vllm:num_requests_waiting 4 -5", 4.0),
        ("vllm:num_requests_waiting\t4\t1712345678000\t", 4.0),
        ('vllm:num_requests_waiting {engine="0"} 4', 4.0),
        ('vllm:num_requests_waiting{ engine = "0" , model_name="m", } 4', 4.0),
        ("vllm:num_requests_waiting{} 4", 4.0),
        ('vllm:num_requests_waiting{model_name="a\\"} 9\\\\ ,b=\\"c\\"\\n"} 4', 4.0),
        ("vllm:num_requests_waiting 1e+09", 1e9),
        ("vllm:num_requests_waiting 1.2345678e+07", 12345678.0),
        ("vllm:num_requests_waiting .5", 0.5),
        ("vllm:num_requests_waiting 5.", 5.0),
        ("vllm:num_requests_waiting +3", 3.0),
        ("vllm:num_requests_waiting -0.0", 0.0),
        ("vllm:num_requests_waiting 4\r", 4.0),
    ],
)
def test_accepted_sample_lines(line, expected):
    assert read_queue(line + "\n", VLLM_METRICS) == QueueReading(expected)


def test_label_value_escapes_are_decoded():
    sample = parse_exposition('m{a="x\\"y\\\\z\\nw",b="}"} 1\n').samples[0]
    assert sample.labels == (("a", 'x"y\\z\nw'), ("b", "}"))
    assert sample.label("b") == "}"
    assert sample.label("c") is None


def test_other_names_and_comments_are_not_the_queue():
    body = (
        "# vllm:num_requests_waiting 99 (a comment)\n"
        "#HELPvllm:num_requests_waiting x\n"
        "# HELP\n"
        "vllm:num_requests_waiting_total 99\n"
        "vllm:num_requests_waiting:x 99\n"
        "xvllm:num_requests_waiting 99\n"
        "vllm:num_requests_waiting 2\n"
    )
    assert read_queue(body, VLLM_METRICS) == QueueReading(2.0)


def test_newer_vllm_waiting_by_reason_is_not_summed_in():
    # vLLM 0.11+ also exports the queue split by reason under a longer name.
    body = waiting_body("4") + (
        "# TYPE vllm:num_requests_waiting_by_reason gauge\n"
        f'vllm:num_requests_waiting_by_reason{{engine="0",{M},reason="capacity"}} 3.0\n'
        f'vllm:num_requests_waiting_by_reason{{engine="0",{M},reason="deferred"}} 1.0\n'
    )
    assert read_queue(body, VLLM_METRICS) == QueueReading(4.0)


def test_metric_name_is_not_a_regex():
    # "." in a name would match any character if the name were used as a pattern.
    assert failure_kind("aXb 1\n", MetricNames(queue="a.b")) is FailureKind.MISSING


def test_unrelated_malformed_family_does_not_block_the_queue():
    # Deliberate: only the families the autoscaler reads are validated on the fast path;
    # the full parser still reports the bad line.
    body = waiting_body("2") + "vllm:e2e_request_latency_seconds_bucket{le=0.3} 1\n"
    assert read_queue(body, VLLM_METRICS) == QueueReading(2.0)
    with pytest.raises(ParseError) as info:
        parse_exposition(body)
    assert info.value.line_no == 4


@pytest.mark.parametrize(
    "body",
    [
        "m 1\nm 2\n",
        "# TYPE m gauge\n# TYPE m gauge\n",
        "m 1\n# TYPE m gauge\n",
        "# TYPE m info\n",
        "# TYPE m gauge extra\n",
        "# HELP m a\n# HELP m b\n",
        "# HELP m{x} a\n",
        "# HELP \n",
        " m 1\n",
        'm{a="1"} 1 1.5\n',
        "m 1 99999999999999999999\n",
        "1m 1\n",
        "m 0x1p3\n",
        "m infinity_\n",
    ],
)
def test_full_parser_rejects(body):
    with pytest.raises(ParseError):
        parse_exposition(body)


def test_full_parser_keeps_types_help_and_timestamps():
    parsed = parse_exposition(VLLM_BODY + "x 1 -42\n# EOF\n")
    assert parsed.types["vllm:num_requests_waiting"] == "gauge"
    assert parsed.help["vllm:kv_cache_usage_perc"] == "KV-cache usage. 1 means 100 percent usage."
    assert parsed.values("vllm:kv_cache_usage_perc") == [0.0123]
    assert parsed.samples[-1] == Sample("x", (), 1.0, -42)


def test_help_escapes():
    parsed = parse_exposition("# HELP m a\\nb \\\\ c\n# HELP n\n")
    assert parsed.help == {"m": "a\nb \\ c", "n": ""}


# --- properties ---------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
DIGITS = "0123456789"


def identifiers(first: str, rest: str, max_size: int) -> st.SearchStrategy[str]:
    return st.builds(str.__add__, st.sampled_from(first), st.text(alphabet=rest, max_size=max_size))


metric_names = identifiers(LETTERS + ":", LETTERS + DIGITS + ":", 20)
label_names = identifiers(LETTERS, LETTERS + DIGITS, 10)
label_values = st.text(max_size=20)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**6), max_value=10**6).map(float),
)
timestamps = st.one_of(st.none(), st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))


def render_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def samples(draw: st.DrawFn) -> Sample:
    labels = draw(st.dictionaries(label_names, label_values, max_size=4))
    return Sample(draw(metric_names), tuple(labels.items()), draw(values), draw(timestamps))


def render(sample: Sample) -> str:
    labels = ",".join(f'{k}="{escape(v)}"' for k, v in sample.labels)
    ts = "" if sample.timestamp_ms is None else f" {sample.timestamp_ms}"
    return f"{sample.name}{{{labels}}} {render_value(sample.value)}{ts}"


def same(a: Sample, b: Sample) -> bool:
    both_nan = math.isnan(a.value) and math.isnan(b.value)
    return (a.name, a.labels, a.timestamp_ms) == (b.name, b.labels, b.timestamp_ms) and (
        both_nan or a.value == b.value
    )


def unique_series(items: list[Sample]) -> list[Sample]:
    seen: dict[tuple[str, frozenset[tuple[str, str]]], Sample] = {}
    for s in items:
        seen.setdefault((s.name, frozenset(s.labels)), s)
    return list(seen.values())


@settings(deadline=None)  # shared 2-core machines: no per-example deadline
@given(st.lists(samples(), max_size=15).map(unique_series))
def test_rendered_samples_parse_back(items):
    parsed = parse_exposition("\n".join(render(s) for s in items) + "\n")
    assert len(parsed.samples) == len(items)
    assert all(same(a, b) for a, b in zip(parsed.samples, items, strict=True))


@settings(deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_raises_parse_error(text):
    try:
        parse_exposition(text)
    except ParseError as exc:
        assert exc.line_no >= 1


@settings(deadline=None)
@given(st.text(alphabet=st.sampled_from('vlm:_qeu{}"=,\\ \t\n#0123456789.+-eNaIf'), max_size=200))
def test_read_queue_never_raises(text):
    result = read_queue(text, VLLM_METRICS)
    assert isinstance(result, QueueReading | MetricFailure)
    if isinstance(result, QueueReading):
        assert math.isfinite(result.waiting) and result.waiting >= 0


@settings(deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=6),
    st.lists(samples(), max_size=8).map(unique_series),
)
def test_fast_path_agrees_with_full_parse(queue_values, noise):
    # Other families around the queue gauge do not change what read_queue finds.
    noise = [s for s in noise if not s.name.startswith("vllm:num_requests_")]
    queue = [
        Sample("vllm:num_requests_waiting", (("engine", str(i)),), v)
        for i, v in enumerate(queue_values)
    ]
    lines = [render(s) for s in noise[:4] + queue + noise[4:]]
    body = "\n".join(lines) + "\n"
    result = read_queue(body, VLLM_METRICS)
    assert isinstance(result, QueueReading)
    expected = math.fsum(parse_exposition(body).values("vllm:num_requests_waiting"))
    assert result.waiting == expected
