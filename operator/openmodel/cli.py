"""`openmodel`: the operator's own code, on the command line.

- `openmodel render -f md.yaml` prints the objects the operator would apply (GitOps review, CI).
- `openmodel validate -f md.yaml` runs the API server's checks (the CRD's schema, unknown
  fields refused as `kubectl apply --validate=strict` does) and every check the operator
  runs; exit 1 on a problem.
- `openmodel size MODEL --gpu TYPE [--quantization Q]` prints the memory estimate and
  the GPU counts that work.
- `openmodel apikey create --namespace NS --service-account SA NAME` creates an APIKey
  (with your kubeconfig: RBAC on `apikeys` decides who may) carrying SA's rights at the
  gateway, and prints the key, once; only its digest is stored (docs/security.md).
- `openmodel cost [--metrics-url URL | --prometheus URL --since 30d] [--compare-api IN OUT]`
  prints GPU-hours, tokens and cost per ModelDeployment and namespace, and against a
  paid API priced IN and OUT per million tokens, the monthly volume where the two meet
  (docs/cost.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml
from kubernetes.client.exceptions import ApiException

from openmodel.api import DEFAULT_ENGINE, TASK_GENERATE, TASKS, SpecError, check_type_meta
from openmodel.api_schema import SchemaProblem, check_object
from openmodel.config import ConfigError, PlatformConfig, load_config
from openmodel.engines import ENGINES, engine_for, parse_model_deployment, parse_spec
from openmodel.engines.base import quantization_value
from openmodel.gateway.auth.api_keys import API_KEY_PLURAL, API_KEY_VERSION, api_key_object, new_key
from openmodel.kube import calls as kube
from openmodel.model_resolver.state import ModelConfigState
from openmodel.reconcile.plan import Plan, make_plan

EXIT_INVALID = 1
EXIT_USAGE = 2


class InputError(Exception):
    """A file that cannot be read as ModelDeployments; the message says where."""


def read_documents(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file: document N`, body) for each non-empty YAML document; '-' is stdin."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML: {e}") from None
    found = False
    for i, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise InputError(f"{path}: document {i}: expected a mapping, got {type(doc).__name__}")
        found = True
        yield f"{path}: document {i}", doc
    if not found:
        raise InputError(f"{path}: no YAML documents found")


def plan_document(body: dict[str, Any], config: PlatformConfig, online: bool = True) -> Plan:
    """The operator's plan; the model's config.json is read first (from the Hub when an
    endpoint is configured and `online`), as the operator's resolver would."""
    from openmodel.model_resolver.cli_support import resolve_for_spec

    md = parse_model_deployment(body)
    annotations = (body.get("metadata") or {}).get("annotations")
    state: ModelConfigState | None = (
        resolve_for_spec(md.spec, annotations, config) if online else None
    )
    return make_plan(md, config, current_replicas=None, annotations=annotations, model_config=state)


def schema_refusals(where: str, body: dict[str, Any]) -> list[str]:
    """What the API server would refuse before the operator sees the object, one line each."""
    try:
        # Another kind's fields are not a ModelDeployment's unknown fields.
        check_type_meta(body)
    except SpecError as e:
        return [f"{where}: {e.field}: {e.message} ({e.reason})"]
    problems: list[SchemaProblem] = check_object(body)
    return [f"{where}: {p.field}: {p.message} ({p.reason})" for p in problems]


def cmd_render(args: argparse.Namespace, config: PlatformConfig, out: TextIO) -> int:
    objects: list[dict[str, Any]] = []
    for where, body in read_documents(args.file):
        refusals = schema_refusals(where, body)
        if refusals:
            print("\n".join(refusals), file=sys.stderr)
            return EXIT_INVALID
        try:
            objects.extend(plan_document(body, config).children.all())
        except SpecError as e:
            print(f"{where}: {e.field}: {e.message} ({e.reason})", file=sys.stderr)
            return EXIT_INVALID
    yaml.safe_dump_all(objects, out, sort_keys=False)
    return 0


