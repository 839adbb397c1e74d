"""Question files (FastChat style): one JSON object per line with question_id, category, turns."""
from __future__ import annotations

import json

from model.errors import UserError


def load_questions(path: str, begin: int | None = None, end: int | None = None) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise UserError(f"question file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read question file {path}: {exc}") from None
    questions, seen = [], set()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            q = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(q, dict) or "question_id" not in q:
            raise UserError(f"{where}: a question needs a question_id")
        turns = q.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise UserError(f"{where}: 'turns' must be a non-empty list of strings")
        if q["question_id"] in seen:
            raise UserError(f"{where}: question_id {q['question_id']!r} appears twice")
        seen.add(q["question_id"])
        q.setdefault("category", "default")
        questions.append(q)
    if not questions:
        raise UserError(f"question file {path} holds no questions")
    selected = questions[begin:end]
    if not selected:
        raise UserError(f"--question-begin {begin} / --question-end {end} select none of the {len(questions)} "
                        f"questions in {path}")
    return selected
