"""The shared test-time-scaling loop: every method runs through `run_eval`, only the drafter differs."""
from __future__ import annotations

import hashlib
import platform
import sys
import time
import uuid

import torch
from tqdm import tqdm

from evaluation.data.grading import grade_output
from evaluation.data.questions import load_questions
from evaluation.reports.divergence import near_tie_rule, near_ties
from evaluation.run import paradigms
from evaluation.run.records import AnswerStore
from model.engine import Drafter, SamplingConfig, SpeculativeEngine, StepFeedback
from model.engine import allocator
from model.engine.cost import CostAwareVerifier
from model.engine.profile import (DENSE_WIDTHS, ForwardCostProfile, ProfileCache, cached_profile, default_cache_dir,
                                  profile_key)
from model.engine.loading import load_model
from model.errors import UserError


def group_size(paradigm: str, batch_size: int, num_choices: int) -> int:
    """Questions answered together. Best-of-N: one (its samples fill the batches); multi-round and single turns:
    enough questions that their (question, choice) chains fill a batch, each chain's next round waiting for its
    answer."""
    return 1 if paradigm == "best_of_n" else max(1, batch_size // num_choices)


def batch_schedule(chains: list, turns: int, paradigm: str, size: int, continuous: bool):
    """A group's turns as batches of (chain, turn, row), in the order they can run: Best-of-N, each chain's samples
    B at a time (row = sample index mod B), or with continuous batching all of them in one batch whose rows the
    engine assigns (row None) as samples finish; multi-round and single, round r of the chains B at a time, each
    chain keeping its row, then r + 1. (Replay batches recorded turns with it too.)"""
    if continuous:
        for chain in chains:
            yield [(chain, t, None) for t in range(turns)]
    elif paradigm == "best_of_n":
        for chain in chains:
            for i in range(0, turns, size):
                yield [(chain, t, t % size) for t in range(i, min(i + size, turns))]
    else:
        for turn in range(turns):
            for i in range(0, len(chains), size):
                yield [(chain, turn, j) for j, chain in enumerate(chains[i:i + size])]


def ready_drafter(drafter: Drafter, scope: str, owner, key) -> None:
    """Before a row's drafter takes a turn of chain `key` (it last served `owner`): forget what its scope does not
    keep."""
    if scope == "sequence" or (scope == "question" and owner != key):
        drafter.reset()


def tell_siblings(drafters: list[Drafter], questions: list, share: bool) -> None:
    """Cross-sample drafting: a question-scope drafter may draft from what its concurrent siblings (the rows of the
    same question) generate; every row is told, so that one told before forgets the siblings of its last batch."""
    for drafter, question_id in zip(drafters, questions):
        drafter.share_with([d for d, q in zip(drafters, questions) if share and q == question_id and d is not drafter])


def run_config(args, drafter: Drafter, device: torch.device, budget, tokenizer, attention: str | None = None) -> dict:
    import transformers
    return {
        "method": drafter.name, "method_parameters": drafter.parameters(), "draft_state_scope": args.draft_state_scope,
        "model_id": args.model_id, "model_path": args.model_path, "dtype": args.dtype, "device": str(device),
        "device_type": device.type, "num_gpus_per_model": args.num_gpus_per_model,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
        "max_new_tokens": args.max_new_tokens, "paradigm": args.paradigm,
        "turns_per_question": paradigms.turns_per_question(args), "seed": args.seed, "num_choices": args.num_choices,
        "max_tree_nodes": args.max_tree_nodes, "cost_aware": args.cost_aware, "warmup": args.warmup,
        "engine_mode": args.engine_mode,
        "static_engine": {"kv_bucket": args.kv_bucket, "torch_compile": args.compile}
        if args.engine_mode == "static" else None,
        "warmup_tokens": args.warmup_tokens, "save_token_ids": args.save_token_ids,
        "near_tie_rule": near_tie_rule(args.dtype) if records_margins(args, drafter) else None,
        "batch_size": args.batch_size, "cross_sample": not args.no_cross_sample,
        "continuous_batching": args.continuous_batching,
        "thinking_budget": None if budget is None else
        {"trigger_at": budget.trigger_at, "phrase": paradigms.BUDGET_PHRASE},
        "chat_template": bool(getattr(tokenizer, "chat_template", None)), "question_file": args.question_file,
        "cpu_allocator": allocator.applied(), "attention": attention,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "command": " ".join(sys.argv), "created": time.time(),
    }


class Runner:
    """Generates the turns of questions with one engine and one drafter per batch row."""

    # Answer fields with one entry per turn ("turns", the output text, as well).
    TURN_FIELDS = ("new_tokens", "decoding_steps", "wall_time", "accept_lengths_per_turn", "draft_seconds",
                   "verify_seconds", "forced_tokens", "prompt_tokens", "stopped", "extracted", "reference",
                   "correct", "grade_error", "token_ids_sha1", "prompt_sha1")
    # ... and with --batch-size > 1: the batch each turn was decoded in, its rows and its wall time (throughput is
    # the tokens of all its rows over that time); wall_time is then the turn's own latency within the batch.
    BATCH_FIELDS = ("batch_id", "batch_size", "batch_wall_time")

    def __init__(self, args, engine: SpeculativeEngine, drafter: Drafter, tokenizer, stop, budget):
        self.args, self.engine, self.drafter, self.tokenizer = args, engine, drafter, tokenizer
        self.stop, self.budget = stop, budget
        self.store: AnswerStore | None = None   # set by open_run: completed turns are checkpointed there
        self.sampling = SamplingConfig(args.temperature, args.top_p, args.top_k)
        self.turns = paradigms.turns_per_question(args)
        self.batch_size = args.batch_size
        self.cross_sample = not args.no_cross_sample
        self.continuous = args.continuous_batching
        # One drafter per batch row: row 0's is `drafter`; the others are its forks, sharing its read-only resources
        # (models, corpora) and, at global scope, what it learns.
        self.slots = [drafter] + [drafter.fork(share_memory=args.draft_state_scope == "global")
                                  for _ in range(self.batch_size - 1)]
        self.owner = [None] * self.batch_size   # the (question, choice) each row's drafter state belongs to

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.engine.device).manual_seed(seed)

    def decode(self, tokens: list[int]) -> str:
        if tokens and tokens[-1] in self.stop:
            tokens = tokens[:-1]
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()

    def warm_up(self, question: dict) -> None:
        prompt = paradigms.encode_prompt(self.tokenizer, paradigms.turn_messages(question, "single", 0, None))
        tokens = min(self.args.warmup_tokens, self.args.max_new_tokens)
        for i in range(self.args.warmup):   # at the run's batch size: the kernels of its shapes settle
            self.engine.generate_batch([prompt] * self.batch_size, self.slots, tokens, self.sampling,
                                       [self.generator(self.args.seed + i)] * self.batch_size, self.stop, self.budget)
        for drafter in self.slots:
            drafter.reset()  # what the drafter saw during warm-up must not help the measured run
        self.owner = [None] * self.batch_size
        if self.engine.cost_aware is not None:
            self.engine.cost_aware.reset()

    def group_size(self) -> int:
        return group_size(self.args.paradigm, self.batch_size, self.args.num_choices)

    def answer(self, question: dict) -> tuple[dict, list[dict]]:
        return self.answer_group([question])[0]

    def answer_group(self, questions: list[dict]) -> list[tuple[dict, list[dict]]]:
        """Every turn of every choice of these questions: per question, its answer line and step-log lines.

        Turns run in batches of up to --batch-size rows (at batch 1, one after another). Best-of-N: a choice's
        samples, B at a time (row = sample index mod B), or with --continuous-batching all N in one batch of B rows,
        each sample taking the row of the first to finish (the row recorded as it ran); multi-round and single:
        round r of every (question, choice) chain of the group together, each chain keeping its row, then r + 1.

        With a store (`open_run` gives one), each completed turn is checkpointed in `<stem>.partial.jsonl`, and the
        turns a killed run had completed are taken from there instead of being generated again: the next turn gets
        the same prompt and seed, so greedy and point-mass-sampled output is token-identical to an uninterrupted
        run. A resumed turn keeps the wall_time, draft_seconds and verify_seconds measured when it ran (it was
        measured in full, in that earlier session). Each choice records `resumed_turns` (the turn indices taken from
        a checkpoint) and the answer `drafter_restore`: how the drafter got what it keeps across turns, at the turn
        where generation resumed: "replayed" (a question-scope drafter whose state is built from the tokens alone:
        the turns before that ran in its row were fed to it again, begin_sequence + observe as forced tokens),
        "cold" (it could not be: global scope, a drafter that learns from the target's outputs or hidden states; it
        restarted empty for the rest of the question), "not needed" (sequence scope, a resume at the start of a
        choice, or nothing left to generate); null when no turn was resumed. The cost-aware verifier's acceptance
        estimate (kept across questions) restarts with every session, as it does when whole questions are resumed.
        """
        chains = [_Chain(question, c, self.turns) for question in questions for c in range(self.args.num_choices)]
        by_question = {}
        for chain in chains:
            by_question.setdefault(chain.question["question_id"], []).append(chain)
        for question_id, own in by_question.items():
            saved = self.store.completed_turns(question_id, self.turns) if self.store is not None else []
            for entry in saved:
                own[entry["choice"]].saved[entry["turn"]] = entry
        for batch in self._batches(chains):
            self._run_batch(batch)
        results = []
        for question in questions:
            own = by_question[question["question_id"]]
            restores = [chain.restore for chain in own if chain.restore is not None]
            restore = None if not any(chain.saved for chain in own) else (restores[0] if restores else "not needed")
            steps = [line for chain in own for turn in range(self.turns) for line in chain.steps[turn]]
            answer = {"question_id": question["question_id"], "category": question["category"],
                      "answer_id": uuid.uuid4().hex, "model_id": self.args.model_id, "tstamp": time.time(),
                      "paradigm": self.args.paradigm, "method": self.drafter.name, "drafter_restore": restore,
                      "choices": [chain.record(self.TURN_FIELDS + self.batch_fields() + self.margin_fields(),
                                               self.args.save_token_ids)
                                  for chain in own]}
            results.append((answer, steps))
        return results

    def batch_fields(self) -> tuple[str, ...]:
        return self.BATCH_FIELDS if self.batch_size > 1 else ()

    def margin_fields(self) -> tuple[str, ...]:
        """The greedy baseline's near-ties per turn (reports/divergence.py)."""
        return ("near_ties",) if self.engine.record_margins else ()

    def _batches(self, chains: list["_Chain"]):
        return batch_schedule(chains, self.turns, self.args.paradigm, self.batch_size, self.continuous)

    def _run_batch(self, batch: list[tuple]) -> None:
        scope = self.args.draft_state_scope
        todo = []
        for chain, turn, row in batch:
            # (only a later round quotes the answer before it; Best-of-N samples in one batch do not wait)
            previous = chain.previous(turn) if self.args.paradigm == "multi_round" else None
            messages = paradigms.turn_messages(chain.question, self.args.paradigm, turn, previous)
            prompt = paradigms.encode_prompt(self.tokenizer, messages)
            entry = chain.saved.get(turn)
            if entry is not None:
                chain.take(turn, entry["record"], entry["steps"], entry["tokens"])
                chain.resumed.append((turn, row, prompt, entry))
                continue
            if row is not None:
                self._take_row(chain, row)
            todo.append((chain, turn, row, prompt))
        if not todo:
            return
        # Continuous batching: B rows for the choice's samples, each sample joining as a row frees (its drafter
        # readied then); the rows all hold samples of one question.
        rows = list(range(min(self.batch_size, len(todo)))) if self.continuous else [row for _, _, row, _ in todo]
        if self.continuous:
            # The first samples' rows are readied before they are told their siblings: a scope reset after would
            # forget them (the samples that join later keep the question, so they are not reset).
            for row in rows:
                self._take_row(todo[row][0], row)
        drafters = [self.slots[row] for row in rows]
        questions = [todo[0][0].question["question_id"]] * len(rows) if self.continuous else \
            [chain.question["question_id"] for chain, _, _, _ in todo]
        tell_siblings(drafters, questions, self.cross_sample and scope == "question")

        def on_join(i: int, drafter: Drafter) -> None:
            self._take_row(todo[i][0], self.slots.index(drafter))

        seeds = [self.args.seed + chain.choice * self.turns + turn for chain, turn, _, _ in todo]
        start = self.engine.clock()
        gens = self.engine.generate_batch([prompt for _, _, _, prompt in todo], drafters, self.args.max_new_tokens,
                                          self.sampling, [self.generator(seed) for seed in seeds], self.stop,
                                          self.budget, on_join=on_join if self.continuous else None)
        seconds = self.engine.clock() - start
        batch_id = f"{uuid.uuid4().hex[:12]}" if self.batch_size > 1 else None
        todo = [(chain, turn, gen.row if row is None else row, prompt) for (chain, turn, row, prompt), gen
                in zip(todo, gens)]
        for (chain, turn, row, prompt), gen in zip(todo, gens):
            question = chain.question
            text = self.decode(gen.tokens)
            graded = grade_output(text, question)
            values = {"turns": text, "new_tokens": len(gen.tokens), "decoding_steps": len(gen.steps),
                      "wall_time": seconds if len(todo) == 1 else gen.seconds,
                      "accept_lengths_per_turn": gen.accept_lengths,
                      "draft_seconds": sum(s.draft_seconds for s in gen.steps),
                      "verify_seconds": sum(s.verify_seconds for s in gen.steps),
                      "forced_tokens": gen.forced_tokens, "prompt_tokens": len(prompt),
                      "stopped": gen.stopped, "extracted": graded["extracted"],
                      "reference": graded["reference"], "correct": graded["correct"],
                      "grade_error": graded["grade_error"], "token_ids_sha1": hashlib.sha1(str(gen.tokens).encode()).hexdigest(),
                      "prompt_sha1": hashlib.sha1(str(prompt).encode()).hexdigest()}
            if gen.margins is not None:
                values["near_ties"] = near_ties(gen.margins)
            if batch_id is not None:
                values.update(batch_id=batch_id, batch_size=len(rows), batch_wall_time=seconds)
            steps = []
            for i, s in enumerate(gen.steps):
                line = {"question_id": question["question_id"], "choice": chain.choice, "turn": turn, "step": i,
                        "draft_size": s.draft_size, "proposed_size": s.proposed_size, "accepted": s.accepted,
                        "draft_source": s.source, "draft_seconds": s.draft_seconds,
                        "verify_seconds": s.verify_seconds, "context_length": s.context_length}
                if batch_id is not None:
                    line.update(batch_id=batch_id, batch_row=row, batch_step=s.batch_step, batch_rows=s.batch_rows,
                                batch_width=s.batch_width)
                steps.append(line)
            chain.take(turn, values, steps, gen.tokens)
        if self.store is not None:   # after the batch: every turn of it is complete
            for (chain, turn, _, _), gen in zip(todo, gens):
                self.store.checkpoint(chain.question["question_id"],
                                      {"choice": chain.choice, "turn": turn, "record": chain.values[turn],
                                       "tokens": gen.tokens, "steps": chain.steps[turn]})

    def _take_row(self, chain: "_Chain", row: int) -> None:
        """Ready row `row`'s drafter for a turn of `chain`: forget what its scope does not keep, and give it what a
        resumed run must replay."""
        scope, drafter = self.args.draft_state_scope, self.slots[row]
        key = (chain.question["question_id"], chain.choice)
        ready_drafter(drafter, scope, self.owner[row], key)
        self.owner[row] = key
        if chain.saved and chain.restore is None:
            chain.restore = self._restore_drafter(drafter, [r for r in chain.resumed if r[1] in (row, None)])

    def _restore_drafter(self, drafter: Drafter, resumed: list) -> str:
        """Before the first turn of a chain generated after a resume: give this row's drafter what its scope says it
        keeps from the turns taken from a checkpoint (`resumed`: (turn, row, prompt, entry) of those that ran in this
        row, in order). Returns how (see `answer_group`)."""
        scope = self.args.draft_state_scope
        if scope == "sequence" or (scope == "question" and not resumed):
            return "not needed"   # it starts empty here in an uninterrupted run too
        if scope == "global" or not self.state_from_tokens(drafter):
            return "cold"
        for _, _, prompt, entry in resumed:
            drafter.begin_sequence(list(prompt))
            tokens, start = entry["tokens"], 0
            for step in entry["steps"]:   # the same chunks the drafter was shown when the turn ran
                chunk = tokens[start:start + step["accepted"]]
                start += len(chunk)
                if chunk:
                    drafter.observe(StepFeedback(chunk, None, [], []))
            if start < len(tokens):
                drafter.observe(StepFeedback(tokens[start:], None, [], []))
        return "replayed"

    @staticmethod
    def state_from_tokens(drafter: Drafter) -> bool:
        """Whether what this drafter keeps across turns is built from the token stream alone, so that replaying the
        earlier turns' prompts and tokens rebuilds it: SAM's dynamic automaton (without a fallback drafter) and PIA's
        trie. Drafters that also learn from verification (PLD's adaptive lengths, SpS's schedule), from the target's
        outputs (Lookahead's pool, Token Recycling's matrix) or hidden states (EAGLE-3) restart cold."""
        from model.pia.drafter import PiaDrafter
        from model.samd.drafter import SamDrafter
        declared = getattr(drafter, "state_from_tokens", None)
        if declared is not None:
            return bool(declared)
        if isinstance(drafter, SamDrafter):
            return drafter.fallback is None
        return isinstance(drafter, PiaDrafter)