def cmd_validate(args: argparse.Namespace, config: PlatformConfig, out: TextIO) -> int:
    status = 0
    for where, body in read_documents(args.file):
        refusals = schema_refusals(where, body)
        if refusals:
            print("\n".join(refusals), file=out)
            status = EXIT_INVALID
            continue
        try:
            plan = plan_document(body, config)
        except SpecError as e:
            print(f"{where}: {e.field}: {e.message} ({e.reason})", file=out)
            status = EXIT_INVALID
            continue
        name = (body.get("metadata") or {}).get("name")
        sizing = plan.gpu.estimate
        if sizing is None:
            # Valid as far as the operator can judge, but nobody checked the memory.
            note = (
                "NOT sized: the model's size is unknown (not in the catalogue, config.json "
                "not read, no spec.modelInfo), so GPU memory was not checked"
            )
        elif "memoryRequest" in sizing:
            # gpu.type cpu: no GPU budget, the pod's own requests.
            print(
                f"{where}: {name}: valid (CPU only; requests cpu {sizing['cpuRequest']}, "
                f"memory {sizing['memoryRequest']}: {sizing['totalGiB']} GiB)",
                file=out,
            )
            continue
        else:
            note = f"fits: {sizing['totalGiBPerGPU']} of {sizing['budgetGiBPerGPU']} GiB per GPU"
        per_replica = (
            f"{plan.gpu.count} GPU(s) per replica"
            if plan.gpu.nodes == 1
            else f"{plan.gpu.nodes} pods x {plan.gpu.count} GPU(s) per replica, each pod on "
            "its own node"
        )
        task = "" if plan.task == TASK_GENERATE else f"task {plan.task}; "
        print(f"{where}: {name}: valid ({task}{per_replica}; {note})", file=out)
    return status


def _size_on_cpu(args: argparse.Namespace, out: TextIO) -> int:
    """`--gpu cpu`: the pod requests of the engine that runs on CPU, for the GGUF file the
    name announces (a repo id or a file name; the type from it, Q4_K_M when it names none)."""
    from openmodel.sizing.cpu import estimate_cpu

    raw: dict[str, Any] = {
        "model": f"pvc://cli/{args.model.rstrip('/').rsplit('/', 1)[-1]}",
        "engine": next(name for name, engine in ENGINES.items() if engine.runs_on_cpu),
        "gpu": {"type": "cpu"},
    }
    if args.max_model_len is not None:
        raw["maxModelLen"] = args.max_model_len
    try:
        estimate = estimate_cpu(parse_spec(raw))
    except SpecError as e:
        print(f"{e.field}: {e.message} ({e.reason})", file=sys.stderr)
        return EXIT_INVALID
    print(estimate.summary(), file=out)
    return 0


def cmd_size(args: argparse.Namespace, config: PlatformConfig, out: TextIO) -> int:
    from openmodel.model_resolver.cli_support import checkpoint_for_cli
    from openmodel.reconcile.sizing_bridge import size_report_text

    accelerator = config.accelerators.get(args.gpu)
    if accelerator is not None and accelerator.cpu_only:
        return _size_on_cpu(args, out)
    try:
        # What `validate` would refuse is not sized as if it could run.
        quantization_value(engine_for(args.engine), args.quantization)
        checkpoint, source = checkpoint_for_cli(args.model, config, args.offline)
        if source:
            print(source, file=out)
        out.write(
            size_report_text(
                args.model,
                args.gpu,
                args.quantization,
                config,
                max_model_len=args.max_model_len,
                engine=args.engine,
                checkpoint=checkpoint,
                task=args.task,
            )
        )
    except SpecError as e:
        print(f"{e.field}: {e.message} ({e.reason})", file=sys.stderr)
        return EXIT_INVALID
    return 0


def cmd_apikey(args: argparse.Namespace, _: PlatformConfig, out: TextIO) -> int:
    api = kube.make_api_client(args.kubeconfig)
    ns, account = args.namespace, args.service_account
    try:
        found = kube.call(api, "GET", f"/api/v1/namespaces/{ns}/serviceaccounts/{account}")
    except ApiException as e:
        print(f"openmodel: ServiceAccount {ns}/{account}: HTTP {e.status} {e.reason}",
              file=sys.stderr)  # fmt: skip
        return EXIT_INVALID
    key_id, key, digest = new_key()
    body = api_key_object(ns, args.name, account, found["metadata"]["uid"], key_id, digest)
    path = f"/apis/openmodel.dev/{API_KEY_VERSION}/namespaces/{ns}/{API_KEY_PLURAL}"
    try:
        kube.call(api, "POST", path, body=body)
    except ApiException as e:
        print(f"openmodel: creating APIKey {ns}/{args.name}: HTTP {e.status} {e.reason}",
              file=sys.stderr)  # fmt: skip
        return EXIT_INVALID
    print(
        f"APIKey {ns}/{args.name} created, carrying the rights of ServiceAccount {account}. "
        "The key is shown once, store it now (send it as `Authorization: Bearer <key>`, "
        "or as the OpenAI SDK's api_key):",
        file=sys.stderr,
    )
    print(key, file=out)
    return 0


_PERIOD_HOURS = {"m": 1 / 60, "h": 1.0, "d": 24.0, "w": 168.0}


