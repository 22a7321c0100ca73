"""Training data: JSONL, JSON or CSV in the common shapes, read row by row with a report of every bad row.

Shapes, detected from the rows themselves (the most common one among the readable rows wins):

- ``messages``: ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}``
- ``instruction``: ``{"instruction": ..., "input": ... (optional), "output": ...}``
- ``prompt_completion``: ``{"prompt": ..., "completion": ...}``
- ``text``: ``{"text": ...}`` (plain text, the loss on every token)

A bad row never crashes the import: it becomes an `Issue` with its line number and the reason, in
words a person can fix in their editor. Whether bad rows are skipped or stop the run is the
person's choice (``on_error``).

Reading is bounded: JSONL is read line by line, and a row longer than `MAX_ROW_BYTES` is reported
by its line and skipped without ever being held whole (a 50 MB single-line file once made the
tokenizer peak at 8 GB). JSON and CSV rows are parsed whole, then held to the same limit.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from app.runtime.protocol import ErrorKind, RuntimeFailure

ROLES = ("system", "user", "assistant")
SHAPES = ("messages", "instruction", "prompt_completion", "text")
SUFFIXES = (".jsonl", ".json", ".csv")
MAX_ROW_BYTES = 2**20  # one example: 1 MiB of text is ~250k tokens, far beyond any sequence length a fine-tune uses
_SKIP_CHUNK = 2**16  # how much of an over-long line is read at a time while skipping it
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Example:
    """One training example: a conversation, or plain text (``text`` set, ``messages`` empty)."""

    messages: tuple[dict[str, str], ...] = ()
    text: str | None = None
    line: int = 0  # where it came from, for the preview and for messages about it


@dataclass(frozen=True)
class Issue:
    line: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass
class DataReport:
    path: str
    shape: str | None
    rows: int = 0
    examples: list[Example] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues and bool(self.examples)

    def summary(self) -> str:
        head = f"{len(self.examples)} of {self.rows} rows usable ({self.shape or 'unknown'} format)"
        if not self.issues:
            return head
        shown = "; ".join(f"line {i.line}: {i.reason}" for i in self.issues[:5])
        more = f" and {len(self.issues) - 5} more" if len(self.issues) > 5 else ""
        return f"{head}. Bad rows — {shown}{more}."

    def to_dict(self, *, limit: int = 200) -> dict[str, Any]:
        return {
            "path": self.path,
            "shape": self.shape,
            "rows": self.rows,
            "usable": len(self.examples),
            "issues": [i.to_dict() for i in self.issues[:limit]],
            "issue_count": len(self.issues),
            "summary": self.summary(),
        }


class DataRejected(RuntimeFailure):
    """The person chose to stop on bad rows, and there were some (or nothing usable at all)."""

    def __init__(self, report: DataReport) -> None:
        super().__init__(ErrorKind.INVALID_PARAMS, f"{Path(report.path).name}: {report.summary()}")
        self.report = report


def read(path: str | Path, *, on_error: str = "skip", max_row_bytes: int = MAX_ROW_BYTES) -> DataReport:
    """Read and validate a data file. ``on_error``: "skip" bad rows, or "stop" (raise DataRejected).

    ``max_row_bytes``: the longest row kept (see the module's docstring)."""
    if on_error not in ("skip", "stop"):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "on_error must be 'skip' or 'stop'")
    source = Path(path)
    if not source.is_file():
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"No data file at {source}.")
    suffix = source.suffix.lower()
    if suffix not in SUFFIXES:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{source.name}: Hearth reads .jsonl, .json and .csv data files.")
    report = DataReport(str(source), None)
    if suffix == ".jsonl":
        with source.open("rb") as stream:
            rows = _jsonl_rows(stream, report, max_row_bytes)
    else:
        rows = _rows(source.read_bytes(), suffix, report)
    report.rows = len(rows) + sum(1 for i in report.issues)
    shapes = Counter(s for s in (_shape_of(obj) for _, obj in rows) if s)
    report.shape = shapes.most_common(1)[0][0] if shapes else None
    for line, obj in rows:
        try:
            report.examples.append(_bounded(_example(obj, report.shape, line), max_row_bytes))
        except ValueError as exc:
            report.issues.append(Issue(line, str(exc)))
    report.issues.sort(key=lambda i: i.line)
    if not report.examples:
        raise DataRejected(report)
    if on_error == "stop" and report.issues:
        raise DataRejected(report)
    return report


