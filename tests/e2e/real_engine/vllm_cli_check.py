"""Check an engine container's command line with vLLM's own parser and config checks.

Run with the vLLM environment's python:

    $VENV/bin/python tests/e2e/real_engine/vllm_cli_check.py [--parse-only] CONTAINER.json
    $VENV/bin/python tests/e2e/real_engine/vllm_cli_check.py --serve

CONTAINER.json holds {"command": [...], "args": [...]} as rendered into the Kubernetes
container. Two shapes are understood:

- `vllm serve MODEL --flag ...` (command ["vllm", "serve"]): vLLM's CLI `main()`
  (vllm.entrypoints.cli.main) runs on argv ["vllm", "serve", *args], so the argument
  list goes through exactly the parser and checks `vllm serve` uses: the top-level
  FlexibleArgumentParser (which rewrites `--model X` into the positional), the serve
  subparser built by make_arg_parser, and ServeSubcommand.validate. Only the last step,
  starting the server, is replaced: the parsed namespace is captured instead.
- `python3 -m vllm.entrypoints.openai.api_server --model X ...` (the older rendering):
  that module's own parser (FlexibleArgumentParser + make_arg_parser, as
  vllm.entrypoints.launchers.api_server.entry.main builds it) and
  validate_parsed_serve_args.

Then, as the server does before it loads weights, AsyncEngineArgs.from_cli_args and
create_model_config: this reads the model's config.json (so the model path must exist
here: pass a local tiny model) and checks --quantization, --max-model-len, dtype and
the rest against vLLM's own rules. No GPU, no weights loaded, no server started.
With --parse-only it stops after parsing (for models that are not on this machine:
a repo id would otherwise be looked up on the Hugging Face Hub).

With --serve it checks one command line per request instead, importing vLLM once
(about 8 s of the ~9 s a check takes here): each line on stdin is a JSON request
{"container": {...}, "parse_only": bool, "workdir": DIR}; a child forked for it (so
every check starts from the same state, the one just after the import) runs in DIR,
writes its report to DIR/report.json and vLLM's logs to DIR/stderr.log, and the server
answers with the line {"exit": <the child's exit code>}. EOF on stdin ends it.

Prints one JSON object on stdout (vLLM's logs go to stderr):
{"parsed", "error", "model", "served_model_name", "max_model_len", "quantization",
 "tensor_parallel_size", "pipeline_parallel_size", "nnodes", "node_rank", "master_addr",
 "headless", "runner", "convert", "model_config_ok", "model_config_error",
 "known_quantizations", "shape", "resolved"}. `served_model_name` is vLLM's parsed
value, a list (the flag takes one or more names). Exit 0 whenever it could report,
including for a refused list; exit 2 when the input file itself is unusable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

OLD_MODULE = "vllm.entrypoints.openai.api_server"


class ParseRefused(Exception):
    """argparse's error(): the message it would print before exiting 2."""


class Captured(Exception):
    """Raised in place of starting the server, carrying the parsed namespace."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("captured")
        self.namespace = namespace


def _refuse(self: argparse.ArgumentParser, message: str) -> None:
    self.print_usage(sys.stderr)
    print(f"{self.prog}: error: {message}", file=sys.stderr)
    raise ParseRefused(message)


def shape_of(command: list[str], args: list[str]) -> tuple[str, list[str]]:
    """('serve' | 'api_server', the argv after the program) or ValueError."""
    argv = [*command, *args]
    if argv and os.path.basename(argv[0]) == "vllm":
        return "serve", argv[1:]
    python = len(argv) >= 3 and os.path.basename(argv[0]).startswith("python")
    if python and argv[1:3] == ["-m", OLD_MODULE]:
        return "api_server", argv[3:]
    raise ValueError(f"not a vLLM server command line: {argv[:3]}")


def parse_serve(cli_argv: list[str]) -> argparse.Namespace:
    """vLLM's own `vllm ...` main(), stopped where it would start the server."""
    import vllm.entrypoints.cli.main as cli_main
    import vllm.entrypoints.cli.serve as serve

    def capture(args: argparse.Namespace) -> None:
        raise Captured(args)

    original = serve.ServeSubcommand.cmd
    serve.ServeSubcommand.cmd = staticmethod(capture)
    saved_argv = sys.argv
    sys.argv = ["vllm", *cli_argv]
    try:
        cli_main.main()
    except Captured as c:
        args = c.namespace
    else:
        raise ParseRefused("vllm did not reach the serve command (help printed?)")
    finally:
        sys.argv = saved_argv
        serve.ServeSubcommand.cmd = original
    if args.subparser != "serve":
        raise ParseRefused(f"parsed as `vllm {args.subparser}`, not `vllm serve`")
    # The first thing ServeSubcommand.cmd does: the positional model wins.
    if getattr(args, "model_tag", None) is not None:
        args.model = args.model_tag
    return args


