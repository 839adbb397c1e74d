import random
from collections import defaultdict

import pytest

from model.engine.drafter import StepFeedback
from model.pia.drafter import PiaDrafter
from model.pia.trie import BEST_FEW, SCAN_ALL, PiaTrie


def snapshot(trie):
    """{(key, *path): (input count, output count)} of every node whose counts are not both zero."""
    counts = {}

    def walk(prefix, node):
        for token, child in trie.children[node].items():
            here = prefix + (token,)
            if trie.input_count(child) or trie.out[child]:
                counts[here] = (trie.input_count(child), trie.out[child])
            walk(here, child)

    for key, root in trie.keys.items():
        walk((key,), root)
    return counts


def subtree(trie, node):
    """Ids of `node` and every node below it."""
    yield node
    for child in trie.children[node].values():
        yield from subtree(trie, child)


def nodes_below(trie, node):
    return sum(1 for _ in subtree(trie, node)) - 1


def add_branches(counts, stream, depth, kind, last_key):
    for i in range(last_key):
        branch = stream[i + 1: i + 1 + depth]
        for j in range(1, len(branch) + 1):
            counts[(stream[i], *branch[:j])][kind] += 1.0


def brute_counts(prompt, output, depth):
    """Every branch inserted at once: the prompt's (input) and the output stream's, which starts
    with the last prompt token (output)."""
    counts = defaultdict(lambda: [0.0, 0.0])
    add_branches(counts, prompt, depth, 0, len(prompt) - 1)
    stream = prompt[-1:] + output
    add_branches(counts, stream, depth, 1, len(stream))
    return {key: tuple(value) for key, value in counts.items()}


def depths_of(parents):
    depths = []
    for p in parents:
        depths.append(1 if p < 0 else depths[p] + 1)
    return depths


def first_path(tokens, parents):
    """Follow the first-listed child from the root down: the draft's best branch."""
    path, node = [], -1
    while True:
        children = [i for i, p in enumerate(parents) if p == node]
        if not children:
            return path
        node = children[0]
        path.append(tokens[node])


def retrieve(trie, query, budget=63, quota=32):
    """What the drafter would propose after a context ending in `query`, without adding `query` to the trie."""
    return trie.retrieve(query, budget, quota)


def emit(drafter, tokens, context):
    drafter.observe(StepFeedback(list(tokens), None, [], [], None))
    context.extend(tokens)


# -- insertion -------------------------------------------------------------------------------

def test_hand_made_counts():
    trie = PiaTrie(branch_length=2)          # branches of depth 3 after each key
    trie.start_sequence([1, 2, 3, 1, 2, 4])
    assert trie.counts(1, [2]) == (2, 0)
    assert trie.counts(1, [2, 3]) == (1, 0) and trie.counts(1, [2, 4]) == (1, 0)
    assert trie.counts(2, [3, 1, 2]) == (1, 0)
    assert trie.counts(2, [3, 1, 2, 4]) is None            # deeper than branch_length + 1
    assert trie.children[trie.node_at(4, [])] == {}        # the last prompt token keys no input branch
    trie.extend_output([5, 1, 2, 5])                       # output stream: 4 5 1 2 5
    assert trie.counts(4, [5, 1, 2]) == (0, 1)
    assert trie.counts(1, [2]) == (2, 1)
    assert trie.counts(1, [2, 5]) == (0, 1)
    assert snapshot(trie) == brute_counts([1, 2, 3, 1, 2, 4], [5, 1, 2, 5], 3)


@pytest.mark.parametrize("seed", range(5))
def test_chunked_output_equals_insertion_at_once(seed):
    rng = random.Random(seed)
    vocab, branch_length = rng.choice([(3, 2), (5, 4), (9, 12)])
    prompt = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
    output = [rng.randrange(vocab) for _ in range(300)]
    chunked = PiaTrie(branch_length)
    chunked.start_sequence(prompt)
    done = 0
    while done < len(output):
        size = rng.choice([1, 1, 2, 3, 8, 20])
        chunked.extend_output(output[done: done + size])
        done += size
        assert snapshot(chunked) == brute_counts(prompt, output[:done], branch_length + 1)
    at_once = PiaTrie(branch_length)
    at_once.start_sequence(prompt)
    at_once.extend_output(output)
    assert snapshot(at_once) == snapshot(chunked)


