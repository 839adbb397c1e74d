"""Every drafting method, built the way its CLI builds it: the registry the losslessness tests loop over.

A factory takes the target model and a corpus (token lists): REST retrieves from a datastore built over it, SpS
drafts with a model derived from the target, EAGLE-3 with an untrained head for it, the other methods only need the
vocabulary size.
"""
import copy
import functools
import json
from collections import defaultdict

import torch

from model.eagle3 import Eagle3Drafter
from model.eagle3.head import new_head
from model.engine import Drafter
from model.lade import LookaheadDrafter
from model.pia.drafter import PiaDrafter
from model.pld import PromptLookupDrafter
from model.recycling import TokenRecyclingDrafter
from model.rest.datastore import Datastore
from model.rest.drafter import RestDrafter
from model.samd.drafter import SamDrafter
from model.samd.static_sam import join_documents
from model.sps import DraftModelDrafter
from model.stand import StandDrafter
from model.suffix.drafter import SuffixDrafter


def vocab_of(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def rest(model, corpus):
    separator = vocab_of(model) - 1
    return RestDrafter(Datastore.build(join_documents(corpus, separator), separator, "test", "test"))


@functools.lru_cache(maxsize=None)
def noisy_draft(target, scale: float = 0.3, padding: int = 16, seed: int = 0):
    """A draft that agrees with the target often but not always: the target's weights plus noise, with `padding`
    extra embedding rows (as Qwen3-0.6B pads its vocabulary differently from Qwen3-8B)."""
    draft = copy.deepcopy(target)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale * p.std())
    draft.resize_token_embeddings(vocab_of(target) + padding, mean_resizing=False)
    return draft.eval()


def sps(model, corpus):
    return DraftModelDrafter(noisy_draft(model), vocab_of(model), num_tokens=6)


def random_head(model, seed: int = 0):
    """An untrained EAGLE-3 head over the whole vocabulary, in the target's dtype."""
    torch.manual_seed(seed)
    return new_head(model, torch.arange(vocab_of(model))).eval()


