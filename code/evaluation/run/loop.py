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
from evaluation.run import paradigms
from evaluation.run.records import AnswerStore
from model.engine import Drafter, SamplingConfig, SpeculativeEngine, StepFeedback
from model.engine.cost import DENSE_WIDTHS, CostAwareVerifier, ForwardCostProfile
from model.engine.loading import load_model
from model.errors import UserError


def run_config(args, drafter: Drafter, device: torch.device, budget, tokenizer) -> dict:
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
        "warmup_tokens": args.warmup_tokens, "save_token_ids": args.save_token_ids,
        "thinking_budget": None if budget is None else
        {"trigger_at": budget.trigger_at, "phrase": paradigms.BUDGET_PHRASE},
        "chat_template": bool(getattr(tokenizer, "chat_template", None)), "question_file": args.question_file,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "command": " ".join(sys.argv), "created": time.time(),
    }


class Runner:
    """Generates the turns of one question with one engine and one drafter."""

    # Answer fields with one entry per turn ("turns", the output text, as well).
    TURN_FIELDS = ("new_tokens", "decoding_steps", "wall_time", "accept_lengths_per_turn", "draft_seconds",
                   "verify_seconds", "forced_tokens", "prompt_tokens", "stopped", "extracted", "reference",
                   "correct", "token_ids_sha1")

    def __init__(self, args, engine: SpeculativeEngine, drafter: Drafter, tokenizer, stop, budget):
        self.args, self.engine, self.drafter, self.tokenizer = args, engine, drafter, tokenizer
        self.stop, self.budget = stop, budget
        self.store: AnswerStore | None = None   # set by open_run: completed turns are checkpointed there
        self.sampling = SamplingConfig(args.temperature, args.top_p, args.top_k)
        self.turns = paradigms.turns_per_question(args)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.engine.device).manual_seed(seed)

    def generate(self, prompt: list[int], seed: int, max_new_tokens: int):
        start = self.engine.clock()
        gen = self.engine.generate(prompt, self.drafter, max_new_tokens, self.sampling, self.generator(seed),
                                   self.stop, self.budget)
        return gen, self.engine.clock() - start

    def decode(self, tokens: list[int]) -> str:
        if tokens and tokens[-1] in self.stop:
            tokens = tokens[:-1]
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()

    def warm_up(self, question: dict) -> None:
        prompt = paradigms.encode_prompt(self.tokenizer, paradigms.turn_messages(question, "single", 0, None))
        for i in range(self.args.warmup):
            self.generate(prompt, self.args.seed + i, min(self.args.warmup_tokens, self.args.max_new_tokens))
        self.drafter.reset()  # what the drafter saw during warm-up must not help the measured run
        if self.engine.cost_aware is not None:
            self.engine.cost_aware.reset()

    def answer(self, question: dict) -> tuple[dict, list[dict]]:
        """Every turn of every choice of one question: the answer line and the question's step-log lines.

        With a store (`open_run` gives one), each completed turn is checkpointed in `<stem>.partial.jsonl`, and the
        turns a killed run had completed are taken from there instead of being generated again: the next turn gets
        the same prompt and seed, so greedy and point-mass-sampled output is token-identical to an uninterrupted
        run. A resumed turn keeps the wall_time, draft_seconds and verify_seconds measured when it ran (it was
        measured in full, in that earlier session). Each choice records `resumed_turns` (the turn indices taken from
        a checkpoint) and the answer `drafter_restore`: how the drafter got what it keeps across turns, at the turn
        where generation resumed: "replayed" (a question-scope drafter whose state is built from the tokens alone:
        the turns before were fed to it again, begin_sequence + observe as forced tokens), "cold" (it could not be:
        global scope, a drafter that learns from the target's outputs or hidden states; it restarted empty for the
        rest of the question), "not needed" (sequence scope, a resume at the start of a choice, or nothing left to
        generate); null when no turn was resumed. The cost-aware verifier's acceptance estimate (kept across
        questions) restarts with every session, as it does when whole questions are resumed.
        """
        scope = self.args.draft_state_scope
        question_id = question["question_id"]
        saved = self.store.completed_turns(question_id, self.turns) if self.store is not None else []
        saved = {(entry["choice"], entry["turn"]): entry for entry in saved}
        restore = None if not saved else "not needed"
        restoring = bool(saved)   # until the first turn this session generates
        choices, steps = [], []
        for choice_index in range(self.args.num_choices):
            if scope != "global":
                self.drafter.reset()
            record = {key: [] for key in ("turns", "accept_lengths") + self.TURN_FIELDS}
            if self.args.save_token_ids:
                record["token_ids"] = []
            output = None
            resumed = []   # (turn, prompt, entry) of this choice's turns taken from a checkpoint
            for turn in range(self.turns):
                messages = paradigms.turn_messages(question, self.args.paradigm, turn, output)
                prompt = paradigms.encode_prompt(self.tokenizer, messages)
                entry = saved.get((choice_index, turn))
                if entry is not None:
                    values, turn_steps, tokens = entry["record"], entry["steps"], entry["tokens"]
                    resumed.append((turn, prompt, entry))
                else:
                    if restoring:
                        restore, restoring = self._restore_drafter(resumed), False
                    if scope == "sequence" and turn > 0:
                        self.drafter.reset()
                    seed = self.args.seed + choice_index * self.turns + turn
                    gen, seconds = self.generate(prompt, seed, self.args.max_new_tokens)
                    tokens = gen.tokens
                    text = self.decode(gen.tokens)
                    graded = grade_output(text, question)
                    values = {"turns": text, "new_tokens": len(gen.tokens), "decoding_steps": len(gen.steps),
                              "wall_time": seconds, "accept_lengths_per_turn": gen.accept_lengths,
                              "draft_seconds": sum(s.draft_seconds for s in gen.steps),
                              "verify_seconds": sum(s.verify_seconds for s in gen.steps),
                              "forced_tokens": gen.forced_tokens, "prompt_tokens": len(prompt),
                              "stopped": gen.stopped, "extracted": graded["extracted"],
                              "reference": graded["reference"], "correct": graded["correct"],
                              "token_ids_sha1": hashlib.sha1(str(gen.tokens).encode()).hexdigest()}
                    turn_steps = [{"question_id": question_id, "choice": choice_index, "turn": turn, "step": i,
                                   "draft_size": s.draft_size, "proposed_size": s.proposed_size,
                                   "accepted": s.accepted, "draft_source": s.source,
                                   "draft_seconds": s.draft_seconds, "verify_seconds": s.verify_seconds,
                                   "context_length": s.context_length}
                                  for i, s in enumerate(gen.steps)]
                    if self.store is not None:
                        self.store.checkpoint(question_id, {"choice": choice_index, "turn": turn, "record": values,
                                                            "tokens": gen.tokens, "steps": turn_steps})
                output = values["turns"]
                for key in ("turns",) + self.TURN_FIELDS:
                    record[key].append(values[key])
                if self.args.save_token_ids:
                    record["token_ids"].append(tokens)
                # One flat list over the choice: what the seed's speed_cot.py and Spec-Bench's speed.py average.
                record["accept_lengths"].extend(values["accept_lengths_per_turn"])
                steps.extend(turn_steps)
            choices.append({"index": choice_index, **record, "resumed_turns": [t for t, _, _ in resumed]})
        answer = {"question_id": question_id, "category": question["category"],
                  "answer_id": uuid.uuid4().hex, "model_id": self.args.model_id, "tstamp": time.time(),
                  "paradigm": self.args.paradigm, "method": self.drafter.name, "drafter_restore": restore,
                  "choices": choices}
        return answer, steps

    def _restore_drafter(self, resumed: list) -> str:
        """Before the first turn generated after a resume: give the drafter what its scope says it keeps from the
        turns taken from a checkpoint (`resumed`: this choice's, in order). Returns how (see `answer`)."""
        scope = self.args.draft_state_scope
        if scope == "sequence" or (scope == "question" and not resumed):
            return "not needed"   # it starts empty here in an uninterrupted run too
        if scope == "global" or not self.state_from_tokens(self.drafter):
            return "cold"
        for _, prompt, entry in resumed:
            self.drafter.begin_sequence(list(prompt))
            tokens, start = entry["tokens"], 0
            for step in entry["steps"]:   # the same chunks the drafter was shown when the turn ran
                chunk = tokens[start:start + step["accepted"]]
                start += len(chunk)
                if chunk:
                    self.drafter.observe(StepFeedback(chunk, None, [], []))
            if start < len(tokens):
                self.drafter.observe(StepFeedback(tokens[start:], None, [], []))
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


