"""Where a quantization writes (issue 22): a wrong output folder is one sentence before any work, and
a disk that fills up mid-write says "the disk is full" and keeps nothing of the partial file."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.runtime.outputs import output_folder_problem
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.quantize import gguf as qgguf
from app.runtime.quantize import pipeline, safety


def test_output_folder_problems_in_words(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x", encoding="utf-8")
    assert output_folder_problem(file) == f"{file} is a file, not a folder; give a folder for the results (it is made if it is missing)."
    assert output_folder_problem(file / "below") == f"{file / 'below'} cannot be made: {file} is a file, not a folder."
    assert output_folder_problem("/proc/hearth-test/out") == (
        "The results cannot be written to /proc/hearth-test/out (/proc: it takes no new files); choose another folder.")
    assert output_folder_problem(tmp_path / "new" / "deeper") is None and not (tmp_path / "new").exists()  # nothing made by asking
    assert output_folder_problem(tmp_path) is None
    assert output_folder_problem(tmp_path, new=True) == f"{tmp_path} already holds files; give a new or empty folder for the results."


def test_the_pipeline_refuses_a_file_as_its_folder_before_any_work(model_path: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_bytes(b"mine")
    with pytest.raises(RuntimeFailure) as caught:
        pipeline.run(model_path, ["Q8_0"], output_dir=taken, evaluate=False, state=None)
    assert caught.value.kind is ErrorKind.INVALID_PARAMS and "is a file, not a folder" in caught.value.message
    assert taken.read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 24 MB disk (tmpfs): smaller than the 140 MB a Q8_0 of the embedded model takes."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_disk_that_fills_mid_write_is_the_disk_is_full_and_leaves_nothing(model_path: Path, small_disk: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The free-space check before the step would refuse at once; skipping it stands for another
    # program filling the disk after the check. llama.cpp then fails with "basic_ios::clear: iostream error".
    monkeypatch.setattr(safety, "check_free_space", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeFailure) as caught:
        qgguf.quantize_gguf(model_path, small_disk / "out.Q8_0.gguf", "Q8_0")
    assert caught.value.kind is ErrorKind.DISK_FULL, caught.value.message
    assert caught.value.message.startswith(f"The disk is full: {small_disk} ran out of space during the quantization to Q8_0.")
    assert list(small_disk.iterdir()) == []  # the partial file is gone
