"""Tests for evaluation/data/grading.py: boxed extraction, reference answers and grading."""
import threading
import time

import pytest
from math_verify.errors import TimeoutException

from evaluation.data import grading
from evaluation.data.grading import extract_boxed, grade, grade_output, judge, reference_answer


@pytest.mark.parametrize("text, expected", [
    ("so the answer is \\boxed{42}.", "42"),
    ("first \\boxed{1}, finally \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("the answer is $\\boxed 5$.", "5"),
    ("the answer is \\boxed 7.", "7"),
    ("\\fbox{B}", "B"),
    ("\\boxed{ 12 }", "12"),
])
def test_extract_boxed_finds_last_box(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text", [None, "", "no box here: 42", "\\boxedx{3}", "\\boxed{unclosed"])
def test_extract_boxed_absent(text):
    assert extract_boxed(text) is None


def test_extract_boxed_skips_truncated_last_box():
    # A generation cut off inside its last box: the last complete box is used.
    assert extract_boxed("maybe \\boxed{3}, no wait \\boxed{\\frac{4}{") == "3"


def test_reference_answer_prefers_answer_field():
    assert reference_answer({"answer": " 70 ", "solution": "\\boxed{71}"}) == "70"
    assert reference_answer({"answer": 70}) == "70"


def test_reference_answer_from_solution():
    assert reference_answer({"solution": "long working ... so $\\boxed{\\frac{3}{4}}$."}) == "\\frac{3}{4}"
    assert reference_answer({"solution": "  10^-4 eV \n"}) == "10^-4 eV"
    assert reference_answer({"answer": "", "solution": "\\boxed{9}"}) == "9"
    assert reference_answer({"turns": ["q"]}) is None


@pytest.mark.parametrize("prediction, reference", [
    ("204", "204"),
    ("0.5", "\\frac{1}{2}"),
    ("\\dfrac{3}{4}", "0.75"),
    ("070", "70"),
    ("5.", "5"),
    ("x = 5", "5"),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\text{Evelyn}", "\\text{Evelyn}"),
])
def test_grade_math_equivalent(prediction, reference):
    assert grade(prediction, reference, "math500")


@pytest.mark.parametrize("prediction, reference", [
    ("2040", "204"),
    ("\\frac{1}{3}", "0.5"),
    ("(3,\\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("", "5"),
    (None, "5"),
    ("5", None),
])
def test_grade_math_wrong(prediction, reference):
    assert not grade(prediction, reference, "aime24")


@pytest.mark.parametrize("prediction", ["B", "b", "(B)", "\\text{B}", "\\textbf{(B)}", "$B$", "B.", "(B) Nitrogen"])
def test_grade_choice_letter_forms(prediction):
    assert grade(prediction, "B", "gpqa")


@pytest.mark.parametrize("prediction", ["C", "(A)", "\\text{D}", "Nitrogen", "AB", ""])
def test_grade_choice_letter_wrong(prediction):
    assert not grade(prediction, "B", "gpqa")


def test_grade_gpqa_free_text_is_normalized_string_match():
    assert grade("$10^-4 \\text{eV}$.", "10^-4 eV", "gpqa")
    assert not grade("10^-5 eV", "10^-4 eV", "gpqa")
    # gpqa never goes through math_verify, so numerically equal forms do not match
    assert not grade("0.5", "1/2", "gpqa")


def test_grade_falls_back_to_string_when_math_verify_cannot_parse(monkeypatch):
    monkeypatch.setattr(grading, "parse", lambda *a, **k: [])
    assert grade(" \\text{Yes}. ", "yes", "math500")
    # the strings differ and math_verify read nothing: unknown, not wrong
    assert judge("no", "yes", "math500") == (None, grading.PARSE_ERROR)


def test_grade_never_raises(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("sympy exploded")

    monkeypatch.setattr(grading, "verify", boom)
    assert grade("5", "5", "math500") is False    # math_verify's rule: a comparison that raises is no match
    monkeypatch.setattr(grading, "parse", boom)
    # unparseable on both sides: string match decides when it matches, else the grade is unknown
    assert grade("5", "5", "math500") is True
    assert judge("\\frac{", "}{", "math500") == (None, grading.PARSE_ERROR)
    monkeypatch.setattr(grading, "_string_match", boom)
    assert judge("b", "c", "gpqa") == (None, grading.GRADER_ERROR)


def test_parse_timeout_is_unknown_not_wrong(monkeypatch):
    def too_slow(*args, **kwargs):
        raise TimeoutException("Timeout during parsing")   # what parse(raise_on_error=True) raises

    monkeypatch.setattr(grading, "parse", too_slow)
    assert judge("7", "5", "math500") == (None, grading.TIMEOUT)
    assert judge("5", "5", "math500") == (True, None)      # the strings still agree
    assert grade_output("so \\boxed{7}", {"category": "aime24", "answer": "5"}) == {
        "extracted": "7", "reference": "5", "correct": None, "grade_error": "timeout"}


def test_verify_timeout_is_unknown_not_wrong(monkeypatch):
    """A real timeout through math_verify's own signal alarm: the sympy comparison sleeps past it."""
    import math_verify.grader

    monkeypatch.setattr(grading, "_MATH_TIMEOUT_S", 1)
    monkeypatch.setattr(math_verify.grader, "sympy_expr_eq", lambda *a, **k: time.sleep(3))
    started = time.monotonic()
    assert judge("7", "5", "math500") == (None, grading.TIMEOUT)
    assert time.monotonic() - started < 2.5


def test_verify_timeout_on_one_pair_does_not_hide_a_match(monkeypatch):
    def verify(gold, pred, **kwargs):
        if pred == "slow":
            raise TimeoutException("Timeout during comparison")
        return gold == pred

    monkeypatch.setattr(grading, "parse", lambda expr, **k: ["slow", "5"] if "5" in expr else ["4"])
    monkeypatch.setattr(grading, "verify", verify)
    assert judge("5", "5", "math500") == (True, None)
    assert judge("5", "4", "math500") == (None, grading.TIMEOUT)


def test_no_reference_is_unknown_and_no_answer_is_wrong():
    assert judge("5", None, "math500") == (None, grading.NO_REFERENCE)
    assert judge("5", " ", "gpqa") == (None, grading.NO_REFERENCE)
    assert judge(None, "5", "math500") == (False, None)
    assert grade_output("no box", {"category": "math500"})["grade_error"] == grading.NO_REFERENCE


def test_grade_works_outside_main_thread():
    # math_verify's signal-based timeouts would raise ValueError in a worker thread.
    results = []
    worker = threading.Thread(target=lambda: results.append(grade("0.5", "\\frac{1}{2}", "math500")))
    worker.start()
    worker.join()
    assert results == [True]


def test_grade_output():
    question = {"category": "aime25", "solution": "\\boxed{70}"}
    assert grade_output("17_b divides 97_b for b = 21, 49, so \\boxed{70}", question) == {
        "extracted": "70", "reference": "70", "correct": True, "grade_error": None}
    assert grade_output("I think it is 70", question) == {
        "extracted": None, "reference": "70", "correct": False, "grade_error": None}
    assert grade_output("\\boxed{71}", question)["correct"] is False
