"""`hearth chat`: one streamed answer, or an interactive session read from stdin."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli import chat_tools
from app.cli.console import read_line
from app.cli.runner import EXIT_OK, Session, Stopped
from app.runtime.protocol import Method

EXIT_WORDS = ("/exit", "/quit")


def add_parser(sub: Any) -> None:
    chat = sub.add_parser("chat", help="chat with a model: one answer for a prompt, or an interactive session without one")
    chat.add_argument("prompt", nargs="?", help="the question; omit it for an interactive session (type /exit to leave; Ctrl-C stops an answer)")
    chat.add_argument("--model", help="library id, name, path of a GGUF file, or a fine-tune's run or adapter folder (default: the embedded model)")
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
    chat.add_argument("--speculate", metavar="MODE",
                      help="speculative decoding: auto (the planner decides from measured costs), off, lookup (guess from the "
                           "conversation's own text) or draft:MODEL (a smaller model with the same vocabulary); default: the saved setting")
    chat.add_argument("--docs", metavar="NAME",
                      help="answer from the document collection NAME (`hearth docs add NAME PATH...`): its documents whole when "
                           "they fit the context, else the best passages; the sources are printed after the answer")
    chat_tools.add_arguments(chat)
    chat.set_defaults(run=run)


def run(args: argparse.Namespace, session: Session) -> int:
    sampling = {
        key: value
        for key, value in {
            "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "min_p": args.min_p,
            "repeat_penalty": args.repeat_penalty, "max_tokens": args.max_tokens, "seed": args.seed, "stop": args.stop,
        }.items()
        if value is not None
    }
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    prefs = {"context_length": args.ctx, "threads": args.threads, "gpu_layers": args.gpu_layers}
    if any(v is not None for v in prefs.values()) or args.model is not None:
        session.run(Method.ENGINE_LOAD, {"model": args.model, "prefs": prefs}, progress=session.console.err_is_tty)
    if chat_tools.wanted(args):  # tools of MCP servers: the call, run, answer loop
        return chat_tools.run(args, session, messages, sampling)
    if args.prompt is not None:
        messages.append({"role": "user", "content": args.prompt})
        _answer(session, messages, args, sampling)
        return EXIT_OK
    interactive = sys.stdin.isatty()
    out = session.console.out
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = read_line(sys.stdin)  # bounded: `hearth chat < /dev/zero` is refused, not read into gigabytes
        if not line or line.strip() in EXIT_WORDS:
            return EXIT_OK
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        try:
            reply = _answer(session, messages, args, sampling)
        except Stopped as stopped:  # Ctrl-C stopped this answer, not the session: its part is kept
            reply = str(stopped.data.get("text", ""))
            session.console.say("[stopped]")
        messages.append({"role": "assistant", "content": reply})


def _answer(session: Session, messages: list[dict[str, str]], args: argparse.Namespace, sampling: dict[str, Any]) -> str:
    out = session.console.out

    def show(text: str) -> None:
        out.write(text)
        out.flush()

    params = {"messages": messages, "model": args.model, "backend": args.backend, "sampling": sampling}
    if getattr(args, "speculate", None):
        params["speculate"] = args.speculate
    if getattr(args, "docs", None):
        params["docs"] = {"collection": args.docs}
    try:
        result = session.run(Method.CHAT, params, progress=session.console.err_is_tty, on_token=show)
    finally:
        out.write("\n")
        out.flush()
    if isinstance(result.get("docs"), dict):
        _print_sources(session, result["docs"])
    if args.stats:
        usage, timings = result.get("usage", {}), result.get("timings", {})
        session.console.say(
            f"[{usage.get('completion_tokens')} tokens · {timings.get('decode_tps')} tok/s · "
            f"first token {timings.get('ttft_ms')} ms · {result.get('finish_reason')}{_speculation(result.get('speculation'))}]"
        )
    return str(result.get("text", ""))


def _print_sources(session: Session, docs: dict[str, Any]) -> None:
    """The passages the answer was given, numbered as its [n] markers cite them (stdout), and why
    these went in (stderr)."""
    out = session.console.out
    passages = docs.get("passages") or []
    if passages:
        out.write("\nSources:\n")
        for p in passages:
            out.write(f"[{p.get('number')}] {p.get('path')}, {p.get('location')}\n")
        out.flush()
    session.console.say(f"[{docs.get('reason')}]")


def _speculation(spec: dict[str, Any] | None) -> str:
    """The --stats words for what speculation did: accepted of drafted, or why it was off."""
    if not spec:
        return ""
    if spec.get("off"):
        return f" · speculation off: {spec['off']}"
    return f" · speculation: {spec.get('accepted', 0)}/{spec.get('drafted', 0)} drafted tokens accepted in {spec.get('steps', 0)} steps"