def records_margins(args, drafter: Drafter) -> bool:
    """The greedy AR baseline records where its top two logits nearly tie (reports/divergence.py)."""
    return drafter.name == "ar" and args.temperature == 0


def measure_cost_profile(engine: SpeculativeEngine, drafters: list[Drafter], args) -> ForwardCostProfile:
    """t(n)/t(1) for this model, dtype and device, up to twice the largest draft the methods send (every run
    records it; --cost-aware verification decides with it). Taken from the profile cache when a run with the same
    key measured it (see cost.profile_key), else measured and saved there as it is measured."""
    bound = max(args.max_tree_nodes if d.max_draft_nodes() is None else d.max_draft_nodes() for d in drafters)
    max_width = min(args.max_tree_nodes + 1, max(DENSE_WIDTHS, 2 * (bound + 1)))
    limit = getattr(engine.model.config, "max_position_embeddings", None) or 1 << 30
    lengths = sorted({min(n, limit - max_width - 1) for n in args.cost_profile_contexts})
    rows = f", {args.batch_size} rows per forward" if args.batch_size > 1 else ""
    cache = ProfileCache(args.cost_profile_cache or default_cache_dir())
    print(f"forward cost t(n)/t(1): widths 1..{max_width} at {', '.join(map(str, lengths))} tokens of context{rows}, "
          f"{args.cost_profile_repeats} repeat(s); profile cache {cache.directory}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    key = profile_key(engine.model, args.model_path, engine.device, max_width, lengths, args.cost_profile_repeats,
                      args.seed, args.batch_size, engine.describe_mode())
    profile = cached_profile(engine, cache, key, args.remeasure_cost_profile)
    ratios = " ".join(f"{w}:{r:.2f}" for w, r in zip(profile.widths, profile.to_dict()["ratio"][-1]))
    origin = profile.origin
    how = f"taken from {origin['file']}" if origin["source"] == "cache" else \
        f"{time.perf_counter() - start:.1f} s to measure" + \
        (f", continuing {origin['continued_forwards']} timed forward(s) of an interrupted run"
         if origin["continued_forwards"] else "")
    print(f"forward cost t(n)/t(1) at {lengths[-1]} tokens of context ({how}): {ratios}", file=sys.stderr)
    return profile


