"""The shared test-time-scaling loop: every method runs through `run_eval`, only the drafter differs."""
from __future__ import annotations

import hashlib
import platform
import sys
import time
import uuid

import torch
from tqdm import tqdm

from evaluation import paradigms
from evaluation.grading import grade_output
from evaluation.questions import load_questions
from evaluation.records import AnswerStore
from model.engine import Drafter, SamplingConfig, SpeculativeEngine
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
        "warmup_tokens": args.warmup_tokens,
        "thinking_budget": None if budget is None else
        {"trigger_at": budget.trigger_at, "phrase": paradigms.BUDGET_PHRASE},
        "chat_template": bool(getattr(tokenizer, "chat_template", None)), "question_file": args.question_file,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "command": " ".join(sys.argv), "created": time.time(),
    }


class Runner:
    """Generates the turns of one question with one engine and one drafter."""

    def __init__(self, args, engine: SpeculativeEngine, drafter: Drafter, tokenizer, stop, budget):
        self.args, self.engine, self.drafter, self.tokenizer = args, engine, drafter, tokenizer
        self.stop, self.budget = stop, budget
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
        scope = self.args.draft_state_scope
        choices, steps = [], []
        for choice_index in range(self.args.num_choices):
            if scope != "global":
                self.drafter.reset()
            record = {key: [] for key in ("turns", "new_tokens", "decoding_steps", "wall_time", "accept_lengths",
                                          "accept_lengths_per_turn", "draft_seconds", "verify_seconds",
                                          "forced_tokens", "prompt_tokens", "stopped", "extracted", "reference",
                                          "correct", "token_ids_sha1")}
            output = None
            for turn in range(self.turns):
                if scope == "sequence" and turn > 0:
                    self.drafter.reset()
                messages = paradigms.turn_messages(question, self.args.paradigm, turn, output)
                prompt = paradigms.encode_prompt(self.tokenizer, messages)
                seed = self.args.seed + choice_index * self.turns + turn
                gen, seconds = self.generate(prompt, seed, self.args.max_new_tokens)
                output = self.decode(gen.tokens)
                graded = grade_output(output, question)
                for key, value in (("turns", output), ("new_tokens", len(gen.tokens)),
                                   ("decoding_steps", len(gen.steps)), ("wall_time", seconds),
                                   ("accept_lengths_per_turn", gen.accept_lengths),
                                   ("draft_seconds", sum(s.draft_seconds for s in gen.steps)),
                                   ("verify_seconds", sum(s.verify_seconds for s in gen.steps)),
                                   ("forced_tokens", gen.forced_tokens), ("prompt_tokens", len(prompt)),
                                   ("stopped", gen.stopped), ("extracted", graded["extracted"]),
                                   ("reference", graded["reference"]), ("correct", graded["correct"]),
                                   ("token_ids_sha1", hashlib.sha1(str(gen.tokens).encode()).hexdigest())):
                    record[key].append(value)
                # One flat list over the choice: what the seed's speed_cot.py and Spec-Bench's speed.py average.
                record["accept_lengths"].extend(gen.accept_lengths)
                steps.extend({"question_id": question["question_id"], "choice": choice_index, "turn": turn,
                              "step": i, "draft_size": s.draft_size, "proposed_size": s.proposed_size,
                              "accepted": s.accepted,
                              "draft_source": s.source, "draft_seconds": s.draft_seconds,
                              "verify_seconds": s.verify_seconds, "context_length": s.context_length}
                             for i, s in enumerate(gen.steps))
            choices.append({"index": choice_index, **record})
        answer = {"question_id": question["question_id"], "category": question["category"],
                  "answer_id": uuid.uuid4().hex, "model_id": self.args.model_id, "tstamp": time.time(),
                  "paradigm": self.args.paradigm, "method": self.drafter.name, "choices": choices}
        return answer, steps


def measure_cost_profile(engine: SpeculativeEngine, drafters: list[Drafter], args) -> ForwardCostProfile:
    """t(n)/t(1) for this model, dtype and device, up to twice the largest draft the methods send (every run
    records it; --cost-aware verification decides with it)."""
    bound = max(d.max_draft_nodes() or args.max_tree_nodes for d in drafters)
    max_width = min(args.max_tree_nodes + 1, max(DENSE_WIDTHS, 2 * (bound + 1)))
    limit = getattr(engine.model.config, "max_position_embeddings", None) or 1 << 30
    lengths = sorted({min(n, limit - max_width - 1) for n in args.cost_profile_contexts})
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
    return store, runner


def start_session(store: AnswerStore, runner: Runner, first_question: dict,
                  profile: ForwardCostProfile | None = None) -> None:
    """Before measuring: profile the forward cost (recorded; --cost-aware decides with it), then warm up."""
    args, engine = runner.args, runner.engine
    profile = profile or measure_cost_profile(engine, [runner.drafter], args)
    store.add_session({"started": time.time(), "cost_profile": profile.to_dict()})
    if args.cost_aware:
        engine.cost_aware = CostAwareVerifier(profile)
    if args.warmup:
        runner.warm_up(first_question)


def run_eval(args, make_drafter) -> None:
    """Load the model, then answer every question not already in the answer file (several replicas: see
    evaluation/replicas.py)."""
    from evaluation import replicas  # Ray itself is imported only when replicas are asked for
    if replicas.replica_count(args) > 1:
        replicas.run_replicated(args, make_drafter)
        return
    questions = replicas.assigned(args, load_questions(args.question_file, args.question_begin, args.question_end))
    model, tokenizer, device = load_model(args.model_path, args.dtype, args.device, args.num_gpus_per_model)
    if args.BON and args.temperature == 0:
        print("warning: Best-of-N at temperature 0 gives N identical samples", file=sys.stderr)
    store, runner = open_run(args, make_drafter, model, tokenizer, device)
    replicas.note_replica(args, store, device)  # inside a replica: check against its siblings, record its hardware
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
