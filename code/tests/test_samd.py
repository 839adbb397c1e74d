"""Tests for the SAM drafter: the suffix automaton against brute force, drafting rules, static SAM files, CLI."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.engine.drafter import Drafter, StepFeedback
from model.errors import UserError
from model.samd.automaton import Matcher, SuffixAutomaton
from model.samd.build_static_sam import main as build_main
from model.samd.drafter import SamDrafter
from model.samd.static_sam import StaticSam, join_documents, tokenizer_identity

CODE_DIR = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat and dog ran to park big red blue sky was very".split()


def word_tokenizer(words=WORDS):
    """A word-level tokenizer over a fixed vocabulary: offline, deterministic, one id per word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")


def occurs(seq, text) -> bool:
    n = len(seq)
    return any(text[i:i + n] == seq for i in range(len(text) - n + 1))


def first_end(seq, text) -> int:
    n = len(seq)
    return next(i + n - 1 for i in range(len(text) - n + 1) if text[i:i + n] == seq)


def longest_suffix_in(stream, text) -> int:
    """Brute force: the longest suffix of `stream` that is a substring of `text`."""
    best = 0
    for n in range(1, len(stream) + 1):
        if occurs(stream[-n:], text):
            best = n
    return best


def feed(drafter, tokens):
    drafter.observe(StepFeedback(list(tokens), None, [], [], None))


# --- automaton -------------------------------------------------------------------------------------

@pytest.mark.parametrize("alphabet", [2, 3, 5])
def test_automaton_recognises_exactly_the_substrings(alphabet):
    rng = random.Random(alphabet)
    text = [rng.randrange(alphabet) for _ in range(70)]
    sam = SuffixAutomaton(text)
    assert sam.num_states <= 2 * len(text)
    for i in range(len(text)):
        for j in range(i + 1, len(text) + 1):
            assert sam.contains(text[i:j])
    for _ in range(400):
        probe = [rng.randrange(alphabet + 1) for _ in range(rng.randrange(1, 10))]
        assert sam.contains(probe) == occurs(probe, text)


def test_first_end_is_the_first_occurrence_of_every_substring():
    rng = random.Random(7)
    text = [rng.randrange(3) for _ in range(60)]
    sam = SuffixAutomaton(text)
    for i in range(len(text)):
        for j in range(i + 1, len(text) + 1):
            state = 0
            for token in text[i:j]:
                state = sam.next[state][token]
            assert sam.first_end[state] == first_end(text[i:j], text)
            assert sam.length[state] >= j - i


def test_incremental_equals_built_at_once():
    rng = random.Random(3)
    text = [rng.randrange(4) for _ in range(300)]
    grown = SuffixAutomaton()
    for start in range(0, len(text), 37):
        grown.extend_all(text[start:start + 37])
    whole = SuffixAutomaton(text)
    assert (grown.next, grown.link, grown.length, grown.first_end, grown.last) == \
           (whole.next, whole.link, whole.length, whole.first_end, whole.last)


@pytest.mark.parametrize("seed", range(4))
def test_matcher_length_is_the_longest_suffix_match(seed):
    rng = random.Random(seed)
    alphabet = 2 + seed
    text = [rng.randrange(alphabet) for _ in range(80)]
    matcher = Matcher(SuffixAutomaton(text))
    stream = []
    for _ in range(150):
        stream.append(rng.randrange(alphabet + 1))   # the extra symbol never occurs in `text`
        matcher.advance(stream[-1])
        assert matcher.length == longest_suffix_in(stream, text)
        assert matcher.automaton.length[matcher.state] >= matcher.length


@pytest.mark.parametrize("seed", range(3))
def test_repeat_match_is_the_longest_suffix_seen_before(seed):
    rng = random.Random(seed)
    sam = SuffixAutomaton()
    for _ in range(150):
        sam.extend(rng.randrange(2 + seed))
        tokens = sam.tokens
        state, length = sam.repeat_match()
        assert length == longest_suffix_in(tokens, tokens[:-1])
        if length:
            assert sam.first_end[state] < len(tokens) - 1   # an earlier occurrence, never the current one


