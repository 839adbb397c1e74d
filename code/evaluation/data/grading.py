"""Answer extraction and grading for the benchmark categories.

Math categories are compared with math_verify (symbolic equivalence); GPQA and
anything math_verify cannot parse fall back to a normalized string match.
"""

import re
import threading

from math_verify import parse, verify

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm)\{([^{}]*)\}")
_LETTER = re.compile(r"^\(?([a-z])\)?(?:$|[).:\s])")
_MATH_TIMEOUT_S = 5


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at text[start], and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None  # unbalanced: the output was cut off inside the box


def _box_contents(text: str) -> list[str]:
    """All complete \\boxed / \\fbox arguments, in order of appearance."""
    found = []
    pattern = "|".join(re.escape(c) for c in _BOX_COMMANDS)
    for match in re.finditer(pattern, text):
        pos = match.end()
        if pos < len(text) and text[pos] == "{":
            group = _braced(text, pos)
            if group is not None:
                found.append(group[0])
        elif pos < len(text) and text[pos] == " ":
            # "\boxed 5": the argument is the next whitespace-delimited token
            token = re.match(r"\s*([^\s$]+)", text[pos:])
            if token:
                found.append(token.group(1).rstrip(".,;"))
        # anything else (e.g. "\boxedfoo") is a different command
    return found


def extract_boxed(text: str | None) -> str | None:
    """Content of the last complete \\boxed{...} (or \\fbox{...}) in text, else None.

    A box left unclosed at the end (a truncated generation) is skipped, so an
    earlier complete box, if any, is returned.
    """
    if not text:
        return None
    contents = _box_contents(text)
    return contents[-1].strip() if contents else None


def reference_answer(question: dict) -> str | None:
    """Gold answer of a question row: "answer", else the boxed solution, else the solution."""
    answer = question.get("answer")
    if answer is not None and str(answer).strip():
        return str(answer).strip()
    solution = question.get("solution")
    if solution is None or not str(solution).strip():
        return None
    solution = str(solution)
    boxed = extract_boxed(solution)
    return boxed if boxed is not None else solution.strip()


def _normalize(text: str) -> str:
    """Lowercased answer without $ delimiters, \\text{} wrappers, spaces or a final period."""
    s = text.strip().rstrip(".").strip()  # a period may sit outside the $...$
    while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    previous = None
    while previous != s:  # unwrap nested \text{\textbf{...}}
        previous, s = s, _TEXT_WRAPPER.sub(r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\s+", "", s).lower()
    return s.rstrip(".")


def _choice_letter(normalized: str) -> str | None:
    """The option letter of a normalized multiple-choice answer like "b", "(b)" or "(b)text"."""
    match = _LETTER.match(normalized)
    return match.group(1) if match else None


def _string_match(prediction: str, reference: str) -> bool:
    pred, ref = _normalize(prediction), _normalize(reference)
    if not pred or not ref:
        return False
    ref_letter = _choice_letter(ref)
    if ref_letter is not None and len(ref.strip("()")) == 1:
        # reference is a bare option letter: compare letters only
        return _choice_letter(pred) == ref_letter
    return pred == ref


def _math_parse(expr: str, timeout: int | None) -> list:
    # Wrapping in \boxed{} makes math_verify take the whole expression as the answer
    # (with $...$ it may keep only a leading number, e.g. "10^-4 eV" -> 10).
    return parse(f"\\boxed{{{expr}}}", parsing_timeout=timeout)


def _math_equal(prediction: str, reference: str) -> bool | None:
    """math_verify verdict, or None when either side cannot be parsed."""
    # math_verify's timeouts use signal.alarm, which only works in the main thread.
    timeout = _MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = _math_parse(reference, timeout)
        pred = _math_parse(prediction.strip().rstrip("."), timeout)
    except Exception:
        return None
    if not gold or not pred:
        return None
    try:
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except Exception:
        return False


def grade(prediction: str | None, reference: str | None, category: str) -> bool:
    """True when prediction matches reference for this category; never raises."""
    if prediction is None or reference is None:
        return False
    prediction, reference = str(prediction), str(reference)
    if not prediction.strip() or not reference.strip():
        return False
    try:
        if "gpqa" not in (category or "").lower():
            verdict = _math_equal(prediction, reference)
            if verdict is not None:
                return verdict
        return _string_match(prediction, reference)
    except Exception:
        return False


def grade_output(text: str, question: dict) -> dict:
    """Extract the final boxed answer from a model output and grade it."""
    extracted = extract_boxed(text)
    reference = reference_answer(question)
    correct = grade(extracted, reference, question.get("category", ""))
    return {"extracted": extracted, "reference": reference, "correct": correct}