def open_run(args, make_drafter, model, tokenizer, device) -> tuple[AnswerStore, Runner]:
    """One method's drafter, answer store (resumed, checked against its configuration) and runner on a loaded
    model."""
    try:
        drafter = make_drafter(args, model, tokenizer)
    except ValueError as exc:  # drafters validate their parameters with ValueError
        raise UserError(str(exc)) from None
    if args.draft_state_scope is None:
        args.draft_state_scope = drafter.default_scope
    if args.temperature == 0:   # greedy turns are compared token by token (reports/divergence.py): keep the ids
        args.save_token_ids = True
    budget = None if args.no_thinking_budget else paradigms.thinking_budget(tokenizer, args.max_new_tokens)
    store = AnswerStore(args.answer_file, run_config(args, drafter, device, budget, tokenizer,
                                                      getattr(model.config, "_attn_implementation", None)))
    engine = SpeculativeEngine(model, max_tree_nodes=args.max_tree_nodes,
                               record_margins=records_margins(args, drafter), mode=args.engine_mode,
                               kv_bucket=args.kv_bucket, compile=args.compile)
    runner = Runner(args, engine, drafter, tokenizer, paradigms.stop_tokens(tokenizer, model.generation_config),
                    budget)
    runner.store = store   # turns are checkpointed and resumed (Runner.answer) by every loop that uses open_run
    return store, runner


