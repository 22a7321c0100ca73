"""The data import: every shape detected, every bad row named by its line and reason, nothing crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.runtime.finetune import data

FACTS = Path(__file__).parents[2] / "data" / "facts"


def _write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8") for x in lines) + b"\n")
    return path


def test_the_facts_file_reads_as_chat_messages() -> None:
    report = data.read(FACTS / "train.jsonl")
    assert report.shape == "messages" and report.ok
    assert len(report.examples) == 30
    assert report.examples[0].messages[-1]["role"] == "assistant"


def test_a_bad_jsonl_file_gives_a_line_numbered_report(tmp_path: Path) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    path = _write(tmp_path / "bad.jsonl", [
        good,                                                                                        # 1
        '{"messages": [{"role": "user", "content": "Hi"}',                                           # 2 malformed
        json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}),  # 3 empty
        json.dumps({"messages": [{"role": "wizard", "content": "Hi"}, {"role": "assistant", "content": "x"}]}),  # 4 role
        "Caf\xe9 au lait".encode("latin-1"),                                                         # 5 encoding
        json.dumps({"text": "no messages here"}),                                                    # 6 missing field
        "",                                                                                          # 7 blank: ignored
        json.dumps([1, 2]),                                                                          # 8 not an object
        good,                                                                                        # 9
    ])
    report = data.read(path, on_error="skip")
    reasons = {i.line: i.reason for i in report.issues}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 8]
    assert "malformed JSON" in reasons[2]
    assert "empty content" in reasons[3]
    assert "unknown role 'wizard'" in reasons[4]
    assert "not UTF-8" in reasons[5] and "0xe9" in reasons[5]
    assert "missing field 'messages'" in reasons[6]
    assert "object" in reasons[8]
    assert [e.line for e in report.examples] == [1, 9]
    assert report.rows == 8
    with pytest.raises(data.DataRejected) as stopped:
        data.read(path, on_error="stop")
    assert "line 2: malformed JSON" in stopped.value.message


def test_shapes_are_detected_in_json_and_csv(tmp_path: Path) -> None:
    rows = [{"instruction": "Add", "input": "2 and 2", "output": "4"}, {"instruction": "Greet", "output": ""}]
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    report = data.read(path)
    assert report.shape == "instruction"
    assert report.examples[0].messages[0]["content"] == "Add\n\n2 and 2"
    assert [(i.line, "empty content" in i.reason) for i in report.issues] == [(7, True)]  # the second object starts on line 7

    csv_path = tmp_path / "pc.csv"
    csv_path.write_text('prompt,completion\n"Say hi","Hi!"\n"Two, words","ok"\n,"no prompt"\n', encoding="utf-8")
    report = data.read(csv_path)
    assert report.shape == "prompt_completion"
    assert [e.messages[0]["content"] for e in report.examples] == ["Say hi", "Two, words"]
    assert [i.line for i in report.issues] == [4]

    text_path = _write(tmp_path / "t.jsonl", [json.dumps({"text": "plain words"})])
    assert data.read(text_path).examples[0].text == "plain words"


def test_nothing_usable_is_refused_even_when_skipping(tmp_path: Path) -> None:
    path = _write(tmp_path / "junk.jsonl", ["not json", "{also not"])
    with pytest.raises(data.DataRejected) as refused:
        data.read(path)
    assert [i.line for i in refused.value.report.issues] == [1, 2]


def test_split_is_seeded_and_keeps_a_validation_example() -> None:
    examples = data.read(FACTS / "train.jsonl").examples
    train, val = data.split(examples, validation_fraction=0.1, seed=3)
    assert len(val) == 3 and len(train) == 27
    assert data.split(examples, validation_fraction=0.1, seed=3) == (train, val)
    assert not {e.line for e in train} & {e.line for e in val}


def test_an_over_long_row_is_reported_by_line_and_skipped_without_being_held(tmp_path: Path) -> None:
    import tracemalloc

    good = json.dumps({"text": "short and sweet"})
    path = tmp_path / "long.jsonl"
    with path.open("wb") as f:  # an 8 MiB single-line row between two good ones
        f.write(good.encode() + b"\n" + b'{"text": "' + b"word " * (8 * 2**20 // 5) + b'"}\n' + good.encode() + b"\n")
    tracemalloc.start()
    try:
        report = data.read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * data.MAX_ROW_BYTES  # never the whole line (nor the whole file) at once
    assert [e.line for e in report.examples] == [1, 3] and report.rows == 3
    [issue] = report.issues
    assert issue.line == 2 and "8.0 MiB long" in issue.reason and "1.0 MiB one example may hold" in issue.reason


def test_json_rows_are_held_to_the_same_limit_and_lone_surrogates_are_named(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"text": "x" * 2000}, {"text": "bad \ud800 text"}, {"text": "fine"}], indent=1), encoding="utf-8")
    report = data.read(path, max_row_bytes=1000)
    assert [e.text for e in report.examples] == ["fine"]
    reasons = [i.reason for i in report.issues]
    assert "2 KiB of text, more than the 1000 bytes" in reasons[0] and "lone surrogate (\\ud800)" in reasons[1]
