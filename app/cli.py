"""`hearth` on the command line: thin calls into the same runtime services the studio uses."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from app import __version__

DESCRIPTION = """Hearth: a desktop studio for local large language models.

Run `hearth` with no arguments to open the studio window."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hearth", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hearth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    chat = sub.add_parser("chat", help="chat with a model: one answer for a prompt, or an interactive session without one")
    chat.add_argument("prompt", nargs="?", help="the question; omit it for an interactive session (type /exit to leave)")
    chat.add_argument("--model", help="library id, name or path of a GGUF file (default: the embedded model)")
    chat.add_argument("--backend", default="auto", help="auto, llama.cpp or torch (torch runs a GGUF dequantized; default: auto)")
    chat.add_argument("--system", help="a system prompt")
    chat.add_argument("--temperature", type=float, help="randomness; 0 is greedy (default 0.7)")
    chat.add_argument("--top-p", type=float, help="nucleus sampling threshold (default 0.95)")
    chat.add_argument("--top-k", type=int, help="sample from the k most likely tokens; 0 = all (default 40)")
    chat.add_argument("--min-p", type=float, help="drop tokens below this fraction of the best one (default 0.05)")
    chat.add_argument("--repeat-penalty", type=float, help="penalty for repeating recent tokens (default 1.1)")
    chat.add_argument("--max-tokens", type=int, help="longest answer in tokens (default 512)")
    chat.add_argument("--seed", type=int, help="random seed, for repeatable answers")
    chat.add_argument("--stop", action="append", help="stop when this text appears (repeatable)")
    chat.add_argument("--ctx", type=int, help="context length to load the model with (default: chosen by the planner)")
    chat.add_argument("--threads", type=int, help="CPU threads (default: one per physical core)")
    chat.add_argument("--gpu-layers", type=int, help="layers on the GPU, as llama.cpp counts them; -1 = all (default: planned)")
    chat.add_argument("--stats", action="store_true", help="print tokens, tokens/s and time to first token to stderr")

    plan = sub.add_parser("plan", help="show how Hearth would run a model on this machine (or another), and why")
    plan.add_argument("model", nargs="?", help="library id, name or GGUF path (default: the embedded model)")
    plan.add_argument("--hardware", metavar="PROFILE", help="plan for a named profile or a JSON file instead of this machine: " + ", ".join(_profile_names()))
    plan.add_argument("--ctx", type=int, help="the context length you want")
    plan.add_argument("--gpu-layers", type=int, help="pin the number of GPU layers")
    plan.add_argument("--kv-type", help="pin the KV cache type (f16, q8_0, ...)")
    plan.add_argument("--json", action="store_true", help="print the whole plan as JSON")

    models = sub.add_parser("models", help="the model library and the Hugging Face Hub: ls, search, files, pull, rm")
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    msub.add_parser("ls", help="list the models in the library (the default)")
    search = msub.add_parser("search", help="search the Hub for GGUF models")
    search.add_argument("query")
    search.add_argument("--sort", choices=("downloads", "likes", "updated"), default="downloads")
    search.add_argument("--limit", type=int, default=20)
    files = msub.add_parser("files", help="a Hub repository's variants with their sizes and fit on this machine")
    files.add_argument("repo", help="owner/name on the Hub")
    pull = msub.add_parser("pull", help="download a model into the library (Ctrl-C pauses; pull again to resume)")
    pull.add_argument("repo", help="owner/name on the Hub")
    pull.add_argument("file", nargs="?", help="the file (default: the variant recommended for this machine)")
    rm = msub.add_parser("rm", help="delete a model file from the library")
    rm.add_argument("name", help="library id, name or path")
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    sub.add_parser("hardware", help="print the detected hardware as JSON")

    quantize = sub.add_parser("quantize", help="quantize a model (GGUF types through llama.cpp, torch int8/int4) and measure the results")
    quantize.add_argument("model", help="library id, name, GGUF path or Hugging Face folder")
    quantize.add_argument("--to", required=True, help="comma-separated targets, e.g. Q4_K_M,Q8_0 or int8 (`--to list` shows them all)")
    quantize.add_argument("--eval", action="store_true", help="measure perplexity, KL divergence and speed of each result against the source")
    quantize.add_argument("--eval-tokens", type=int, help="held-out tokens to score (default 2048)")
    quantize.add_argument("--imatrix", help="an importance matrix file from llama-imatrix (GGUF format)")
    quantize.add_argument("--output", help="folder for the results (default: the library's models folder)")
    quantize.add_argument("--json", action="store_true", help="print the whole report as JSON")

    finetune = sub.add_parser("finetune", help="teach a model from your data with LoRA (settings chosen for this machine; every one can be set)")
    _finetune_arguments(finetune)

    serve = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API (Ctrl-C stops)")
    serve.add_argument("--host", help="address to listen on (default from settings: 127.0.0.1); any other needs --api-key")
    serve.add_argument("--port", type=int, help="TCP port (default from settings: 8080; 0 picks a free one)")
    serve.add_argument("--model", help="library id, name or path to load at start (default: loaded on the first request)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default from settings; env HEARTH_API_KEY)")
    serve.add_argument("--cors-origin", dest="cors_origins", action="append", help="allow browser requests from this origin (repeatable; default: none)")
    serve.add_argument("--queue-limit", type=int, help="requests waiting or running before 429 (default from settings: 16)")
    serve.add_argument("--max-tokens", type=int, help="the most tokens a request may ask for (default from settings: 4096)")

    bench = sub.add_parser("bench", help="measure the figures in the README and write them as JSON")
    bench.add_argument(
        "suite", nargs="?", default="runtime", choices=tuple(BENCH_SUITES),
        help="runtime: the chat engine (default); kv: KV-cache policies and torch decode; kernels: the bundled kernels",
    )
    bench.add_argument("--json", dest="json_path", metavar="PATH", help="write the JSON here as well as to stdout")
    bench.add_argument("--runs", type=int, default=5, help="alternating runs per side (default 5)")
    bench.add_argument("--tokens", type=int, default=128, help="tokens to decode per run (default 128)")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    if args.command is None:
        parser.print_help()
        return 0
    from app.runtime.protocol import RuntimeFailure

    try:
        return COMMANDS[args.command](args)
    except RuntimeFailure as exc:
        print(f"hearth: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _client():  # type: ignore[no-untyped-def]
    from app.runtime.client import InProcessClient

    return InProcessClient()


def cmd_chat(args: argparse.Namespace) -> int:
    sampling = {
        key: value
        for key, value in {
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "min_p": args.min_p,
            "repeat_penalty": args.repeat_penalty,
            "max_tokens": args.max_tokens,
            "seed": args.seed,
            "stop": args.stop,
        }.items()
        if value is not None
    }
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    client = _client()
    try:
        prefs = {"context_length": args.ctx, "threads": args.threads, "gpu_layers": args.gpu_layers}
        if any(v is not None for v in prefs.values()) or args.model is not None:
            client.call("engine.load", {"model": args.model, "prefs": prefs})
        if args.prompt is not None:
            messages.append({"role": "user", "content": args.prompt})
            _answer(client, messages, args, sampling)
            return 0
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line or line.strip() in ("/exit", "/quit"):
                return 0
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line.rstrip("\n")})
            reply = _answer(client, messages, args, sampling)
            messages.append({"role": "assistant", "content": reply})
    finally:
        client.close()