# --- drafter ---------------------------------------------------------------------------------------

def test_drafts_the_true_continuation_of_a_repeated_passage():
    rng = random.Random(0)
    passage = [rng.randrange(1000) for _ in range(80)]
    drafter = SamDrafter()
    drafter.begin_sequence(passage + passage[:20])
    tree = drafter.propose([], 128)
    assert tree.source == "sam_dyn"
    assert tree.tokens == passage[20:20 + len(tree)]
    assert tree.parents == list(range(-1, len(tree) - 1))
    # Follow the passage as an engine would: every draft is the truth (the passage keeps repeating).
    looped = passage * 3
    for step in range(20, 100, 7):
        feed(drafter, looped[step:step + 7])
        tree = drafter.propose([], 128)
        assert len(tree) == 39 and tree.tokens == looped[step + 7:step + 7 + 39]


def test_no_draft_on_random_text():
    rng = random.Random(1)
    drafter = SamDrafter()
    drafter.begin_sequence([rng.randrange(50_000) for _ in range(100)])
    for _ in range(50):
        assert drafter.propose([], 128) is None
        feed(drafter, [rng.randrange(50_000)])


def controlled_match(match_length: int) -> tuple[list[int], list[int]]:
    """A prompt whose longest repeated suffix has exactly `match_length` tokens; the continuation after it."""
    segment = list(range(1000, 1000 + match_length))
    filler = list(range(2000, 2100))
    return segment + filler + segment, filler


@pytest.mark.parametrize("match_length", [1, 4, 5, 6, 7, 9, 10, 30])
def test_draft_length_rule(match_length):
    drafter = SamDrafter(n_predicts=40, len_threshold=5, alpha=4.0)
    prompt, continuation = controlled_match(match_length)
    drafter.begin_sequence(prompt)
    tree = drafter.propose(prompt, 128)
    if match_length < 5:
        assert tree is None
        return
    expected = min(40, 1 + 4 * match_length) - 1
    assert tree.tokens == continuation[:expected]
    assert len(drafter.propose(prompt, 8)) == 8           # the engine's node cap wins


def test_draft_stops_where_the_text_ends():
    drafter = SamDrafter()
    segment = list(range(10, 20))
    drafter.begin_sequence(segment + [7, 8] + segment)   # after the first occurrence: 7, 8, then the segment
    tree = drafter.propose([], 128)
    assert tree.tokens == [7, 8] + segment              # all that exists, up to the last token


def test_loop_drafts_full_length_from_an_earlier_period():
    period = [5, 6, 7]
    drafter = SamDrafter(n_predicts=40)
    drafter.begin_sequence(period * 30)
    tree = drafter.propose([], 128)
    assert len(tree) == 39
    assert tree.tokens == (period * 20)[:39]


def test_state_carries_across_sequences_until_reset():
    rng = random.Random(2)
    first = [rng.randrange(10_000) for _ in range(60)]
    drafter = SamDrafter()
    drafter.begin_sequence(first[:30])
    feed(drafter, first[30:])
    second_prompt = [rng.randrange(10_000) for _ in range(5)] + first[10:20]
    drafter.begin_sequence(second_prompt)
    tree = drafter.propose(second_prompt, 128)
    assert tree is not None and tree.tokens == first[20:20 + len(tree)]
    drafter.reset()
    drafter.begin_sequence(second_prompt)
    assert drafter.propose(second_prompt, 128) is None