def _period_hours(period: str) -> float:
    number, unit = period[:-1], period[-1:]
    if unit not in _PERIOD_HOURS or not number.isdigit() or int(number) == 0:
        raise ValueError(
            f"--since must be a number and one of m, h, d, w (e.g. 30d), got {period!r}"
        )
    return int(number) * _PERIOD_HOURS[unit]


def _get(url: str, timeout: float = 10.0) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def _prometheus_query(base: str) -> Callable[[str], list[tuple[dict[str, str], float]]]:
    import json
    import urllib.parse

    def query(promql: str) -> list[tuple[dict[str, str], float]]:
        url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        answer = json.loads(_get(url))
        if answer.get("status") != "success":
            raise ValueError(f"Prometheus refused {promql!r}: {answer.get('error')}")
        return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]

    return query


def cmd_cost(args: argparse.Namespace, config: PlatformConfig, out: TextIO) -> int:
    from openmodel.metering import report

    try:
        if args.prometheus:
            hours = _period_hours(args.since)
            usages = report.usage_from_prometheus(
                _prometheus_query(args.prometheus), args.since, hours
            )
            source = f"{args.prometheus}, the last {args.since}"
        else:
            usages = report.usage_from_exposition(_get(args.metrics_url).decode())
            source = f"{args.metrics_url}, since metering began"
    except (OSError, ValueError, KeyError) as e:
        print(f"openmodel cost: {e}", file=sys.stderr)
        return EXIT_INVALID
    api = None if args.compare_api is None else report.ApiPrices(*args.compare_api)
    seen = {a for u in usages.values() for a in u.accelerators}
    unpriced = [a for a in seen if config.cost.gpu_hour_price(a) is None]
    print(f"# {source}", file=out)
    for line in report.report_lines(usages, config.cost.currency, api, unpriced):
        print(line, file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openmodel", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", help="platform config YAML (default: $OPENMODEL_CONFIG or built-ins)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="print the objects the operator would apply")
    render.add_argument("-f", "--file", required=True, help="ModelDeployment YAML ('-' = stdin)")
    validate = sub.add_parser("validate", help="run every check the operator runs")
    validate.add_argument("-f", "--file", required=True, help="ModelDeployment YAML ('-' = stdin)")
    size = sub.add_parser("size", help="memory estimate and the GPU counts that fit")
    size.add_argument(
        "model",
        help="Hugging Face repo id (its config.json is read when HF_ENDPOINT or "
        "modelResolver.endpoint is set), a local model directory, or a config.json path",
    )
    size.add_argument(
        "--offline", action="store_true", help="never ask the Hub; the catalogue only"
    )
    size.add_argument("--gpu", required=True, help="accelerator name, e.g. nvidia-h100-80gb")
    size.add_argument("--quantization", default="none")
    size.add_argument("--max-model-len", type=int, default=None)
    size.add_argument("--engine", default=DEFAULT_ENGINE, choices=list(ENGINES))
    size.add_argument(
        "--task",
        default=None,
        choices=list(TASKS),
        help="as spec.task (default: the checkpoint's, else generate); embed and rerank "
        "are sized as pooling models",
    )
    apikey = sub.add_parser("apikey", help="API keys for the gateway")
    apikey_sub = apikey.add_subparsers(dest="apikey_command", required=True)
    create = apikey_sub.add_parser("create", help="create an API key and print it once")
    create.add_argument("name", help="the APIKey object's name")
    create.add_argument("--namespace", "-n", required=True)
    create.add_argument(
        "--service-account", required=True, help="the ServiceAccount (of NAMESPACE) it acts as"
    )
    create.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG or ~/.kube")
    cost = sub.add_parser("cost", help="GPU-hours, tokens and cost per ModelDeployment")
    cost.add_argument(
        "--metrics-url",
        default="http://localhost:9090/metrics",
        help="the operator's metrics (the leader's; e.g. through kubectl port-forward): "
        "totals since metering began",
    )
    cost.add_argument("--prometheus", help="a Prometheus scraping the operator: use --since")
    cost.add_argument("--since", default="30d", help="the period, with --prometheus (30d, 12h)")
    cost.add_argument(
        "--compare-api",
        nargs=2,
        type=float,
        metavar=("PRICE_IN", "PRICE_OUT"),
        help="a paid API's prices per million prompt and generated tokens",
    )
    return parser


COMMANDS = {
    "render": cmd_render,
    "validate": cmd_validate,
    "size": cmd_size,
    "apikey": cmd_apikey,
    "cost": cmd_cost,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        return COMMANDS[args.command](args, config, out or sys.stdout)
    except (InputError, ConfigError) as e:
        print(f"openmodel: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