def _answer(client: Any, messages: list[dict[str, str]], args: argparse.Namespace, sampling: dict[str, Any]) -> str:
    params = {"messages": messages, "model": args.model, "backend": args.backend, "sampling": sampling}
    result: dict[str, Any] = {}
    for event in client.stream("chat", params):
        if event.event.value == "token":
            sys.stdout.write(event.data["text"])
            sys.stdout.flush()
        elif event.event.value == "result":
            result = event.data
    sys.stdout.write("\n")
    sys.stdout.flush()
    if args.stats:
        usage, timings = result.get("usage", {}), result.get("timings", {})
        print(
            f"[{usage.get('completion_tokens')} tokens · {timings.get('decode_tps')} tok/s · first token {timings.get('ttft_ms')} ms · {result.get('finish_reason')}]",
            file=sys.stderr,
        )
    return str(result.get("text", ""))


def _profile_names() -> list[str]:
    from app.runtime.planner.profiles import profile_names

    return profile_names()


def cmd_plan(args: argparse.Namespace) -> int:
    from app.runtime.services import Services

    asked = {"context_length": args.ctx, "gpu_layers": args.gpu_layers, "kv_type": args.kv_type}
    made = Services(warm_up=False).engine.plan({"model": args.model, "prefs": asked, "hardware": args.hardware}, _quiet_state())
    if args.json:
        print(json.dumps({"summary": made["summary"], "plan": made["plan"]}, indent=2))
        return 0
    where = "this machine" if made["hardware"] == "probe" else made["hardware"]
    print(f"{made['model']['name']} on {where}: {made['summary']}\n")
    for name, choice in made["plan"].items():
        if isinstance(choice, dict) and "reason" in choice:
            mark = " (set by you)" if choice["overridden"] else ""
            print(f"  {name.replace('_', ' ')}{mark}: {choice['reason']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from app.runtime.services import Services

    models = Services(warm_up=False).models()
    if not models:
        print("The library is empty. Run `make install` to add the embedded model.", file=sys.stderr)
        return 1
    print(f"{'ID':40} {'ARCH':10} {'PARAMS':>8} {'QUANT':8} {'SIZE':>9} {'CTX':>6}  SOURCE")
    for m in models:
        print(f"{m.id:40} {m.architecture:10} {m.parameters / 1e6:>7.0f}M {m.quantization:8} {m.file_size / 2**20:>7.1f}MB {m.context_length:>6}  {m.source}: {m.path}")
    return 0


def cmd_models_dispatch(args: argparse.Namespace) -> int:
    if args.models_command in (None, "ls"):
        return cmd_models(args)
    return MODELS_COMMANDS[args.models_command](args)


def _hub_service():  # type: ignore[no-untyped-def]
    from app.runtime.services import Services

    return Services(warm_up=False).hub


def _quiet_state():  # type: ignore[no-untyped-def]
    from app.runtime.jobs import JobState

    return JobState("cli", lambda event: None)


def cmd_models_search(args: argparse.Namespace) -> int:
    found = _hub_service().search({"query": args.query, "sort": args.sort, "limit": args.limit}, _quiet_state())["models"]
    if not found:
        print(f"No GGUF text-generation models match {args.query!r}.", file=sys.stderr)
        return 1
    print(f"{'REPOSITORY':60} {'DOWNLOADS':>10} {'LIKES':>6}  UPDATED")
    for m in found:
        print(f"{m['id']:60} {m['downloads']:>10,} {m['likes']:>6,}  {(m['last_modified'] or '')[:10]}{'  (gated)' if m['gated'] else ''}")
    return 0


def cmd_models_files(args: argparse.Namespace) -> int:
    from app.runtime.planner.memory import fmt_bytes

    listing = _hub_service().files({"repo_id": args.repo}, _quiet_state())
    if not listing["variants"]:
        print(f"{args.repo} has no GGUF files.", file=sys.stderr)
        return 1
    print(f"{'VARIANT':12} {'SIZE':>10}  {'ON THIS MACHINE':32} FILES")
    for v in listing["variants"]:
        here = " [downloaded]" if v["downloaded"] else f" [paused at {fmt_bytes(v['partial_bytes'])}]" if v["partial_bytes"] else ""
        print(f"{v['name']:12} {fmt_bytes(v['size']):>10}  {v['fit_text']:32} {', '.join(v['files'])}{here}")
    recommended = next((v for v in listing["variants"] if v.get("recommended")), None)
    if recommended:
        print(f"\nRecommended: {recommended['fit_reason']}")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    import queue

    from app.runtime.client import InProcessClient, failure_from_event
    from app.runtime.protocol import ErrorKind, EventKind, Method

    client = InProcessClient()
    events: queue.Queue[Any] = queue.Queue()
    request_id = client.submit(Method.HUB_DOWNLOAD, {"repo_id": args.repo, "filename": args.file}, events.put)
    again = f"hearth models pull {args.repo}{' ' + args.file if args.file else ''}"
    try:
        while True:
            try:
                event = events.get()
            except KeyboardInterrupt:
                client.cancel(request_id)  # a pause: the partial file stays; the job answers with where it stopped
                continue
            if event.event is EventKind.PROGRESS:
                _show_pull_progress(event.data)
            elif event.event is EventKind.RESULT:
                print(file=sys.stderr)
                for path in event.data["paths"]:
                    print(path)
                return 0
            elif event.event is EventKind.ERROR:
                print(file=sys.stderr)
                failure = failure_from_event(event)
                if failure.kind is ErrorKind.CANCELLED:
                    print(f"hearth: {failure.message} Run `{again}` to resume.", file=sys.stderr)
                    return 130
                raise failure
    finally:
        client.close()


def _show_pull_progress(data: dict[str, Any]) -> None:
    from app.runtime.planner.memory import fmt_bytes

    if data.get("stage") == "download" and data.get("downloaded") is not None:
        speed, eta = data.get("speed") or 0, data.get("eta")
        line = f"{data.get('filename')}: {data.get('message')}  {fmt_bytes(speed)}/s" + (f"  ETA {eta:.0f} s" if eta is not None else "")
        print(f"\r{line:100}", end="", file=sys.stderr, flush=True)
    elif data.get("message"):
        print(f"\r{data['message']:100}", end="\n" if data.get("stage") in ("chosen", "done") else "", file=sys.stderr, flush=True)


def cmd_models_rm(args: argparse.Namespace) -> int:
    from app.runtime import library
    from app.runtime.planner.memory import fmt_bytes
    from app.runtime.services import Services

    services = Services(warm_up=False)
    model = library.resolve(args.name, services.models())
    if not args.yes:
        try:
            answer = input(f"Delete {model.name} ({fmt_bytes(model.file_size)}) at {model.path}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing deleted (pass --yes to delete without asking).", file=sys.stderr)
            return 1
    done = services.hub.delete({"model": model.path}, _quiet_state())
    print(f"Deleted {done['deleted']}; {fmt_bytes(done['freed'])} freed.")
    return 0


MODELS_COMMANDS = {"search": cmd_models_search, "files": cmd_models_files, "pull": cmd_models_pull, "rm": cmd_models_rm}


def cmd_hardware(args: argparse.Namespace) -> int:
    from app.runtime.hardware import probe

    print(json.dumps(probe().to_dict(), indent=2))
    return 0


# Each suite is "module:function", imported only when asked for; the function takes the parsed
# arguments and returns the JSON report.
BENCH_SUITES = {
    "runtime": "app.runtime.bench:run_from_args",
    "kv": "app.runtime.kv.bench:run_from_args",
    "kernels": "app.runtime.quantize.torch_quant:bench_from_args",
}


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module_name, function_name = BENCH_SUITES[args.suite].split(":")
    report = getattr(importlib.import_module(module_name), function_name)(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The API server in this process (app.runtime.services.server), until Ctrl-C or SIGTERM."""
    import os
    import signal
    import threading

    options = {
        "host": args.host, "port": args.port, "model": args.model, "api_key": args.api_key or os.environ.get("HEARTH_API_KEY"),
        "cors_origins": args.cors_origins, "queue_limit": args.queue_limit, "max_tokens": args.max_tokens,
    }
    from app.runtime.server.config import ServerConfig

    ServerConfig.from_settings(options)  # refuse a bad address or a missing key before loading anything
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    client = _client()
    try:
        started = client.call("server.start", options)
        print(f"Hearth is serving at {started['url']}/v1 (OpenAI-compatible). Ctrl-C stops.", file=sys.stderr, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        client.call("server.stop")
        return 0
    finally:
        client.close()


def cmd_quantize(args: argparse.Namespace) -> int:
    import queue

    from app.runtime.client import InProcessClient, failure_from_event
    from app.runtime.protocol import EventKind, Method

    if args.to.strip().lower() == "list":
        from app.runtime.quantize.targets import TARGETS

        for t in TARGETS.values():
            print(f"{t.name:10} {t.kind:6} {t.description}{'  (needs --imatrix)' if t.needs_imatrix else ''}")
        return 0
    params = {"model": args.model, "targets": [t for t in args.to.split(",") if t.strip()], "evaluate": args.eval,
              "output_dir": args.output, "imatrix": args.imatrix, "eval_tokens": args.eval_tokens}
    client = InProcessClient()
    events: queue.Queue[Any] = queue.Queue()
    request_id = client.submit(Method.QUANTIZE_RUN, params, events.put)
    try:
        while True:
            try:
                event = events.get()
            except KeyboardInterrupt:
                client.cancel(request_id)  # the job removes what it made and answers "cancelled"
                continue
            if event.event is EventKind.PROGRESS:
                _show_quantize_progress(event.data)
            elif event.event is EventKind.RESULT:
                print(file=sys.stderr)
                _print_quantize_report(event.data, as_json=args.json)
                return 0
            elif event.event is EventKind.ERROR:
                print(file=sys.stderr)
                raise failure_from_event(event)
    finally:
        client.close()


def _show_quantize_progress(data: dict[str, Any]) -> None:
    step = f"[{data.get('step')}/{data.get('steps')}] " if data.get("step") else ""
    eta = data.get("eta_s")
    line = f"{step}{data.get('message', '')}" + (f"  ~{eta:.0f} s left" if isinstance(eta, (int, float)) else "")
    print(f"\r{line[:110]:110}", end="\n" if data.get("stage") == "step" else "", file=sys.stderr, flush=True)


def _print_quantize_report(report: dict[str, Any], *, as_json: bool) -> None:
    from app.runtime.planner.memory import fmt_bytes

    if as_json:
        print(json.dumps(report, indent=2))
        return
    for warning in report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    ref = report.get("reference")
    print(f"{'TARGET':10} {'SIZE':>10} {'PPL':>9} {'Δ PPL':>8} {'KL':>8} {'TOP-1':>6} {'TOK/S':>7}  PATH")
    if ref:
        print(f"{'source':10} {fmt_bytes(ref['file_size']):>10} {ref['perplexity']:>9.3f} {'':>8} {'':>8} {'':>6} {ref['decode_tps']:>7.1f}  {ref['label']}")
    for row in report["results"]:
        mark = " *" if row.get("recommended") else ""

        def num(key: str, fmt: str) -> str:
            value = row.get(key)
            return format(value, fmt) if isinstance(value, (int, float)) else "-"

        print(f"{row['target'] + mark:10} {fmt_bytes(row['file_size']):>10} {num('perplexity', '.3f'):>9} {num('ppl_change_pct', '+.2f'):>7}% "
              f"{num('kl_mean', '.4f'):>8} {num('top1_agreement', '.1%'):>6} {num('decode_tps', '.1f'):>7}  {row['path']}")
    if report.get("recommended"):
        print(f"\n* recommended for this computer: {report['recommended_reason']}")


def _finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", help="base model: library id, GGUF path or Hugging Face folder (a GGUF is converted once)")
    parser.add_argument("data", nargs="?", help="training data: .jsonl, .json or .csv (messages, instruction/output, prompt/completion or text)")
    parser.add_argument("--output", help="the run folder (default: under Hearth's data folder)")
    parser.add_argument("--json", action="store_true", help="print the plan or the result as JSON")
    parser.add_argument("--plan-only", action="store_true", help="show the data report and the chosen settings, and stop")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or cancelled run from its last checkpoint")
    parser.add_argument("--hardware", help="plan for a named hardware profile instead of this machine")
    parser.add_argument("--eval-data", help="a separate validation file (default: a split of the data)")
    parser.add_argument("--export", default="", help="after training: comma-separated adapter,merged,gguf")
    parser.add_argument("--qtype", default="Q8_0", help="GGUF type for --export gguf (default Q8_0; F16 keeps 16-bit)")
    parser.add_argument("--name", help="the exported model's name in the library")
    for flag, kind, help_text in (
        ("--rank", int, "LoRA rank r"), ("--alpha", int, "LoRA alpha"), ("--learning-rate", float, "peak learning rate"),
        ("--epochs", float, "passes over the data"), ("--batch-size", int, "examples per step"),
        ("--grad-accum", int, "steps accumulated per optimizer step"), ("--seq-length", int, "tokens per example (longer are cut)"),
        ("--threads", int, "CPU threads"), ("--max-steps", int, "stop after this many optimizer steps"),
        ("--save-steps", int, "checkpoint every N steps"), ("--eval-steps", int, "validation loss every N steps"),
        ("--sample-steps", int, "a sample answer every N steps"), ("--validation-fraction", float, "share of the data held out"),
        ("--dropout", float, "LoRA dropout"), ("--seed", int, "random seed"), ("--device", str, "cpu or cuda"),
        ("--on-error", str, "skip or stop on bad data rows"), ("--sample-prompt", str, "the question sampled during training"),
    ):
        parser.add_argument(flag, type=kind, help=help_text)
    for name, help_text in (("grad-checkpointing", "recompute activations to save memory"), ("packing", "pack short examples into full sequences"),
                            ("quantize-4bit", "QLoRA: a 4-bit base (CUDA and bitsandbytes)"), ("prompt-loss", "train on the prompt tokens too")):
        parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)


def cmd_finetune(args: argparse.Namespace) -> int:
    from app.runtime.finetune.cli import run

    return run(args)


COMMANDS = {"chat": cmd_chat, "plan": cmd_plan, "models": cmd_models_dispatch, "hardware": cmd_hardware, "bench": cmd_bench, "quantize": cmd_quantize, "serve": cmd_serve, "finetune": cmd_finetune}