def test_match_does_not_reach_into_the_previous_sequence():
    drafter = SamDrafter(len_threshold=4)
    drafter.begin_sequence([7, 1, 2, 3, 8, 8, 8, 7])
    drafter.begin_sequence([1, 2, 3])      # "7 1 2 3" repeats only across the sequence boundary
    assert drafter.propose([], 128) is None
    feed(drafter, [8])                     # "1 2 3 8" lies inside this sequence
    assert drafter.propose([], 128).tokens == [8, 8, 7, 1, 2, 3, 8]


class RecordingFallback(Drafter):
    """A fallback drafter that records what SAM asks of it (the Drafter interface supplies the hooks it skips)."""
    name, wants_topk = "fake", 3

    def __init__(self):
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def begin_sequence(self, prompt):
        self.calls.append("begin")

    def observe(self, feedback):
        self.calls.append("observe")

    def propose(self, tokens, max_nodes):
        self.calls.append("propose")
        return None

    def parameters(self):
        return {"k": 1}


def test_fallback_is_asked_below_the_threshold_and_kept_in_step():
    fallback = RecordingFallback()
    drafter = SamDrafter(fallback=fallback)
    assert drafter.wants_topk == 3
    drafter.reset()
    drafter.begin_sequence([1, 2, 3])
    drafter.propose([1, 2, 3], 16)
    feed(drafter, [4])
    assert fallback.calls == ["reset", "begin", "propose", "observe"]
    assert drafter.parameters()["fallback"] == {"name": "fake", "k": 1}


def test_bad_knobs_are_user_errors():
    with pytest.raises(UserError):
        SamDrafter(n_predicts=1)
    with pytest.raises(UserError):
        SamDrafter(len_threshold=0)


# --- static SAM ------------------------------------------------------------------------------------

CORPUS = ["the cat sat on a mat and the dog ran to the park",
          "a big red dog was very blue"]


def build_static(tokenizer):
    docs = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in CORPUS]
    return StaticSam.build(join_documents(docs, tokenizer.eos_token_id), tokenizer)


def test_static_round_trip_and_static_draft(tmp_path):
    tokenizer = word_tokenizer()
    sam = build_static(tokenizer)
    path = tmp_path / "corpus.sam"
    sam.save(str(path))
    loaded = StaticSam.load(str(path), tokenizer)
    assert loaded.automaton.tokens == sam.automaton.tokens
    assert loaded.automaton.tokens.count(tokenizer.eos_token_id) == 2
    assert (loaded.tokenizer_class, loaded.tokenizer_sha256) == tokenizer_identity(tokenizer)
    with pytest.raises(UserError, match="already exists"):
        sam.save(str(path))

    drafter = SamDrafter(len_threshold=2, len_bias=1, static=loaded)
    prompt = tokenizer("big red the cat sat on", add_special_tokens=False)["input_ids"]
    drafter.begin_sequence(prompt)
    tree = drafter.propose(prompt, 128)
    assert tree.source == "sam_static"
    expected = tokenizer("a mat and the dog ran to the park", add_special_tokens=False)["input_ids"]
    assert tree.tokens[:len(expected)] == expected
    assert drafter.parameters()["static_sam"] == str(path)


def test_static_with_another_tokenizer_is_refused(tmp_path):
    path = tmp_path / "corpus.sam"
    build_static(word_tokenizer()).save(str(path))
    other = word_tokenizer(WORDS[::-1])
    with pytest.raises(UserError, match=r"static SAM .*corpus\.sam was built with another tokenizer \("):
        StaticSam.load(str(path), other)


def test_missing_or_corrupt_static_file(tmp_path):
    tokenizer = word_tokenizer()
    with pytest.raises(UserError, match="does not exist"):
        StaticSam.load(str(tmp_path / "absent.sam"), tokenizer)
    junk = tmp_path / "junk.sam"
    junk.write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a readable static SAM file"):
        StaticSam.load(str(junk), tokenizer)
    wrong = tmp_path / "wrong.sam"
    with open(wrong, "wb") as f:
        np.savez(f, format=np.array("something-else"), tokenizer_class=np.array("x"),
                 tokenizer_sha256=np.array("y"), tokens=np.zeros(3, np.int32))
    with pytest.raises(UserError, match="has format"):
        StaticSam.load(str(wrong), tokenizer)