def parse_api_server(argv: list[str]) -> argparse.Namespace:
    """The parser of `python -m vllm.entrypoints.openai.api_server` (deprecated path)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    parser = FlexibleArgumentParser(description="vLLM OpenAI-Compatible RESTful API server.")
    parser.prog = "api_server.py"
    parser = make_arg_parser(parser)
    args: argparse.Namespace = parser.parse_args(argv)
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    return args


def known_quantizations() -> list[str]:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    return list(QUANTIZATION_METHODS)


def check(container: dict[str, Any], parse_only: bool = False) -> dict[str, Any]:
    report: dict[str, Any] = {
        "parsed": False,
        "error": None,
        "model": None,
        "served_model_name": None,
        "max_model_len": None,
        "quantization": None,
        "tensor_parallel_size": None,
        # The multi-node launch (a LeaderWorkerSet group's pods).
        "pipeline_parallel_size": None,
        "nnodes": None,
        "node_rank": None,
        "master_addr": None,
        "headless": None,
        # A pooling model (spec.task embed, rerank): --runner and --convert as parsed.
        "runner": None,
        "convert": None,
        "model_config_ok": False,
        "model_config_error": None,
        "known_quantizations": [],
        "shape": None,
        "resolved": None,
    }
    command = [str(a) for a in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    argparse.ArgumentParser.error = _refuse  # type: ignore[method-assign,assignment]
    try:
        shape, argv = shape_of(command, args)
        report["shape"] = shape
        report["known_quantizations"] = known_quantizations()
        ns = parse_serve(argv) if shape == "serve" else parse_api_server(argv)
    except ParseRefused as e:
        report["error"] = str(e)
        return report
    except SystemExit as e:  # --help, --version, or a parser exit not through error()
        report["error"] = f"the parser exited with code {e.code}"
        return report
    except Exception as e:  # FlexibleArgumentParser and validate raise plain exceptions
        traceback.print_exc(file=sys.stderr)
        report["error"] = f"{type(e).__name__}: {e}"
        return report
    report.update(
        parsed=True,
        model=ns.model,
        served_model_name=ns.served_model_name,
        max_model_len=ns.max_model_len,
        quantization=ns.quantization,
        tensor_parallel_size=ns.tensor_parallel_size,
        pipeline_parallel_size=getattr(ns, "pipeline_parallel_size", None),
        nnodes=getattr(ns, "nnodes", None),
        node_rank=getattr(ns, "node_rank", None),
        master_addr=getattr(ns, "master_addr", None),
        headless=getattr(ns, "headless", None),
        runner=getattr(ns, "runner", None),
        convert=getattr(ns, "convert", None),
    )
    if parse_only:
        report["model_config_error"] = "not checked (--parse-only)"
        return report
    try:
        from vllm import AsyncEngineArgs

        model_config = AsyncEngineArgs.from_cli_args(ns).create_model_config()
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        report["model_config_error"] = f"{type(e).__name__}: {e}"
        return report
    report["model_config_ok"] = True
    report["resolved"] = {
        "served_model_name": model_config.served_model_name,
        "max_model_len": model_config.max_model_len,
        "quantization": model_config.quantization,
        "dtype": str(model_config.dtype),
        "architectures": list(model_config.architectures or []),
        "runner_type": getattr(model_config, "runner_type", None),
        "convert_type": getattr(model_config, "convert_type", None),
    }
    return report


def preload() -> None:
    """What every check imports, imported once by the server before it forks."""
    import vllm.entrypoints.cli.main
    import vllm.entrypoints.cli.serve  # noqa: F401
    from vllm import AsyncEngineArgs  # noqa: F401

    known_quantizations()


def serve_checks(requests: TextIO, answers: TextIO) -> int:
    """The --serve loop: one forked check per request line, answered when it ended."""
    preload()
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        workdir = Path(request["workdir"])
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.chdir(workdir)
                log = os.open(workdir / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(log, 1)
                os.dup2(log, 2)
                report = check(request["container"], parse_only=bool(request["parse_only"]))
                (workdir / "report.json").write_text(json.dumps(report, default=str))
                code = 0
            except BaseException:
                traceback.print_exc(file=sys.stderr)
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()
    return 0


def main(argv: list[str]) -> int:
    # vLLM logs to stdout by default; the JSON report alone goes to the real stdout.
    report_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if argv[1:] == ["--serve"]:
        return serve_checks(sys.stdin, report_out)
    parse_only = "--parse-only" in argv[1:]
    files = [a for a in argv[1:] if a != "--parse-only"]
    if len(files) != 1:
        print(f"usage: {argv[0]} [--parse-only] CONTAINER.json | --serve", file=sys.stderr)
        return 2
    try:
        container = json.loads(Path(files[0]).read_text())
    except (OSError, ValueError) as e:
        print(f"{files[0]}: cannot read the container JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(container, dict):
        print(f"{files[0]}: expected a JSON object with command and args", file=sys.stderr)
        return 2
    report = check(container, parse_only=parse_only)
    json.dump(report, report_out, default=str)
    report_out.write("\n")
    report_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
