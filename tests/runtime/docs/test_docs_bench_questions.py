"""The shipped bench questions: enough of them, and each one's evidence is in the book once."""

from __future__ import annotations

import json
import re

from app.runtime.docs.bench import QUESTIONS, _resource, evidence_lines


def test_every_question_points_at_one_passage_of_the_book() -> None:
    spec = json.loads(_resource(QUESTIONS).read_text(encoding="utf-8"))
    text = _resource(spec["text"]).read_text(encoding="utf-8")
    flat = re.sub(r"\s+", " ", text)
    assert len(spec["questions"]) >= 50
    assert len({q["question"] for q in spec["questions"]}) == len(spec["questions"])
    for q in spec["questions"]:
        assert flat.count(re.sub(r"\s+", " ", q["evidence"])) == 1, q["evidence"]
        first, last = evidence_lines(text, q["evidence"])
        lines = text.split("\n")[first - 1:last]
        assert q["evidence"].split()[0] in lines[0] and q["evidence"].split()[-1] in lines[-1]