def split(examples: list[Example], *, validation_fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """A seeded random train/validation split; at least one validation example once there are 5."""
    if not 0 <= validation_fraction < 1:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "the validation fraction must be at least 0 and below 1")
    order = list(examples)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * validation_fraction)
    if validation_fraction > 0 and n_val == 0 and len(order) >= 5:
        n_val = 1
    return order[n_val:], order[:n_val]


# ---- reading rows --------------------------------------------------------------------------------


def _decode_lines(raw: bytes, report: DataReport) -> list[tuple[int, str]]:
    """Each line decoded as UTF-8 on its own, so one badly encoded line names itself and the rest still read."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    out = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            out.append((number, chunk.decode("utf-8").rstrip("\r")))
        except UnicodeDecodeError as exc:
            report.issues.append(Issue(number, f"not UTF-8 text (byte 0x{chunk[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8"))
    return out


def _jsonl_rows(stream: IO[bytes], report: DataReport, max_row_bytes: int) -> list[tuple[int, Any]]:
    """JSONL, one line at a time: at most ``max_row_bytes`` (plus a chunk) is ever held of one line."""
    rows = []
    for number, chunk, length in _bounded_lines(stream, max_row_bytes):
        if chunk is None:
            report.issues.append(Issue(number, f"{_size(length)} long, more than the {_size(max_row_bytes)} one example may hold; split it into smaller examples"))
            continue
        if number == 1 and chunk.startswith(_BOM):
            chunk = chunk[len(_BOM):]
        try:
            text = chunk.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            report.issues.append(Issue(number, f"not UTF-8 text (byte 0x{chunk[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8"))
            continue
        if not text.strip():
            continue
        try:
            rows.append((number, json.loads(text)))
        except ValueError as exc:
            report.issues.append(Issue(number, f"malformed JSON ({exc.args[0].split(':')[0]})"))
    return rows


def _bounded_lines(stream: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """``(line number, line, its length in bytes)``; the line is None when it is longer than
    ``limit``: the rest of it is read and dropped a chunk at a time."""
    number = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        number += 1
        if line.endswith(b"\n") or len(line) <= limit:  # whole, or the file's last line
            yield number, line, len(line)
            continue
        length = len(line)
        while not line.endswith(b"\n"):
            line = stream.readline(_SKIP_CHUNK)
            if not line:
                break
            length += len(line)
        yield number, None, length


def _bounded(example: Example, max_row_bytes: int) -> Example:
    """The example, unless its text is over the limit or not valid Unicode (a lone surrogate
    from a JSON escape such as "\\ud800", which no tokenizer can encode)."""
    texts = [example.text] if example.text is not None else [m["content"] for m in example.messages]
    size = sum(len(t) for t in texts)
    if size > max_row_bytes:
        raise ValueError(f"{_size(size)} of text, more than the {_size(max_row_bytes)} one example may hold; split it into smaller examples")
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"invalid text: a lone surrogate (\\u{ord(text[exc.start]):04x}) at character {exc.start + 1}") from None
    return example


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB" if n >= 2**10 else f"{n} bytes"


def _rows(raw: bytes, suffix: str, report: DataReport) -> list[tuple[int, Any]]:
    """JSON and CSV, parsed whole (a JSON list is one document)."""
    lines = _decode_lines(raw, report)
    if suffix == ".csv":
        return _csv_rows(lines, report)
    return _json_rows(lines, report)


def _json_rows(lines: list[tuple[int, str]], report: DataReport) -> list[tuple[int, Any]]:
    """Items of a JSON array (or of the one list inside an object), each with the line it starts on."""
    text = "\n".join(t for _, t in lines)
    numbers = [n for n, _ in lines]
    decoder = json.JSONDecoder()

    def line_of(index: int) -> int:
        return numbers[min(text.count("\n", 0, index), len(numbers) - 1)] if numbers else 1

    try:
        whole = json.loads(text)
    except ValueError as exc:
        report.issues.append(Issue(line_of(getattr(exc, "pos", 0)), f"malformed JSON ({exc.args[0].split(':')[0]})"))
        return []
    if isinstance(whole, dict):
        lists = [v for v in whole.values() if isinstance(v, list)]
        if len(lists) != 1:
            report.issues.append(Issue(1, "a JSON file must hold a list of examples (or an object with one such list)"))
            return []
        key = next(k for k, v in whole.items() if isinstance(v, list))
        start = text.index("[", text.index(json.dumps(key)))
    elif isinstance(whole, list):
        start = text.index("[")
    else:
        report.issues.append(Issue(1, "a JSON file must hold a list of examples"))
        return []
    rows, index = [], start + 1
    while True:
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        if index >= len(text) or text[index] == "]":
            return rows
        obj, end = decoder.raw_decode(text, index)
        rows.append((line_of(index), obj))
        index = end


def _csv_rows(lines: list[tuple[int, str]], report: DataReport) -> list[tuple[int, Any]]:
    if not lines:
        return []
    numbers = [n for n, _ in lines]
    reader = csv.DictReader(io.StringIO("\n".join(t for _, t in lines), newline=""))
    rows = []
    try:
        for row in reader:
            line = numbers[min(reader.line_num - 1, len(numbers) - 1)]
            if None in row:
                report.issues.append(Issue(line, "more cells than the header has columns"))
                continue
            obj: dict[str, Any] = {k.strip(): v for k, v in row.items() if k}
            if "messages" in obj and isinstance(obj["messages"], str):
                try:
                    obj["messages"] = json.loads(obj["messages"])
                except ValueError:
                    report.issues.append(Issue(line, "the messages cell is not a JSON list of messages"))
                    continue
            rows.append((line, obj))
    except csv.Error as exc:
        report.issues.append(Issue(numbers[min(reader.line_num, len(numbers)) - 1], f"malformed CSV ({exc})"))
    return rows


# ---- shapes --------------------------------------------------------------------------------------


def _shape_of(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        return "messages"
    if "instruction" in obj or "output" in obj:
        return "instruction"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    if "text" in obj:
        return "text"
    return None


def _text(obj: dict[str, Any], key: str, *, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if optional:
            return ""
        raise ValueError(f"missing field '{key}'")
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be text, not {type(value).__name__}")
    if not value.strip() and not optional:
        raise ValueError(f"empty content in '{key}'")
    return value


def _example(obj: Any, shape: str | None, line: int) -> Example:
    if not isinstance(obj, dict):
        raise ValueError(f"a row must be a JSON object, not {type(obj).__name__}")
    if shape is None:
        raise ValueError("no known fields (messages, instruction/output, prompt/completion or text)")
    if shape == "messages":
        return Example(messages=_messages(obj.get("messages")), line=line)
    if shape == "instruction":
        instruction, extra = _text(obj, "instruction"), _text(obj, "input", optional=True).strip()
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        return Example(messages=({"role": "user", "content": prompt}, {"role": "assistant", "content": _text(obj, "output")}), line=line)
    if shape == "prompt_completion":
        return Example(messages=({"role": "user", "content": _text(obj, "prompt")}, {"role": "assistant", "content": _text(obj, "completion")}), line=line)
    return Example(text=_text(obj, "text"), line=line)


def _messages(raw: Any) -> tuple[dict[str, str], ...]:
    if raw is None:
        raise ValueError("missing field 'messages'")
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' must be a non-empty list")
    out = []
    for i, message in enumerate(raw, start=1):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is not an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i} has an unknown role {role!r} (use system, user or assistant)")
        content = message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"message {i} is missing its text content")
        if not content.strip():
            raise ValueError(f"message {i} ({role}) has empty content")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("no assistant message to learn from")
    return tuple(out)