def start_session(store: AnswerStore, runner: Runner, first_question: dict,
                  profile: ForwardCostProfile | None = None) -> None:
    """Before measuring: profile the forward cost (recorded; --cost-aware decides with it), then warm up. A resumed
    run reuses the profile its first session measured (same model, dtype, device and method: the configuration check
    saw to it), so a run killed again and again still makes progress and decides with one profile throughout."""
    args, engine = runner.args, runner.engine
    recorded = store.recorded_profile()
    if profile is None and recorded is not None:
        profile = ForwardCostProfile.from_dict(recorded)
        store.add_session({"started": time.time(), "cost_profile_reused": True})
    else:
        profile = profile or measure_cost_profile(engine, [runner.drafter], args)
        store.add_session({"started": time.time(), "cost_profile": profile.to_dict()})
    if args.cost_aware:
        engine.cost_aware = CostAwareVerifier(profile)
    if args.warmup:
        runner.warm_up(first_question)


def run_eval(args, make_drafter, only: set | None = None, on_open=None) -> None:
    """Load the model, then answer every question not already in the answer file, in this process. A replica
    (evaluation/run/replicas.py wraps this loop) passes its share of the questions (`only`, question ids) and a
    check of its shard once open (`on_open(store, device)`)."""
    questions = load_questions(args.question_file, args.question_begin, args.question_end)
    if only is not None:
        questions = [q for q in questions if q["question_id"] in only]
    model, tokenizer, device = load_model(args.model_path, args.dtype, args.device, args.num_gpus_per_model)
    if args.BON and args.temperature == 0:
        print("warning: Best-of-N at temperature 0 gives N identical samples", file=sys.stderr)
    store, runner = open_run(args, make_drafter, model, tokenizer, device)
    if on_open is not None:
        on_open(store, device)
    todo = [q for q in questions if q["question_id"] not in store.done]
    if not todo:
        print(f"all {len(questions)} questions already answered in {args.answer_file}")
        return
    start_session(store, runner, todo[0])
    tokens, seconds, batches = 0, 0.0, {}
    bar = tqdm(total=len(todo), desc=f"{runner.drafter.name} ({len(store.done)} done before)", unit="q",
               dynamic_ncols=True)
    size = runner.group_size()
    for i in range(0, len(todo), size):
        for answer, steps in runner.answer_group(todo[i:i + size]):
            store.write(answer, steps)
            for choice in answer["choices"]:
                tokens += sum(choice["new_tokens"])
                if "batch_id" in choice:   # throughput: a batch's wall time counts once for all its rows
                    batches.update(zip(choice["batch_id"], choice["batch_wall_time"]))
                else:
                    seconds += sum(choice["wall_time"])
            bar.update(1)
            bar.set_postfix(tok_s=f"{tokens / max(seconds + sum(batches.values()), 1e-9):.1f}")
    bar.close()
    end_session(store, runner)
    print(f"answers: {args.answer_file}")