def test_input_counts_belong_to_one_sequence_output_counts_carry():
    drafter = PiaDrafter(branch_length=3)
    drafter.begin_sequence([10, 11, 12, 13])
    drafter.begin_sequence([10, 11, 12, 13])                # the same prompt again: counted once
    trie = drafter.trie
    assert trie.counts(10, [11]) == (1, 0)
    emit(drafter, [20, 21, 22], [])                         # output stream: 13 20 21 22
    drafter.begin_sequence([30, 31])
    trie = drafter.trie
    assert trie.counts(10, [11]) == (0, 0)                  # the old prompt's counts read zero
    assert trie.counts(13, [20, 21, 22]) == (0, 1)          # the old output's stay
    assert retrieve(trie, [31, 13])[0][:3] == [20, 21, 22]
    assert retrieve(trie, [31, 10]) == ([], [])            # only the old prompt's branches: nothing to draft
    drafter.reset()
    assert drafter.trie.node_count() == 0
    drafter.begin_sequence([30, 31])
    assert retrieve(drafter.trie, [31, 13]) == ([], [])


# -- retrieval -------------------------------------------------------------------------------

def test_most_frequent_continuation_first():
    drafter = PiaDrafter()
    context = [0]
    drafter.begin_sequence(context)
    emit(drafter, [7, 8, 9, 10, 50, 7, 8, 9, 10, 51, 7, 8, 11, 52, 7, 8, 9, 10, 53, 60, 7], context)
    tree = drafter.propose(context, 100)                    # (60, 7) is new: b = 7's trie
    assert tree.source == "pia" and tree.tokens[0] == 8 and tree.parents[0] == -1
    assert first_path(tree.tokens, tree.parents)[:3] == [8, 9, 10]
    assert [tree.tokens[i] for i, p in enumerate(tree.parents) if p == 0] == [9, 11]   # 3 times, then once


def test_two_token_match_preferred_when_long_enough():
    drafter = PiaDrafter(branch_length=3)                   # enough: 2 nodes
    context = [0]
    drafter.begin_sequence(context)
    emit(drafter, [5, 2, 30, 31, 32, 6, 2, 40, 41, 42, 6, 2, 40, 41, 42, 6], context)
    trie = drafter.trie
    assert first_path(*retrieve(trie, [5, 2])) == [30, 31, 32]
    assert first_path(*retrieve(trie, [99, 2])) == [40, 41, 42]
    # a's trie followed by b gives too little (1 node < 2): b's trie is used instead.
    emit(drafter, [8, 2, 77], context)
    assert first_path(*retrieve(trie, [8, 2])) == [40, 41, 42]
    # With a budget below branch_length - 1, filling the budget is enough.
    assert retrieve(trie, [8, 2], budget=1) == ([77], [-1])


def test_output_quota_then_prompt_first():
    drafter = PiaDrafter(decoding_length=3)                 # 2 nodes, 1 reserved for output counts
    context = [3, 4, 9]
    drafter.begin_sequence(context)
    emit(drafter, [3, 5, 8, 3, 5, 8, 6, 3], context)       # (6, 3) is new: b = 3's trie
    tree = drafter.propose(context, 100)
    assert tree.tokens == [5, 4] and tree.parents == [-1, -1]