def eagle3(model, corpus):
    # Tiny targets have 2 layers: the head reads the inputs of layers 0, 1, 1. A wide first level (top-24 of 384
    # tokens: a random head's first level holds the target's token about one step in ten) gets drafts accepted now
    # and then; never the whole vocabulary (a 12-token model's), where every first token would be accepted and no
    # draft rejected at the root. (Top-64 accepted twice as often, at a third more of the suite's EAGLE-3 time.)
    top_k = min(24, vocab_of(model) // 2)
    return Eagle3Drafter(random_head(model), model.get_input_embeddings(), (0, 1, 1), total_tokens=60, depth=3,
                         top_k=top_k)


METHODS = {
    "ar": lambda model, corpus: Drafter(),
    "pld": lambda model, corpus: PromptLookupDrafter(),
    "pld-fixed": lambda model, corpus: PromptLookupDrafter(adaptive=False),
    "samd": lambda model, corpus: SamDrafter(),
    "samd-recycling": lambda model, corpus: SamDrafter(alpha=1e9, fallback=TokenRecyclingDrafter(vocab_of(model))),
    "recycling": lambda model, corpus: TokenRecyclingDrafter(vocab_of(model)),
    "lookahead": lambda model, corpus: LookaheadDrafter(),
    "rest": rest,
    "pia": lambda model, corpus: PiaDrafter(),
    "stand": lambda model, corpus: StandDrafter(vocab_of(model)),
    "suffix": lambda model, corpus: SuffixDrafter(),
    "sps": sps,
    "eagle3": eagle3,
    "samd-eagle3": lambda model, corpus: SamDrafter(alpha=1e9, fallback=eagle3(model, corpus)),
}
# Drafts drawn with probabilities (rejection with residual resampling; STAND samples its drafts at temperature > 0):
# equal to AR in law at temperature > 0, not token for token.
SAMPLED_DRAFTS = {"sps", "stand"}


# --- Did the drafter take part? ------------------------------------------------------------------------------------

def _step(s) -> tuple[str, int, int]:
    """(draft source, nodes verified, tokens emitted) of a StepRecord or of a per-step log line."""
    if isinstance(s, dict):
        return s["draft_source"], s["draft_size"], s["accepted"]
    return s.source, s.draft_size, s.accepted


def drafting_counts(sequences) -> tuple[int, int, int]:
    """Over sequences of steps (each a Generation's `steps`, or one sequence's lines of a per-step log): the steps that
    verified a draft, those that accepted some of it, and those that rejected some of it. A sequence's last step is
    not counted as a rejection (the token limit may cut it); forced phrases are not drafting."""
    verified = accepted = rejected = 0
    for steps in sequences:
        steps = [_step(s) for s in steps]
        steps = [(size, emitted) for source, size, emitted in steps if source != "forced"]
        for i, (size, emitted) in enumerate(steps):
            if size:
                verified += 1
                accepted += emitted > 1
                rejected += emitted <= size and i < len(steps) - 1
    return verified, accepted, rejected


def assert_drafted(sequences, what: str = "") -> None:
    """An identity test proves little if nothing was drafted: drafts must have been verified, partly accepted and
    partly rejected (a rollback) somewhere in these sequences (Generations, step lists or step-log lines)."""
    sequences = [getattr(seq, "steps", seq) for seq in sequences]
    verified, accepted, rejected = drafting_counts(sequences)
    assert verified and accepted and rejected, \
        f"{what}: {verified} steps verified a draft, {accepted} accepted some of it, {rejected} rejected some of it"


def _assert_rows_verified(rows: dict, what: str, min_rows: int | None = None) -> None:
    assert rows, f"{what}: no row decoded enough tokens to say whether it drafted"
    silent = [row for row, sequences in sorted(rows.items()) if not drafting_counts(sequences)[0]]
    if min_rows is None:
        assert not silent, f"{what}, rows {silent}: no step verified a draft"
    else:
        assert len(rows) - len(silent) >= min_rows, f"{what}: only {len(rows) - len(silent)} rows verified a draft"


def assert_rows_drafted(generations, what: str = "", min_tokens: int = 16) -> None:
    """A draft verified in every batch row whose sequences ran at least `min_tokens` tokens (a row stopped after a few
    has had no room to draft): a bug that silences drafting only in rows 1 and up, or in one row, or at one batch
    size, fails (Generations, whose `row` is their batch row). With assert_drafted over the batches (drafts accepted
    and rejected too), the per-row, per-batch-size check of the identity tests."""
    rows = defaultdict(list)
    for g in generations:
        if len(g.tokens) >= min_tokens:
            rows[g.row].append(g.steps)
    _assert_rows_verified(rows, what)


def assert_logged_rows_drafted(answer_file, what: str = "", min_tokens: int = 16, min_rows: int | None = None) -> None:
    """The same from a run's per-step log (its `batch_row` field); with `min_rows`, at least that many rows (runs
    through the loop, whose rows hold whichever samples the schedule gives them: a sampled row of SAM may find no
    match in 40 tokens)."""
    rows = defaultdict(list)
    for steps in step_log(answer_file):
        if sum(s["accepted"] for s in steps) >= min_tokens:
            rows[steps[0].get("batch_row", 0)].append(steps)
    _assert_rows_verified(rows, what, min_rows)


def step_log(answer_file) -> list[list[dict]]:
    """The per-step log beside an answer file, one list of step lines per sequence (question, choice, turn)."""
    path = str(answer_file)
    path = (path[: -len(".jsonl")] if path.endswith(".jsonl") else path) + ".steps.jsonl"
    sequences = defaultdict(list)
    with open(path) as f:
        for line in f:
            s = json.loads(line)
            sequences[(s["question_id"], s["choice"], s["turn"])].append(s)
    return [sorted(steps, key=lambda s: s["step"]) for steps in sequences.values()]