def end_session(store: AnswerStore, runner: Runner) -> None:
    """What the session learned by its end, in its entry: a static engine's allocations and captures (eager runs'
    files stay as they were)."""
    if runner.engine.mode == "static":
        store.update_session({"engine": runner.engine.describe()})


class _Chain:
    """One choice of one question: its turns, as they complete (taken from a checkpoint or generated)."""

    def __init__(self, question: dict, choice: int, turns: int):
        self.question, self.choice = question, choice
        self.saved: dict[int, dict] = {}   # turn -> checkpoint entry of an earlier session
        self.resumed: list[tuple] = []     # (turn, row, prompt, entry) of the turns taken from it
        self.restore: str | None = None    # how this chain's drafter was restored (see Runner.answer_group)
        self.values: list[dict | None] = [None] * turns
        self.steps: list[list[dict]] = [[] for _ in range(turns)]
        self.tokens: list[list[int] | None] = [None] * turns

    def previous(self, turn: int) -> str | None:
        return self.values[turn - 1]["turns"] if turn > 0 else None

    def take(self, turn: int, values: dict, steps: list[dict], tokens: list[int]) -> None:
        self.values[turn], self.steps[turn], self.tokens[turn] = values, steps, tokens

    def record(self, fields: tuple[str, ...], token_ids: bool) -> dict:
        record = {key: [v.get(key) for v in self.values] for key in ("turns",) + fields}
        # One flat list over the choice: what the seed's speed_cot.py and Spec-Bench's speed.py average.
        record["accept_lengths"] = [n for v in self.values for n in v["accept_lengths_per_turn"]]
        if token_ids:
            record["token_ids"] = list(self.tokens)
        order = ["turns", "accept_lengths", *fields] + (["token_ids"] if token_ids else [])
        return {"index": self.choice, **{key: record[key] for key in order},
                "resumed_turns": [turn for turn, _, _, _ in self.resumed]}
