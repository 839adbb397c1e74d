"""Lookahead: the Jacobi window's layout, the n-gram pool, and its flags."""
import pytest

from model.engine import DraftTree, StepFeedback
from model.lade import LookaheadDrafter
from model.lade.drafter import lookahead_layout


@pytest.mark.parametrize("level, window", [(3, 1), (5, 7), (4, 3)])
def test_each_window_token_sees_one_token_per_earlier_position(level, window):
    """A Jacobi trajectory: the root and the visible window tokens sit at positions 0..depth-1, once each."""
    depths, mask = lookahead_layout(level, window)
    assert len(depths) == (window - 1) + (level - 2) * window
    for row, depth in enumerate(depths):
        seen = sorted([0] + [depths[c] for c in range(len(depths)) if mask[row, c]])
        assert seen == list(range(depth + 1)), (row, depth, seen)


def test_pool_collects_ngrams_and_proposes_them_for_the_root():
    d = LookaheadDrafter(level=3, window=2, guess=2)
    d.begin_sequence([1, 2, 3])
    tree = d.propose([1, 2, 3], 64)
    assert tree.tokens == [] and len(tree.aux_tokens) == 1 + 2   # key of column 1, one level of 2 columns
    key1, (a, b) = d.keys[0], d.levels[0]
    feedback = StepFeedback([9], tree, [], [3], None, aux_argmax=[0, 0, 70, 80])
    d.observe(feedback)
    assert list(d.pool[3]) == [(a, 70)] and list(d.pool[key1]) == [(b, 80)]
    assert d.levels == [[70, 80]] and d.keys == [b]
    assert d.propose([1, 2, 3], 64).tokens == [a, 70]


def test_pool_keeps_the_most_recent_guess_ngrams_per_key():
    d = LookaheadDrafter(level=3, window=1, guess=2)
    d.begin_sequence([4])
    for top in (10, 11, 12):
        d.levels = [[5]]
        d.observe(StepFeedback([1], DraftTree([], []), [], [4], None, aux_argmax=[top]))
    assert list(d.pool[4]) == [(5, 11), (5, 12)]


def test_window_too_big_for_the_cap_drops_the_lookahead_branch():
    d = LookaheadDrafter()
    d.begin_sequence([1, 2, 3])
    assert d.propose([1, 2, 3], 10).aux_tokens == []


@pytest.mark.parametrize("flag", ["--level", "--window", "--guess"])
def test_flags_below_one_are_clear_errors(tiny_model_dir, tmp_path, flag):
    from test_cli import assert_one_line_error, run
    q = tmp_path / "q.jsonl"
    q.write_text('{"question_id": 1, "turns": ["hi"]}\n')
    result = run("-m", "evaluation.inference_lookahead", "--model-path", tiny_model_dir, "--question-file", str(q),
                 flag, "0")
    assert_one_line_error(result, f"{flag} must be at least")