def test_large_fanout_offers_its_best_children():
    trie = PiaTrie(branch_length=2)
    trie.start_sequence([0])
    trie.extend_output([token for t in range(100, 200) for token in (5, t)])   # 5 has 100 followers once
    trie.extend_output([5, 77] * 5)
    assert len(trie.children[trie.keys[5]]) > SCAN_ALL
    tokens, parents = retrieve(trie, [9, 5])
    assert tokens[0] == 77
    assert sum(p == -1 for p in parents) == BEST_FEW        # a large node offers its best few children only
    trie.extend_output([5, 150] * 13)   # 150 climbs past 77: seen once the ranking is redone
    tokens, parents = retrieve(trie, [9, 5])
    assert tokens[:2] == [150, 5] and parents[:2] == [-1, 0]


@pytest.mark.parametrize("decoding_length,branch_length,max_nodes", [(64, 12, 128), (64, 12, 10), (16, 3, 128),
                                                                    (8, 12, 128), (64, 1, 128)])
def test_draft_limits(decoding_length, branch_length, max_nodes):
    rng = random.Random(decoding_length + branch_length + max_nodes)
    phrases = [[rng.randrange(40) for _ in range(rng.randrange(3, 20))] for _ in range(6)]
    stream = []
    while len(stream) < 3000:
        stream += rng.choice(phrases) + [rng.randrange(40)]
    drafter = PiaDrafter(decoding_length, branch_length)
    context = stream[:200]
    drafter.begin_sequence(context)
    sizes = []
    for position in range(200, len(stream), 7):
        emit(drafter, stream[len(context): position], context)
        tree = drafter.propose(context, max_nodes)
        if tree is None:
            continue
        tree.validate(max_nodes, 40)
        sizes.append(len(tree))
        assert len(tree) <= min(decoding_length - 1, max_nodes)
        assert max(depths_of(tree.parents)) <= branch_length
        assert len(set(zip(tree.tokens, tree.parents))) == len(tree)   # siblings differ: a prefix tree
    if branch_length > 1:   # one level deep, the fanout can be below the budget
        assert max(sizes) == min(decoding_length - 1, max_nodes)


def test_no_draft_without_match_or_budget():
    drafter = PiaDrafter()
    drafter.begin_sequence([1, 2, 3])
    assert drafter.propose([1, 2, 3], 100) is None          # 3 was never followed by anything
    assert drafter.propose([1, 2, 3], 0) is None
    assert retrieve(drafter.trie, [2, 1]) == ([2, 3], [-1, 0])   # (2, 1) never seen: 1's trie
    assert retrieve(drafter.trie, [5, 9]) == ([], [])


def test_propose_catches_up_without_observe():
    rng = random.Random(3)
    stream = [rng.randrange(6) for _ in range(400)]
    observed, caught_up = PiaDrafter(branch_length=4), PiaDrafter(branch_length=4)
    observed.begin_sequence(stream[:20])
    caught_up.begin_sequence(stream[:20])
    context = stream[:20]
    for end in range(25, 400, 5):
        emit(observed, stream[len(context): end], context)
        a, b = observed.propose(context, 64), caught_up.propose(stream[:end], 64)
        assert (a.tokens, a.parents) == (b.tokens, b.parents)
    assert snapshot(observed.trie) == snapshot(caught_up.trie)


# -- eviction --------------------------------------------------------------------------------

def test_eviction_keeps_each_key_trie_bounded_and_frequent_branches():
    capacity = 40
    drafter = PiaDrafter(branch_length=3, tree_capacity=capacity)
    rng = random.Random(0)
    context = [0]
    drafter.begin_sequence(context)
    phrases = 0
    for _ in range(400):
        # A frequent phrase, then noise over 1..10: the noise overflows every key's trie, 1's included.
        emit(drafter, [1, 2, 3, 4] + [rng.randrange(1, 11) for _ in range(rng.randrange(1, 6))], context)
        phrases += 1
        assert max(drafter.trie.trie_size.values()) <= capacity
    trie = drafter.trie
    assert 1 < trie.counts(1, [2, 3, 4])[1] < phrases       # halved by evictions, yet kept
    for root in trie.keys.values():                         # sizes stay exact through evictions
        assert trie.trie_size[root] == nodes_below(trie, root)
    # Evicted ids are reused: storage stays within the per-key bound, and no free id is in use.
    assert len(trie.out) <= (capacity + 1) * len(trie.keys)
    in_use = {node for root in trie.keys.values() for node in subtree(trie, root)}
    assert not in_use & set(trie.free) and len(in_use) + len(trie.free) == len(trie.out)
    assert first_path(*retrieve(trie, [99, 1]))[:3] == [2, 3, 4]


