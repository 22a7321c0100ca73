"""`hearth chat "..." --mcp-config FILE`: the whole tool loop on the command line.

The model answers with tool calls; each call is printed, approved (``--allow-tools``, or a
question on the terminal), run on its MCP server through ``mcp.call``, its result printed and
given back to the model, until the model answers in words. Nothing runs unasked: without
``--allow-tools`` and without a terminal to ask on, the command refuses before any server starts.

After a round of tool results the model is asked again with ``tool_choice`` "auto" when the
person chose "auto", else "none" (so "required" or a named tool means: call it, then answer;
not call it forever). At most `MAX_ROUNDS` rounds of calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.console import ANSWER_CHARS, read_line
from app.cli.runner import EXIT_FAILED, EXIT_OK, Session, UsageError
from app.runtime.protocol import ErrorKind, Method, RuntimeFailure

MAX_ROUNDS = 5
CHOICES = ("auto", "required", "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mcp-config", metavar="FILE",
                        help='MCP servers whose tools the model may call, in the mcp.json shape: {"mcpServers": {...}}')
    parser.add_argument("--tool-choice", default="auto", metavar="auto|required|none|NAME",
                        help="whether the model must call a tool (required), may (auto), must not (none), or must call NAME")
    parser.add_argument("--allow-tools", action="store_true",
                        help="run the servers' commands and every tool call without asking")


def wanted(args: argparse.Namespace) -> bool:
    return getattr(args, "mcp_config", None) is not None


def run(args: argparse.Namespace, session: Session, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> int:
    if args.prompt is None:
        raise UsageError("--mcp-config needs a prompt (the tool loop answers one question)")
    servers = _servers(Path(args.mcp_config))
    if not _confirm_servers(args, session, servers):
        return EXIT_FAILED
    config = [s.with_confirmed(True).to_entry() for s in servers]
    offered = session.run(Method.MCP_TOOLS, {"config": config}, progress=session.console.err_is_tty)
    for name, problem in offered.get("problems", {}).items():
        session.console.say(f"hearth: MCP server {name!r}: {problem} (its tools are left out)")
    tools, functions = offered["tools"], offered["functions"]
    if not tools:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"no MCP server in {args.mcp_config} offered a tool")
    first = _tool_choice(args.tool_choice, functions)
    later = "auto" if first == "auto" else "none"
    always: set[str] = set()
    messages.append({"role": "user", "content": args.prompt})
    for round_no in range(MAX_ROUNDS + 1):
        choice = first if round_no == 0 else later if round_no < MAX_ROUNDS else "none"
        result = _chat(args, session, messages, sampling, tools, choice)
        calls = result.get("tool_calls") or []
        if not calls:
            return EXIT_OK
        messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        for call in calls:
            messages.append(_run_call(args, session, call, functions, config, always))
    return EXIT_OK


def _servers(path: Path) -> list[Any]:
    from app.runtime.mcp.config import McpConfigError, parse_mcp_json

    try:
        return parse_mcp_json(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"--mcp-config {path}: {exc.strerror or exc}") from None
    except McpConfigError as exc:
        raise UsageError(f"--mcp-config {path}: {exc}") from None


def _ask(session: Session, question: str) -> str:
    session.console.err.write(question)
    session.console.err.flush()
    return read_line(sys.stdin, limit=ANSWER_CHARS).strip().lower()  # bounded, as every read of input


def _confirm_servers(args: argparse.Namespace, session: Session, servers: list[Any]) -> bool:
    """Show what will run; ``--allow-tools`` or a "y" on the terminal allows it."""
    say = session.console.say
    for server in servers:
        say(f"MCP server {server.name}: {server.display()}")
    if args.allow_tools:
        return True
    if not sys.stdin.isatty():
        session.console.fail(
            f"the MCP servers in {args.mcp_config} run commands that nobody confirmed, and there is no terminal "
            "to ask on: check them (above) and pass --allow-tools to run them and their tool calls")
        return False
    if _ask(session, "Start these MCP servers? [y/N] ") in ("y", "yes"):
        return True
    session.console.fail("the MCP servers were not started")
    return False


def _tool_choice(text: str, functions: dict[str, dict[str, str]]) -> Any:
    if text in CHOICES:
        return text
    if text in functions:
        return {"type": "function", "function": {"name": text}}
    raise UsageError(f"--tool-choice {text!r} is not auto, required, none or a tool of the servers ({', '.join(functions)})")


def _chat(args: argparse.Namespace, session: Session, messages: list[dict[str, Any]], sampling: dict[str, Any],
          tools: list[dict[str, Any]], choice: Any) -> dict[str, Any]:
    out = session.console.out
    wrote = False

    def show(text: str) -> None:
        nonlocal wrote
        wrote = wrote or bool(text)
        out.write(text)
        out.flush()

    params = {"messages": messages, "model": args.model, "backend": args.backend, "sampling": sampling,
              "tools": tools, "tool_choice": choice, "parallel_tool_calls": True}
    if getattr(args, "speculate", None) is not None:
        params["speculate"] = args.speculate
    try:
        result = session.run(Method.CHAT, params, progress=session.console.err_is_tty, on_token=show)
    finally:
        if wrote:
            out.write("\n")
            out.flush()
    if args.stats:
        usage, timings = result.get("usage", {}), result.get("timings", {})
        session.console.say(f"[{usage.get('completion_tokens')} tokens · {timings.get('decode_tps')} tok/s · "
                            f"{result.get('finish_reason')}]")
    return result


def _run_call(args: argparse.Namespace, session: Session, call: dict[str, Any], functions: dict[str, dict[str, str]],
              config: list[dict[str, Any]], always: set[str]) -> dict[str, Any]:
    """Print, approve and run one call; the ``tool`` message that answers it."""
    out = session.console.out
    function = call.get("function", {})
    name, arguments = str(function.get("name", "")), str(function.get("arguments", "{}"))
    out.write(f"[tool call] {name} {arguments}\n")
    out.flush()
    target = functions.get(name)
    if target is None:
        text, is_error = f"There is no tool named {name!r}.", True
    elif not _approved(args, session, name, always):
        text, is_error = "The person did not allow this tool call.", True
    else:
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            text, is_error = f"The arguments of {name} are not a JSON object: {arguments}", True
        else:
            done = session.run(Method.MCP_CALL, {"server": target["server"], "tool": target["tool"], "arguments": parsed,
                                            "config": config}, progress=session.console.err_is_tty)
            text, is_error = str(done["text"]), bool(done["is_error"])
    shown = text if len(text) <= 2000 else text[:2000] + f"… ({len(text):,} characters)"
    out.write(f"[tool {'error' if is_error else 'result'}] {shown}\n")
    out.flush()
    return {"role": "tool", "tool_call_id": str(call.get("id", "")), "content": text}


def _approved(args: argparse.Namespace, session: Session, name: str, always: set[str]) -> bool:
    if args.allow_tools or name in always:
        return True
    if not sys.stdin.isatty():
        return False
    answer = _ask(session, f"Run {name}? [y]es once, [a]lways for {name}, [N]o: ")
    if answer in ("a", "always"):
        always.add(name)
    return answer in ("y", "yes", "a", "always")
