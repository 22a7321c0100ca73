"""`hearth` given what a clumsy or hostile person gives it (issue 22): endless input, bytes that are
not UTF-8, an output folder that is a file or cannot be written, the embedded model to delete.
Each ends in one `hearth: ...` line, before any work, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.cli.console import MAX_INPUT_CHARS


def command() -> list[str]:
    exe = shutil.which("hearth", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "app"]


def hearth(*args: str, stdin: bytes | None = None, timeout: float = 180) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*command(), *args], input=stdin, capture_output=True, timeout=timeout)


def one_line(done: subprocess.CompletedProcess[bytes]) -> str:
    err = done.stderr.decode("utf-8")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_endless_line_of_input_is_refused_with_its_limit() -> None:
    # More than the limit on one line (`< /dev/zero` without the end): refused after reading just past the limit.
    endless = b"word " * (MAX_INPUT_CHARS // 5 + 1000) + b"\n/exit\n"
    done = hearth("chat", "--max-tokens", "4", stdin=endless)
    assert done.returncode == 1 and done.stdout == b""
    assert one_line(done) == f"hearth: a line of input is longer than {MAX_INPUT_CHARS:,} characters (more than any model's context holds); nothing was sent"


def test_an_answer_to_a_question_is_read_bounded_too(model_path: Path, tmp_path: Path) -> None:
    library = tmp_path / "data" / "models"
    library.mkdir(parents=True)
    shutil.copy(model_path, library / "copy.gguf")
    env = {**os.environ, "HEARTH_HOME": str(tmp_path)}
    with open(os.devnull if not os.path.exists("/dev/zero") else "/dev/zero", "rb") as zeros:  # an endless answer to "Delete ...? [y/N]"
        done = subprocess.run([*command(), "models", "rm", str(library / "copy.gguf")], stdin=zeros, capture_output=True, timeout=120, env=env)
    assert done.returncode == 1 and (library / "copy.gguf").exists()
    assert one_line(done) == "hearth: a line of input is longer than 1,024 characters; nothing was sent"


def test_chat_decodes_invalid_bytes_in_arguments_and_in_piped_input() -> None:
    bad = os.fsdecode(b"\xff\xfe")  # what Python makes of bytes that are not UTF-8 in argv
    done = hearth("chat", "--system", f"Be brief {bad}", "--stop", f"{bad}x", "--max-tokens", "4", "--temperature", "0",
                  stdin=b"\xff\xfe hi\n/exit\n")
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip()


def test_the_embedded_model_is_refused_before_the_question() -> None:
    done = hearth("models", "rm", "smollm2-135m-instruct-q4_1", stdin=b"y\n")
    assert done.returncode == 1 and b"Delete" not in done.stdout + done.stderr
    assert one_line(done) == "hearth: SmolLM2 135M Instruct is Hearth's embedded model; it cannot be deleted."


def test_an_output_that_is_a_file_or_cannot_be_written_is_one_sentence_before_any_work(tmp_path: Path) -> None:
    existing = tmp_path / "taken.gguf"
    existing.write_bytes(b"mine")
    done = hearth("quantize", "smollm2-135m-instruct-q4_1", "--to", "Q8_0", "--output", str(existing))
    assert done.returncode == 1
    assert one_line(done) == f"hearth: {existing} is a file, not a folder; give a folder for the quantized models (it is made if it is missing)."
    assert existing.read_bytes() == b"mine"

    unwritable = "/proc/hearth-test/out"  # no one may make a folder in /proc, not even root
    done = hearth("quantize", "smollm2-135m-instruct-q4_1", "--to", "Q8_0", "--output", unwritable)
    assert done.returncode == 1 and one_line(done).startswith(f"hearth: The quantized models cannot be written to {unwritable} (/proc:")

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n", encoding="utf-8")
    done = hearth("finetune", "smollm2-135m-instruct-q4_1", str(data), "--output", str(existing))
    assert done.returncode == 1 and "is a file, not a folder; give a folder for the training run" in one_line(done)
    other_run = tmp_path / "run"
    other_run.mkdir()
    (other_run / "config.json").write_text("{}", encoding="utf-8")
    done = hearth("finetune", "smollm2-135m-instruct-q4_1", str(data), "--output", str(other_run))
    assert done.returncode == 1
    assert one_line(done) == f"hearth: {other_run} already holds files; give a new or empty folder for the training run."
