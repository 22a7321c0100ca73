"""`hearth finetune` through the CLI's one runner: the plan for real data, and its usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main

FACTS = Path(__file__).parent / "data" / "facts"


def test_plan_only_shows_the_data_report_and_the_settings(smollm2_hf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", str(smollm2_hf), str(FACTS / "train.jsonl"), "--plan-only", "--rank", "4"]) == 0
    shown = capsys.readouterr()
    rows = {line.split()[0]: line for line in shown.out.splitlines()[1:] if line.strip() and not line.startswith(" ")}
    assert "rank" in rows and "(yours)" in rows["rank"] and rows["rank"].split()[1] == "4"
    assert "learning_rate" in rows and "(yours)" not in rows["learning_rate"]  # chosen by the planner, with its reason
    assert "Traceback" not in shown.err

    assert main(["finetune", str(smollm2_hf), str(FACTS / "train.jsonl"), "--plan-only", "--json"]) == 0
    prepared = json.loads(capsys.readouterr().out)
    assert prepared["ok"] and prepared["plan"]["rank"]["value"] >= 1 and "status" not in prepared


def test_a_missing_data_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "smollm2-135m-instruct-q4_1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "hearth: give a data file (or --resume RUN_DIR)"
    missing = tmp_path / "nowhere.jsonl"
    assert main(["finetune", "smollm2-135m-instruct-q4_1", str(missing), "--plan-only"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"hearth: No data file at {missing}." and "Traceback" not in err  # after any progress lines
