"""Tests for REST: the datastore (suffix array, retrieval against brute force, files), the drafter's
tree, the datastore builder CLI, the inference CLI's early checks, and greedy equality in the engine."""
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from model.errors import UserError
from model.rest.build_datastore import main as build_main
from model.rest.datastore import Datastore, read_header
from model.rest.drafter import RestDrafter, top_nodes_tree, trie_nodes
from model.samd.static_sam import tokenizer_identity

CODE_DIR = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat and dog ran to park big red blue sky was very".split()
SEP = 0


def word_tokenizer(first_id: int = 2):
    """A word-level tokenizer, offline; word ids start at `first_id` (70000: ids a u16 file would mangle)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"[UNK]": 0, "<eos>": 1, **{w: first_id + i for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")


def synthetic(stream) -> Datastore:
    return Datastore.build(stream, SEP, "Synthetic", "0" * 64)


def random_stream(rng, n, alphabet):
    """Ids 1..alphabet with a separator (0) now and then."""
    return [0 if rng.random() < 0.03 else rng.randint(1, alphabet) for _ in range(n)]


def brute_search(stream, context, max_suffix, min_suffix, max_continuation):
    """(longest matching suffix length, Counter of non-empty continuations) by scanning every position."""
    for length in range(min(max_suffix, len(context)), min_suffix - 1, -1):
        pattern = context[-length:]
        ends = [e for e in range(length, len(stream) + 1) if stream[e - length:e] == pattern]
        if ends:
            counts = Counter()
            for e in ends:
                cont = stream[e:e + max_continuation]
                cont = cont[:cont.index(SEP)] if SEP in cont else cont
                if cont:
                    counts[tuple(cont)] += 1
            return length, len(ends), counts
    return 0, 0, Counter()


# --- datastore -------------------------------------------------------------------------------------

def test_backward_suffix_array_orders_every_position_by_the_text_before_it():
    rng = random.Random(1)
    stream = random_stream(rng, 400, 3) + [70001, 5]
    ds = synthetic(stream)
    ends = ds.ends.tolist()
    assert sorted(ends) == list(range(1, len(stream) + 1))
    keys = [stream[e - 1::-1] for e in ends]
    assert keys == sorted(keys)


@pytest.mark.parametrize("alphabet", [2, 3, 6])
def test_search_finds_the_longest_suffix_and_its_continuations(alphabet):
    rng = random.Random(alphabet)
    stream = random_stream(rng, 1500, alphabet)
    ds = synthetic(stream)
    for trial in range(150):
        if trial % 2:   # a stretch of the corpus, maybe with a changed last token: long matches
            start = rng.randrange(len(stream) - 30)
            context = stream[start:start + rng.randrange(1, 25)]
            if rng.random() < 0.3:
                context[-1] = rng.randint(1, alphabet)
        else:
            context = [rng.randint(0, alphabet + 1) for _ in range(rng.randrange(1, 20))]
        max_suffix, min_suffix = rng.choice([(16, 2), (8, 1), (4, 3)])
        length, occurrences, counts = brute_search(stream, context, max_suffix, min_suffix, 6)
        result = ds.search(context, max_suffix, min_suffix, max_occurrences=10**6, max_continuation=6)
        assert (result.length, result.occurrences) == (length, occurrences), context
        assert dict(result.continuations) == dict(counts)
        found = [c for _, c in result.continuations]
        assert found == sorted(found, reverse=True)


def test_many_occurrences_are_sampled_across_the_range():
    ds = synthetic(([7, 8, 9] + [0]) * 3000)
    result = ds.search([7, 8], max_occurrences=100, max_continuation=4)
    assert result.length == 2 and result.occurrences == 3000
    assert result.continuations == [((9,), 100)]
    assert ds.search([5, 6]).length == 0
    assert ds.search([9]).length == 0   # shorter than min_suffix


def test_large_ids_survive_a_save_load_round_trip(tmp_path):
    tokenizer = word_tokenizer(first_id=70000)
    stream = [70000, 70001, 70002, 1, 70016, 70000, 1]
    ds = Datastore.build(stream, 1, *tokenizer_identity(tokenizer))
    path = tmp_path / "big.idx"
    ds.save(str(path))
    loaded = Datastore.load(str(path), tokenizer)
    assert loaded.tokens.tolist() == stream and loaded.ends.tolist() == ds.ends.tolist()
    assert loaded.separator_id == 1 and loaded.path == str(path)
    assert loaded.search([70016, 70000], min_suffix=1).length == 2
    assert loaded.search([70000], min_suffix=1).continuations == [((70001, 70002), 1)]
    with pytest.raises(UserError, match="already exists"):
        ds.save(str(path))


def test_loading_bad_files_gives_one_line_errors(tmp_path):
    tokenizer = word_tokenizer()
    path = tmp_path / "good.idx"
    Datastore.build([2, 3, 4, 1], 1, *tokenizer_identity(tokenizer)).save(str(path))
    data = path.read_bytes()
    cases = {"absent.idx": None, "truncated.idx": data[:-3], "magic.idx": b"NOTREST!" + data[8:],
             "header.idx": data[:12] + b"!" + data[13:], "empty.idx": b""}
    messages = {"absent.idx": "no such file", "truncated.idx": "truncated or corrupt",
                "magic.idx": "not a REST datastore", "header.idx": "unreadable header", "empty.idx": "not a REST"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=messages[name]) as error:
            Datastore.load(str(tmp_path / name), tokenizer)
        assert "\n" not in str(error.value)
    bad_ends = tmp_path / "ends.idx"
    bad_ends.write_bytes(data[:-4] + (99).to_bytes(4, "little"))
    with pytest.raises(UserError, match="out of range"):
        Datastore.load(str(bad_ends), tokenizer)
    with pytest.raises(UserError, match="another tokenizer"):
        Datastore.load(str(path), word_tokenizer(first_id=70000))


# --- drafter ---------------------------------------------------------------------------------------

def brute_trie_counts(rows):
    """{prefix: number of continuations through it}."""
    counts = Counter()
    for row in rows:
        row = [t for t in row if t >= 0]
        for depth in range(1, len(row) + 1):
            counts[tuple(row[:depth])] += 1
    return counts


def tree_paths(tree):
    paths = []
    for i, parent in enumerate(tree.parents):
        paths.append((paths[parent] if parent >= 0 else ()) + (tree.tokens[i],))
    return paths


def test_trie_counts_and_top_nodes_match_brute_force():
    rng = random.Random(5)
    for _ in range(40):
        rows = np.array([[rng.randint(1, 3) for _ in range(5)] for _ in range(rng.randrange(1, 60))])
        for row in rows:   # cut some continuations short, as a separator does
            row[rng.randrange(1, 6):] = -1
        counts = brute_trie_counts(rows.tolist())
        tokens, parents, node_counts, depths = trie_nodes(rows)
        real = tokens >= 0
        assert real.sum() == len(counts)
        budget = rng.randrange(1, 20)
        tree = top_nodes_tree(rows, budget)
        tree.validate(budget, 10)
        kept = tree_paths(tree)
        assert len(set(kept)) == len(kept) == min(budget, len(counts))
        dropped = set(counts) - set(kept)
        if dropped:   # nothing left out counts more than what was kept
            assert min(counts[p] for p in kept) >= max(counts[p] for p in dropped)


def test_drafter_tree_follows_the_most_frequent_continuation():
    common, rare = [5, 6, 7, 8, 9], [5, 6, 3, 4]
    stream = ([2, 3] + common + [SEP]) * 6 + ([2, 3] + rare + [SEP]) * 2 + [2, 3, 4, SEP]
    drafter = RestDrafter(synthetic(stream), num_draft=64)
    tree = drafter.propose([9, 9, 2, 3], 128)
    tree.validate(64, 100)
    assert tree.source == "rest"
    first_path, node = [], 0
    while node is not None:
        first_path.append(tree.tokens[node])
        node = next((i for i, p in enumerate(tree.parents) if p == node), None)
    assert first_path == common
    assert sorted(tree_paths(tree)) == sorted({tuple(c[:d]) for c in (common, rare, [4])
                                              for d in range(1, len(c) + 1)})
    small = drafter.propose([9, 9, 2, 3], 3)
    assert tree_paths(small) == [(5,), (5, 6), (5, 6, 7)]
    assert RestDrafter(synthetic(stream), num_draft=2).propose([2, 3], 128).tokens == [5, 6]
    assert drafter.propose([11, 12], 64) is None
    params = drafter.parameters()
    assert params["num_draft"] == 64 and params["max_suffix"] == 16 and params["datastore_tokens"] == len(stream)
    with pytest.raises(UserError):
        RestDrafter(synthetic(stream), min_suffix=3, max_suffix=2)


# --- build_datastore CLI ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("word-tokenizer-rest")
    word_tokenizer(first_id=70000).save_pretrained(path)
    return str(path)


def test_builder_reads_every_corpus_format(tmp_path, tokenizer_dir, capsys):
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in [
        {"text": "the cat sat"},
        {"conversations": [{"from": "human", "value": "ran to"}, {"from": "gpt", "value": "the park"}]},
    ]) + "\n\n")
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": 1, "choices": [{"index": 0, "turns": ["dog was", "very blue"]}]})
                       + "\n")
    txt = tmp_path / "notes.txt"
    txt.write_text("the sky was blue\n")
    out = tmp_path / "out.idx"
    assert build_main(["--corpus", str(jsonl), str(answers), str(txt), "--tokenizer-path", tokenizer_dir,
                       "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "21 tokens from 6 documents" in printed and "MiB" in printed and " s" in printed
    tokenizer = word_tokenizer(first_id=70000)
    ds = Datastore.load(str(out), tokenizer)
    docs = ["the cat sat", "ran to", "the park", "dog was", "very blue", "the sky was blue"]
    expected = [t for doc in docs for t in tokenizer(doc, add_special_tokens=False)["input_ids"] + [1]]
    assert ds.tokens.tolist() == expected and max(expected) >= 70000
    assert ds.search(tokenizer("the sky", add_special_tokens=False)["input_ids"]).continuations == \
        [(tuple(tokenizer("was blue", add_special_tokens=False)["input_ids"]), 1)]

    capped = tmp_path / "capped.idx"
    assert build_main(["--corpus", str(jsonl), "--tokenizer-path", tokenizer_dir, "--output", str(capped),
                       "--max-tokens", "5"]) == 0
    assert len(Datastore.load(str(capped), tokenizer)) == 5


def fake_datasets(rows=None, error=None):
    """A stand-in `datasets` module: no network in tests, whatever the machine allows."""
    import types

    def load_dataset(name, split, streaming):
        assert streaming
        if error is not None:
            raise error
        return iter(rows)
    return types.SimpleNamespace(load_dataset=load_dataset)


def test_builder_streams_a_hf_dataset_and_reports_failures_in_one_line(tmp_path, tokenizer_dir, monkeypatch,
                                                                         capsys):
    rows = [{"data": ["the cat sat", "on a mat"]}, {"data": "the dog ran"}]
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(rows))
    out = tmp_path / "hf.idx"
    assert build_main(["--hf-dataset", "stingning/ultrachat", "--hf-field", "data", "--tokenizer-path",
                       tokenizer_dir, "--output", str(out)]) == 0
    assert "12 tokens from 3 documents" in capsys.readouterr().out

    cases = [(fake_datasets(error=ConnectionError("Couldn't reach 'x/y' on the Hub (offline)\nmore")),
              "error: cannot read Hugging Face dataset x/y (split train): Couldn't reach"),
             (fake_datasets(rows + [{"data": 3}]), "error: x/y[train] row 3: no text found in field 'data'")]
    for module, message in cases:
        monkeypatch.setitem(sys.modules, "datasets", module)
        code = build_main(["--hf-dataset", "x/y", "--hf-field", "data", "--tokenizer-path", tokenizer_dir,
                           "--output", str(tmp_path / "failed.idx")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith(message), err
        assert not (tmp_path / "failed.idx").exists()


def run_module(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=CODE_DIR, capture_output=True, text=True,
                          timeout=120)


def assert_one_line_error(result, message):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_builder_bad_inputs_are_one_line_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "the cat"}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "the cat"}) + "\n{oops\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n" + json.dumps({"text": "   "}) + "\n")
    existing = tmp_path / "existing.idx"
    existing.write_bytes(b"")
    out = str(tmp_path / "out.idx")
    cases = [
        (["--corpus", str(tmp_path / "absent.jsonl")], "does not exist"),
        (["--corpus", str(bad)], f"{bad}:2: not valid JSON"),
        (["--corpus", str(empty)], "the corpus holds no text"),
        (["--corpus", str(good), "--output", str(existing)], "already exists"),
        ([], "give --corpus files, --hf-dataset, or both"),
    ]
    for args, message in cases:
        args = args + (["--output", out] if "--output" not in args else [])
        assert_one_line_error(run_module("model.rest.build_datastore", *args, "--tokenizer-path", "unused"), message)
    assert existing.read_bytes() == b""


def test_inference_cli_checks_the_datastore_before_loading_the_model(tmp_path):
    absent = tmp_path / "absent.idx"
    result = run_module("evaluation.inference_rest", "--model-path", str(tmp_path / "no-model"),
                        "--datastore-path", str(absent))
    assert_one_line_error(result, f"--datastore-path {absent}: no such file")
    junk = tmp_path / "junk.idx"
    junk.write_bytes(b"junk")
    result = run_module("evaluation.inference_rest", "--model-path", str(tmp_path / "no-model"),
                        "--datastore-path", str(junk), "--num-draft", "8")
    assert_one_line_error(result, "not a REST datastore")


# --- in the engine ---------------------------------------------------------------------------------

def test_greedy_output_is_unchanged_and_rest_drafts_get_accepted():
    from conftest import tiny_model
    from model.engine import Drafter, SamplingConfig, SpeculativeEngine
    engine = SpeculativeEngine(tiny_model("llama"))
    prompt = [5, 17, 33, 40, 8, 91, 17, 2]
    plain = engine.generate(prompt, Drafter(), 60, SamplingConfig())
    rng = random.Random(3)
    noise = [rng.randrange(2, 384) for _ in range(300)]
    # The corpus holds the greedy continuation, among noise: REST should draft it back.
    datastore = Datastore.build(noise + [1] + prompt + plain.tokens + [1] + noise[::-1], 1, "Tiny", "0" * 64)
    rest = engine.generate(prompt, RestDrafter(datastore, num_draft=32), 60, SamplingConfig())
    assert rest.tokens == plain.tokens
    assert any(s.source == "rest" and s.accepted > 1 for s in rest.steps)
    assert len(rest.steps) < len(plain.tokens)
