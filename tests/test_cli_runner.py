"""How every `hearth` subcommand behaves at its edges: one line on failure, exit codes, Ctrl-C,
a closed pipe, bad bytes, and a quiet terminal (logs in the log file, on stderr only with -v)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from app.cli.progress import ProgressBar, describe


def command() -> list[str]:
    exe = shutil.which("hearth", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "app"]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_hub_is_one_line_and_a_failure(tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HEARTH_HOME": str(tmp_path)}
    done = subprocess.run([*command(), "models", "search", "x"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("hearth: Could not reach the Hugging Face Hub")
    logged = (tmp_path / "logs" / "cli.log").read_text(encoding="utf-8")
    assert "network error while searching models" in logged  # the detail is in the log, not on the terminal

    verbose = subprocess.run([*command(), "-v", "models", "search", "x"], capture_output=True, text=True, timeout=120, env=env)
    assert verbose.returncode == 1
    assert "network error while searching models" in verbose.stderr and verbose.stderr.strip().splitlines()[-1] == lines[0]


def test_help_documents_exit_codes_and_ctrl_c() -> None:
    help_text = subprocess.run([*command(), "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "Exit codes: 0 done; 1 failed" in help_text and "130 cancelled or paused" in help_text
    assert "Ctrl-C" in help_text and "cli.log" in help_text


def test_usage_errors_exit_2() -> None:
    done = subprocess.run([*command(), "finetune", "some-base"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == "hearth: give a data file (or --resume RUN_DIR)"
    assert subprocess.run([*command(), "models", "search"], capture_output=True, text=True, timeout=60).returncode == 2


def test_invalid_utf8_in_argv_and_stdin_is_replaced_not_a_traceback(model_path: Path, tmp_path: Path) -> None:
    argv = subprocess.run([*command(), "docs", "search", os.fsdecode(b"x\xff"), "y"], capture_output=True, timeout=60)
    err = argv.stderr.decode("utf-8")
    assert argv.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "x\ufffd" in err

    # A deletable model (the embedded one is refused before the question): a copy in a home of its own.
    library = tmp_path / "data" / "models"
    library.mkdir(parents=True)
    shutil.copy(model_path, library / "copy.gguf")
    env = {**os.environ, "HEARTH_HOME": str(tmp_path)}
    asked = subprocess.run([*command(), "models", "rm", str(library / "copy.gguf")], input=b"\xffy\n", capture_output=True, timeout=120, env=env)
    assert asked.returncode == 1 and b"Traceback" not in asked.stderr
    assert b"Nothing deleted" in asked.stderr and (library / "copy.gguf").exists()  # the answer "\ufffdy" is not a yes


def test_a_closed_pipe_ends_a_chat_quietly() -> None:
    chat = subprocess.Popen([*command(), "chat", "Write a long story about a dragon.", "--max-tokens", "256", "--temperature", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert chat.stdout is not None and chat.stderr is not None
    first = chat.stdout.read(1)  # the first streamed byte: the answer is under way...
    chat.stdout.close()  # ...and the reader goes away, as `| head -c1` does
    err = chat.stderr.read().decode("utf-8", "replace")
    assert chat.wait(timeout=120) == 0, err
    assert first and err == ""


def test_ctrl_c_cancels_a_chat_and_keeps_what_was_said() -> None:
    chat = subprocess.Popen([*command(), "chat", "Write a long story about a dragon.", "--max-tokens", "400", "--temperature", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert chat.stdout is not None
    first = chat.stdout.read(1)
    chat.send_signal(signal.SIGINT)
    out, err = chat.communicate(timeout=120)
    assert chat.returncode == 130, err
    assert (first + out).strip() and err.decode().strip().splitlines()[-1] == "hearth: cancelled"


def test_one_progress_record_drawn_for_a_person() -> None:
    record = {"stage": "download", "done": 3 * 2**20, "total": 12 * 2**20, "unit": "bytes", "fraction": 0.25, "eta_s": 75.0,
              "message": "model.gguf", "speed": 2**20}
    line = describe(record)
    assert line.startswith("model.gguf  [#####---------------]  25%") and "ETA 1:15" in line and "/s" in line
    step = describe({"stage": "quantize", "done": 4, "total": 8, "unit": "tensors", "fraction": 0.5, "message": "Q8_0", "step": 2, "steps": 3})
    assert step.startswith("[2/3] Q8_0") and "4/8 tensors" in step

    times = iter([0.0, 1.0, 2.0, 20.0, 21.0, 22.0, 23.0])
    piped = io.StringIO()
    bar = ProgressBar(piped, tty=False, clock=lambda: next(times))
    for done in (1, 2, 3, 4):  # one stage: its first line, then one more after PIPE_INTERVAL
        bar.update({"stage": "index", "done": done, "total": 8, "unit": "files", "fraction": done / 8, "message": "files"})
    bar.update({"stage": "embed", "message": "embedding"})
    bar.update({"stage": "embed", "message": "embedding"})  # the same milestone again: not repeated
    bar.close()
    assert piped.getvalue().splitlines() == ["files   12%  1/8 files", "files   50%  4/8 files", "embedding"]

    screen = io.StringIO()
    live = ProgressBar(screen, tty=True, clock=lambda: 0.0)
    live.update({"stage": "load", "message": "Loading"})
    live.clear()  # a reply's first token takes the line away
    live.close()
    assert screen.getvalue() == "\rLoading\r\x1b[K"
