"""Answer extraction and grading for the benchmark categories.

Math categories are compared with math_verify (symbolic equivalence); GPQA and
anything math_verify cannot parse fall back to a normalized string match.

A turn that cannot be graded is unknown, not wrong: `correct` is None and
`grade_error` says why (one of GRADE_ERRORS). A missing prediction (no final
box) is still wrong: the model gave no answer.
"""

import itertools
import re
import threading
from typing import NamedTuple

from math_verify import parse, verify
from math_verify.errors import TimeoutException

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm)\{([^{}]*)\}")
_LETTER = re.compile(r"^\(?([a-z])\)?(?:$|[).:\s])")
_MATH_TIMEOUT_S = 5

# Why a turn could not be graded (the answer line's per-turn "grade_error"; its "correct" is then null).
TIMEOUT = "timeout"              # math_verify ran past its time limit parsing or comparing, and the strings differ
PARSE_ERROR = "parse_error"      # math_verify could not read the prediction or the reference, and the strings differ
NO_REFERENCE = "no_reference"    # the question has no gold answer
GRADER_ERROR = "grader_error"    # anything else the grader raised
GRADE_ERRORS = (TIMEOUT, PARSE_ERROR, NO_REFERENCE, GRADER_ERROR)


class Verdict(NamedTuple):
    correct: bool | None        # None: unknown
    error: str | None = None    # why it is unknown (one of GRADE_ERRORS), else None


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
    # raise_on_error: by default math_verify turns a timeout into an empty parse, which would read as "wrong".
    return parse(f"\\boxed{{{expr}}}", parsing_timeout=timeout, raise_on_error=True)


def _math_verdict(prediction: str, reference: str) -> Verdict:
    """math_verify's verdict, or Verdict(None, why it gave none): TIMEOUT or PARSE_ERROR."""
    # math_verify's timeouts use signal.alarm, which only works in the main thread.
    timeout = _MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = _math_parse(reference, timeout)
        pred = _math_parse(prediction.strip().rstrip("."), timeout)
    except TimeoutException:        # a BaseException, not an Exception
        return Verdict(None, TIMEOUT)
    except Exception:
        return Verdict(None, PARSE_ERROR)
    if not gold or not pred:
        return Verdict(None, PARSE_ERROR)
    # One pair at a time (as verify() does over the lists), so that a timeout on one pair neither hides a match on
    # another nor passes for a mismatch.
    timed_out = False
    for g, p in itertools.product(gold, pred):
        try:
            if verify(g, p, timeout_seconds=timeout, raise_on_error=True):
                return Verdict(True)
        except TimeoutException:
            timed_out = True
        except Exception:
            pass   # math_verify's own rule: a comparison that raises is not a match
    return Verdict(None, TIMEOUT) if timed_out else Verdict(False)


def judge(prediction: str | None, reference: str | None, category: str) -> Verdict:
    """Whether prediction matches reference for this category, or unknown with the reason; never raises."""
    if reference is None or not str(reference).strip():
        return Verdict(None, NO_REFERENCE)
    if prediction is None or not str(prediction).strip():
        return Verdict(False)
    prediction, reference = str(prediction), str(reference)
    try:
        if "gpqa" in (category or "").lower():
            return Verdict(_string_match(prediction, reference))
        verdict = _math_verdict(prediction, reference)
        if verdict.correct is None and _string_match(prediction, reference):
            return Verdict(True)   # math_verify could not tell, but the normalized strings agree
        return verdict
    except Exception:
        return Verdict(None, GRADER_ERROR)


def grade(prediction: str | None, reference: str | None, category: str) -> bool | None:
    """True / False when prediction matches reference or not, None when that cannot be told (judge() says why)."""
    return judge(prediction, reference, category).correct


def grade_output(text: str, question: dict) -> dict:
    """Extract the final boxed answer from a model output and grade it; grade_error is None unless correct is."""
    extracted = extract_boxed(text)
    reference = reference_answer(question)
    verdict = judge(extracted, reference, question.get("category", ""))
    return {"extracted": extracted, "reference": reference, "correct": verdict.correct,
            "grade_error": verdict.error}