# --- build_static_sam CLI --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("word-tokenizer")
    word_tokenizer().save_pretrained(path)
    return str(path)


def test_cli_reads_every_corpus_format(tmp_path, tokenizer_dir, capsys):
    lines = [{"text": "the cat sat"},
             {"turns": ["on a mat", "and the dog"]},
             {"conversations": [{"from": "human", "value": "ran to"}, {"from": "gpt", "value": "the park"}]},
             {"messages": [{"role": "user", "content": "big red"}]},
             {"question_id": 1, "choices": [{"index": 0, "turns": ["dog was", "very blue"]}]}]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    txt = tmp_path / "notes.txt"
    txt.write_text("the sky was blue\n")
    out = tmp_path / "out.sam"
    assert build_main(["--corpus", str(jsonl), str(txt), "--tokenizer-path", tokenizer_dir,
                       "--output", str(out)]) == 0
    assert "9 documents" in capsys.readouterr().out
    tokenizer = word_tokenizer()
    sam = StaticSam.load(str(out), tokenizer)
    text = " ".join(["the cat sat", "on a mat", "and the dog", "ran to", "the park", "big red", "dog was",
                     "very blue", "the sky was blue"])
    words = [t for t in sam.automaton.tokens if t != tokenizer.eos_token_id]
    assert words == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert sam.automaton.tokens.count(tokenizer.eos_token_id) == 9

    capped = tmp_path / "capped.sam"
    assert build_main(["--corpus", str(jsonl), "--tokenizer-path", tokenizer_dir, "--output", str(capped),
                       "--max-tokens", "5"]) == 0
    assert len(StaticSam.load(str(capped), tokenizer)) == 5


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "model.samd.build_static_sam", *args], cwd=CODE_DIR,
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_inputs_are_one_line_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "the cat"}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "the cat"}) + "\n{oops\n")
    fieldless = tmp_path / "fieldless.jsonl"
    fieldless.write_text(json.dumps({"id": 3}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n" + json.dumps({"text": "   "}) + "\n")
    existing = tmp_path / "existing.sam"
    existing.write_bytes(b"")
    out = str(tmp_path / "out.sam")
    cases = [
        (["--corpus", str(tmp_path / "absent.jsonl")], "does not exist"),
        (["--corpus", str(bad)], f"{bad}:2: not valid JSON"),
        (["--corpus", str(fieldless)], f"{fieldless}:1: no text found"),
        (["--corpus", str(empty)], "the corpus holds no text"),
        (["--corpus", str(good), "--output", str(existing)], "already exists"),
        (["--corpus", str(good), "--max-tokens", "0"], "--max-tokens must be a positive integer"),
    ]
    for args, message in cases:
        args = args + (["--output", out] if "--output" not in args else [])
        result = run_cli(*args, "--tokenizer-path", "unused")
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert existing.read_bytes() == b""


# --- in the engine ---------------------------------------------------------------------------------

def test_greedy_output_is_unchanged_and_sam_drafts_get_accepted():
    from conftest import tiny_model
    from model.engine import Drafter, SamplingConfig, SpeculativeEngine
    engine = SpeculativeEngine(tiny_model("llama"))
    prompt = [5, 17, 33, 5, 17, 33, 5, 17, 33, 5, 17]
    plain = engine.generate(prompt, Drafter(), 80, SamplingConfig())
    drafter = SamDrafter(len_threshold=2)
    drafter.reset()
    sam = engine.generate(prompt, drafter, 80, SamplingConfig())
    assert sam.tokens == plain.tokens
    assert any(s.source == "sam_dyn" and s.accepted > 1 for s in sam.steps)
    assert len(sam.steps) < len(plain.steps)