def test_eviction_keeps_prompt_branches_and_growing_ones():
    rng = random.Random(1)
    prompt = [rng.randrange(3) for _ in range(60)]
    trie = PiaTrie(branch_length=4, tree_capacity=4)
    trie.start_sequence(prompt)
    inputs = {k: v for k, v in brute_counts(prompt, [], 5).items() if v[0]}
    assert {k: v for k, v in snapshot(trie).items() if v[0]} == inputs
    output = [rng.randrange(3) for _ in range(200)]
    trie.extend_output(output)
    # Every branch still growing is intact: its last node is reachable with the stream's tokens.
    stream = prompt[-1:] + output
    for back in range(1, 6):
        assert trie.node_at(stream[-back - 1], stream[-back:]) is not None
    assert {k: v[0] for k, v in snapshot(trie).items() if v[0]} == {k: v[0] for k, v in inputs.items()}


# -- drafter -------------------------------------------------------------------------------

def test_parameters_and_validation():
    drafter = PiaDrafter()
    assert drafter.name == "pia" and drafter.default_scope == "question"
    assert drafter.parameters() == {"decoding_length": 64, "branch_length": 12, "tree_capacity": 65536,
                                    "output_quota": 32, "output_weight": 1e-4}
    for bad in (dict(decoding_length=1), dict(branch_length=0), dict(tree_capacity=1)):
        with pytest.raises(ValueError):
            PiaDrafter(**bad)


def test_engine_output_unchanged_and_fewer_steps():
    from conftest import tiny_model

    from model.engine import Drafter, SamplingConfig, SpeculativeEngine
    engine = SpeculativeEngine(tiny_model())
    prompt = [5, 17, 42, 8, 99, 23, 61, 7] * 4
    reference = engine.generate(prompt, Drafter(), 48, SamplingConfig())
    out = engine.generate(prompt, PiaDrafter(), 48, SamplingConfig())
    assert out.tokens == reference.tokens
    assert len(out.steps) < len(out.tokens)
    assert any(step.source == "pia" for step in out.steps)


def test_cli_flags_through_the_loop(tiny_model_dir, tmp_path):
    import json

    from evaluation import inference_pia
    from evaluation.run.args import build_parser, finalize
    from evaluation.run.loop import run_eval
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "category": "math500", "turns": ["What is 2 + 3?"],
                                     "answer": "5"}) + "\n")
    answers = tmp_path / "pia.jsonl"
    parser = build_parser("pia")
    inference_pia.add_args(parser)
    args = parser.parse_args(["--model-path", tiny_model_dir, "--question-file", str(questions), "--answer-file",
                              str(answers), "--max-new-tokens", "16", "--device", "cpu", "--dtype", "float32",
                              "--warmup", "0", "--BON", "--bon-n", "2", "--decoding-length", "16",
                              "--branch-length", "6"])
    run_eval(finalize(args, "pia"), inference_pia.make_drafter)
    answer = json.loads(answers.read_text())
    assert answer["method"] == "pia"
    steps = answer["choices"][0]["decoding_steps"]
    assert len(steps) == 2 and steps[1] < steps[0]   # the second sample drafts from the first one's output
    config = json.load(open(str(answers).replace(".jsonl", ".config.json")))
    assert config["draft_state_scope"] == "question"
    assert config["method_parameters"]["decoding_length"] == 16 and config["method_parameters"]["branch_length"] == 6
