"""`hearth chat --mcp-config`: the whole tool loop with the real model and a real MCP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).resolve().parent / "data" / "mcp_server.py"


def hearth(*args: str, stdin: int | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ), stdin=stdin)


def write_config(folder: Path, tools: str = "weather") -> Path:
    path = folder / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"test": {"command": sys.executable, "args": [str(SERVER)],
                                                         "env": {"HEARTH_TEST_TOOLS": tools}}}}), encoding="utf-8")
    return path


def test_the_whole_loop_with_the_real_model_and_tool_choice_required(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = hearth("chat", "What is the weather in Paris?", "--mcp-config", str(config), "--tool-choice", "required",
                  "--allow-tools", "--temperature", "0", "--max-tokens", "32", "--speculate", "off", stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert f"MCP server test: HEARTH_TEST_TOOLS=… {sys.executable}" in done.stderr  # the command is shown before it runs
    lines = done.stdout.splitlines()
    call = next(line for line in lines if line.startswith("[tool call] "))
    name, arguments = call.removeprefix("[tool call] ").split(" ", 1)
    assert name == "weather" and isinstance(json.loads(arguments)["city"], str)  # arguments that parse
    result = lines[lines.index(call) + 1]
    assert result.startswith("[tool result] Sunny and 21 degrees in ")
    assert "".join(lines[lines.index(call) + 2:]).strip()  # and then the model answered in words


def test_without_allow_tools_and_without_a_terminal_nothing_runs(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = hearth("chat", "What is the weather in Paris?", "--mcp-config", str(config), "--tool-choice", "required",
                  stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 1
    assert "no terminal to ask on" in done.stderr and "--allow-tools" in done.stderr
    assert "[tool call]" not in done.stdout


def test_a_bad_config_or_tool_choice_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {"x": {"command": "a", "url": "http://b"}}}', encoding="utf-8")
    done = hearth("chat", "hi", "--mcp-config", str(bad), "--allow-tools", stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2 and "server x: needs either a command (stdio) or a url" in done.stderr
    done = hearth("chat", "hi", "--mcp-config", str(write_config(tmp_path)), "--allow-tools", "--tool-choice", "nope",
                  stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2 and "--tool-choice 'nope' is not auto, required, none or a tool of the servers (weather)" in done.stderr


def test_on_a_terminal_the_command_is_shown_and_asked_about(tmp_path: Path) -> None:
    import pty

    config = write_config(tmp_path)
    main, child = pty.openpty()
    try:
        os.write(main, b"n\n")  # the person's answer, typed ahead
        done = subprocess.run([sys.executable, "-m", "app", "chat", "What is the weather in Paris?", "--mcp-config", str(config)],
                              stdin=child, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    finally:
        os.close(main)
        os.close(child)
    assert done.returncode == 1
    assert f"MCP server test: HEARTH_TEST_TOOLS=… {sys.executable}" in done.stderr
    assert "Start these MCP servers? [y/N]" in done.stderr and "hearth: the MCP servers were not started" in done.stderr
    assert "[tool call]" not in done.stdout