def measure_cost_profile(engine: SpeculativeEngine, drafters: list[Drafter], args) -> ForwardCostProfile:
    """t(n)/t(1) for this model, dtype and device, up to twice the largest draft the methods send (every run
    records it; --cost-aware verification decides with it)."""
    bound = max(args.max_tree_nodes if d.max_draft_nodes() is None else d.max_draft_nodes() for d in drafters)
    max_width = min(args.max_tree_nodes + 1, max(DENSE_WIDTHS, 2 * (bound + 1)))
    limit = getattr(engine.model.config, "max_position_embeddings", None) or 1 << 30
    lengths = sorted({min(n, limit - max_width - 1) for n in args.cost_profile_contexts})
    print(f"measuring the forward cost t(n)/t(1): widths 1..{max_width} at {', '.join(map(str, lengths))} tokens of "
          f"context, {args.cost_profile_repeats} repeat(s)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    profile = ForwardCostProfile.measure(engine, max_width, lengths, args.cost_profile_repeats, args.seed)
    ratios = " ".join(f"{w}:{r:.2f}" for w, r in zip(profile.widths, profile.to_dict()["ratio"][-1]))
    print(f"forward cost t(n)/t(1) at {lengths[-1]} tokens of context ({time.perf_counter() - start:.1f} s to "
          f"measure): {ratios}", file=sys.stderr)
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
    budget = None if args.no_thinking_budget else paradigms.thinking_budget(tokenizer, args.max_new_tokens)
    store = AnswerStore(args.answer_file, run_config(args, drafter, device, budget, tokenizer))
    engine = SpeculativeEngine(model, max_tree_nodes=args.max_tree_nodes)
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
    tokens = seconds = 0.0
    bar = tqdm(todo, desc=f"{runner.drafter.name} ({len(store.done)} done before)", unit="q", dynamic_ncols=True)
    for question in bar:
        answer, steps = runner.answer(question)
        store.write(answer, steps)
        for choice in answer["choices"]:
            tokens += sum(choice["new_tokens"])
            seconds += sum(choice["wall_time"])
        bar.set_postfix(tok_s=f"{tokens / max(seconds, 1e-9):.1f}")
    print(f"answers: {args.answer_file}")
