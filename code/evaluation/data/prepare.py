"""Build the benchmark question file (FastChat JSONL) from Hugging Face datasets.

    python -m evaluation.prepare_data --output data/SpecTTS_Bench/question_cot.jsonl

Row conversion is done by pure `convert_<source>` functions and the hub access
by `load_rows`, so both can be tested offline.
"""

import argparse
import json
import os
import random
import sys
import tempfile
from dataclasses import dataclass

from evaluation.data.grading import extract_boxed

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = (
    "Please reason step by step, and put the letter of the correct option "
    "(A, B, C or D) as your final answer within \\boxed{}."
)
CHOICE_LETTERS = "ABCD"


@dataclass(frozen=True)
class Source:
    path: str
    config: str | None
    split: str


SOURCES = {
    "aime24": Source("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": Source("yentinglin/aime_2025", None, "train"),
    "math500": Source("HuggingFaceH4/MATH-500", None, "test"),
    "gpqa": Source("Idavidrein/gpqa", "gpqa_diamond", "train"),
}
DEFAULT_CATEGORIES = list(SOURCES)  # same order as the reference benchmark file


class UserError(Exception):
    """A problem the user can fix; reported as one line, exit status 2."""


def _first_field(row: dict, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = row.get(name)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _with_instruction(text: str, instruction: str) -> str:
    return f"{text.strip()}\n\n{instruction}"


def _row(text: str, answer: str, **extra) -> dict:
    """A question row without id and category (added when the file is assembled)."""
    row = {"turns": [text], "answer": answer, "solution": f"\\boxed{{{answer}}}"}
    row.update({k: v for k, v in extra.items() if v is not None})
    return row


def convert_math500(row: dict) -> dict:
    return _row(
        _with_instruction(row["problem"], MATH_INSTRUCTION),
        str(row["answer"]).strip(),
        subject=row.get("subject"),
        level=row.get("level"),
    )


def convert_aime(row: dict) -> dict:
    """AIME rows; field names differ between uploads, so accept the common variants."""
    problem = _first_field(row, ("problem", "question", "Problem", "Question"))
    answer = _first_field(row, ("answer", "Answer", "expected_answer"))
    if answer is None:
        solution = _first_field(row, ("solution", "Solution"))
        answer = (extract_boxed(solution) or solution) if solution else None
    if problem is None or answer is None:
        raise UserError(f"unexpected AIME row format, fields: {sorted(row)}")
    return _row(_with_instruction(problem, MATH_INSTRUCTION), answer)


def convert_gpqa(row: dict, rng: random.Random) -> dict:
    """Multiple choice: the four options are shuffled by rng, the answer is the correct letter."""
    correct = str(row["Correct Answer"]).strip()
    options = [correct] + [str(row[f"Incorrect Answer {i}"]).strip() for i in (1, 2, 3)]
    rng.shuffle(options)
    letter = CHOICE_LETTERS[options.index(correct)]
    listing = "\n".join(f"({l}) {o}" for l, o in zip(CHOICE_LETTERS, options))
    text = f"{str(row['Question']).strip()}\n\n{listing}\n\n{CHOICE_INSTRUCTION}"
    return _row(text, letter, domain=row.get("High-level domain"))


def convert(category: str, row: dict, index: int, seed: int) -> dict:
    if category == "math500":
        return convert_math500(row)
    if category in ("aime24", "aime25"):
        return convert_aime(row)
    if category == "gpqa":
        # Seeded per source row, so an option order does not depend on which rows were sampled.
        return convert_gpqa(row, random.Random(f"{seed}:{index}"))
    raise UserError(f"unknown category {category!r}")


def load_rows(category: str) -> list[dict]:
    """All rows of a category's source dataset, from the Hugging Face hub."""
    import datasets  # slow import, only needed when really downloading

    source = SOURCES[category]
    try:
        dataset = datasets.load_dataset(source.path, source.config, split=source.split)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"could not load {source.path} from the Hugging Face hub: {reason}") from None
    return [dict(row) for row in dataset]


def sample_indices(count: int, per_category: int | None, seed: int) -> list[int]:
    """Indices of the rows to keep, in original order; None keeps all."""
    if per_category is None or per_category >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), per_category))


def build_questions(categories: list[str], per_category: int | None, seed: int) -> list[dict]:
    questions = []
    for category in categories:
        rows = load_rows(category)
        if per_category is not None and per_category > len(rows):
            print(f"note: {category} has only {len(rows)} rows, using all", file=sys.stderr)
        for index in sample_indices(len(rows), per_category, seed):
            question = convert(category, rows[index], index, seed)
            questions.append({"question_id": len(questions) + 1, "category": category, **question})
    return questions


def write_jsonl_atomic(path: str, rows: list[dict]) -> None:
    """Write via a temp file in the same folder, so a failed run leaves no partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="question file to write (JSONL)")
    parser.add_argument("--per-category", type=int, default=30, help="questions sampled per category")
    parser.add_argument("--all", action="store_true", help="keep every question (ignores --per-category)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling and option shuffling")
    parser.add_argument("--categories", nargs="+", default=DEFAULT_CATEGORIES,
                        help=f"categories to include, from: {' '.join(SOURCES)}")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    unknown = [c for c in args.categories if c not in SOURCES]
    if unknown:
        raise UserError(f"unknown category {unknown[0]!r}; choose from: {', '.join(SOURCES)}")
    if len(set(args.categories)) != len(args.categories):
        raise UserError("a category is listed twice in --categories")
    if not args.all and args.per_category < 1:
        raise UserError("--per-category must be at least 1")
    if os.path.exists(args.output) and not args.force:
        raise UserError(f"{args.output} already exists; pass --force to overwrite it")
    questions = build_questions(args.categories, None if args.all else args.per_category, args.seed)
    write_jsonl_atomic(args.output, questions)
    print(f"wrote {len(questions)} questions to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # The hub client logs every retry; the single error line below is enough.
        from huggingface_hub.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
