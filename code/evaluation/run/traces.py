"""Reading the traces replay takes: what was generated, for which prompt, as which sample of which question.

Formats, one JSON object a line (a file holds one of them):
- an answer file of this harness (`choices` with `turns`), its prompts rebuilt from its question file;
- plain pairs `{"prompt", "response"}`, optionally `question_id` (or `problem_id`; lines sharing it are the samples of
  one question: Best-of-N) and `sample` (the sample's index);
- vLLM `RequestOutput`s `{"prompt", "outputs": [{"text"}, ...]}` (with `prompt_token_ids` / `token_ids`, their exact
  ids) and OpenAI-style `{"prompt" | "messages", "choices": [{"text"} | {"message": {"content"}}, ...]}`: the outputs
  of one line are the samples of one question;
- lm-evaluation-harness `--log_samples` lines (`doc_id`, `arguments`, `resps`): `resps[0]` holds a document's
  samples (its `repeats`); the same document logged once per filter is read once.

`prompt_format`: "raw" tokenizes a text prompt as the text the model continued (with the bos the tokenizer adds by
default, as a serving engine does); "chat" wraps it as the one user message of the chat template. Default: "chat" for
plain pairs (what they always meant here), "raw" for the serving and evaluation tools' prompts (already the model's
full input), "chat" for message lists.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from evaluation.run import paradigms, replicas
from evaluation.run.records import stem
from model.errors import UserError

PROMPT_FORMATS = ("raw", "chat")


@dataclass
class Turn:
    question_id: object
    category: str
    choice: int
    turn: int
    prompt: list[int]
    tokens: list[int]
    forced_at: int | None      # where the thinking budget's phrase starts, if it was forced
    forced: int                # its length
    retokenized: bool
    think_end: int | None = None   # index in `tokens` of the end-of-thinking token, if the output has one


@dataclass
class Trace:
    turns: list[Turn]
    kind: str                  # which format the file was read as
    config: dict               # the recorded run's configuration (answer files), else {}
    paradigm: str              # "best_of_n" when a question has several samples
    num_choices: int


@dataclass
class _Record:
    """One generated text read from a line, before tokenizing."""
    lineno: int
    question: object           # None: the line is its own question
    sample: int | None
    prompt: object             # text, or a list of chat messages
    output: str
    category: str = ""
    prompt_ids: list | None = None
    output_ids: list | None = None


def read_jsonl(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno}: not a JSON line") from None
            if not isinstance(value, dict):
                raise UserError(f"{path}:{lineno}: a JSON line but not an object")
            value["__line__"] = lineno
            out.append(value)
    if not out:
        raise UserError(f"{path} holds no trace")
    return out


def read_config(answer_file: str) -> dict:
    return replicas.read_config(stem(answer_file) + ".config.json") or {}


def encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def is_answer_line(line: dict) -> bool:
    choices = line.get("choices")
    return isinstance(choices, list) and bool(choices) and all(isinstance(c, dict) and "turns" in c for c in choices)


def select_model(lines: list[dict], model: str | None) -> list[dict]:
    """The lines of one model: a file mixing models' traces replays one model at a time (`model` field)."""
    models = sorted({str(line["model"]) for line in lines if "model" in line})
    if model is None:
        if len(models) > 1:
            raise UserError(f"the trace file holds the traces of {len(models)} models ({', '.join(models)}): "
                            "pick one with --trace-model")
        return lines
    kept = [line for line in lines if str(line.get("model")) == model]
    if not kept:
        raise UserError(f"--trace-model {model}: no line of the trace file has that model "
                        f"({', '.join(models) or 'no line names a model'})")
    return kept


# ---------------------------------------------------------------------------------------------- per format

def _text(value, what: str, lineno: int) -> str:
    if not isinstance(value, str):
        raise UserError(f"line {lineno}: {what} is not a string")
    return value


def _pair(line: dict) -> list[_Record]:
    question = line.get("question_id", line.get("problem_id"))
    sample = line.get("sample")
    if sample is not None and not isinstance(sample, int):
        raise UserError(f"line {line['__line__']}: sample {sample!r} is not an integer")
    return [_Record(line["__line__"], question, sample, line["prompt"], line["response"], line.get("category", ""))]


def _vllm(line: dict) -> list[_Record]:
    lineno, question = line["__line__"], line.get("question_id", line.get("request_id"))
    prompt_ids = line.get("prompt_token_ids")
    out = []
    for k, output in enumerate(line["outputs"]):
        if not isinstance(output, dict):
            raise UserError(f"line {lineno}: outputs[{k}] is not an object with a text")
        ids = output.get("token_ids")
        out.append(_Record(lineno, question, output.get("index", k), line["prompt"],
                           _text(output.get("text"), f"outputs[{k}].text", lineno), line.get("category", ""),
                           list(prompt_ids) if prompt_ids and ids else None, list(ids) if prompt_ids and ids else None))
    return out


def _openai(line: dict) -> list[_Record]:
    lineno = line["__line__"]
    prompt = line.get("prompt", line.get("messages"))
    out = []
    for k, choice in enumerate(line["choices"]):
        text = choice.get("text") if isinstance(choice, dict) else None
        if text is None and isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            text = choice["message"].get("content")
        out.append(_Record(lineno, line.get("question_id", line.get("id")), choice.get("index", k), prompt,
                           _text(text, f"choices[{k}] text (or message.content)", lineno), line.get("category", "")))
    return out


def _lm_eval(line: dict) -> list[_Record]:
    """lm-eval's sample log: `arguments` {"gen_args_0": {"arg_0": context, "arg_1": generation kwargs}} (older
    versions: [[context, kwargs]]); a chat model's context may be a one-item list holding the JSON messages."""
    lineno, arguments = line["__line__"], line["arguments"]
    first = arguments.get("gen_args_0") if isinstance(arguments, dict) else arguments[0] if arguments else None
    context = (first or {}).get("arg_0") if isinstance(first, dict) else first[0] if first else None
    if isinstance(context, list) and len(context) == 1 and isinstance(context[0], str):
        try:
            context = json.loads(context[0])
        except json.JSONDecodeError:
            raise UserError(f"line {lineno}: arguments' context is a list but not of JSON chat messages") from None
    if context is None:
        raise UserError(f"line {lineno}: lm-eval arguments without a context (gen_args_0.arg_0)")
    resps = line["resps"]
    samples = resps[0] if resps and isinstance(resps[0], list) else resps
    return [_Record(lineno, line.get("doc_id", lineno), k, context, _text(text, f"resps[0][{k}]", lineno))
            for k, text in enumerate(samples)]


def kind_of(line: dict) -> str | None:
    if is_answer_line(line):
        return "answer file"
    has_prompt = "prompt" in line or isinstance(line.get("messages"), list)
    if has_prompt and isinstance(line.get("outputs"), list):
        return "vLLM outputs"
    if has_prompt and isinstance(line.get("choices"), list):
        return "OpenAI-style choices"
    if "arguments" in line and isinstance(line.get("resps"), list):
        return "lm-eval samples"
    if isinstance(line.get("prompt"), str) and isinstance(line.get("response"), str):
        return "prompt/response pairs"
    return None


READERS = {"prompt/response pairs": _pair, "vLLM outputs": _vllm, "OpenAI-style choices": _openai,
           "lm-eval samples": _lm_eval}
DEFAULT_FORMAT = {"prompt/response pairs": "chat", "vLLM outputs": "raw", "OpenAI-style choices": "raw",
                  "lm-eval samples": "raw"}


def records_of(lines: list[dict]) -> tuple[str, list[_Record]]:
    kind = None
    records = []
    for line in lines:
        this = kind_of(line)
        if this is None:
            raise UserError(f"line {line['__line__']}: neither an answer line of this harness, a {{prompt, response}} "
                            "pair, vLLM {prompt, outputs}, OpenAI-style {prompt, choices} nor an lm-eval sample "
                            "{arguments, resps}")
        if kind is not None and this != kind:
            raise UserError(f"line {line['__line__']}: a line of {this} in a file of {kind} (one format a file)")
        kind = this
        records += READERS[kind](line)
    if kind == "lm-eval samples":   # lm-eval logs a document once per filter: keep its first line
        seen, unique = set(), []
        for r in records:
            if (r.question, r.sample) not in seen:
                seen.add((r.question, r.sample))
                unique.append(r)
        records = unique
    return kind, records


def encode_record_prompt(tokenizer, prompt, prompt_format: str, lineno: int) -> list[int]:
    if isinstance(prompt, list):
        if prompt_format == "raw":
            raise UserError(f"line {lineno}: the prompt is a list of chat messages: --prompt-format raw needs text")
        return paradigms.encode_prompt(tokenizer, prompt)
    prompt = _text(prompt, "the prompt", lineno)
    if prompt_format == "raw":
        ids = tokenizer(prompt)["input_ids"]   # as the model's engine read it: with the tokenizer's default bos
        if not ids:
            raise UserError(f"line {lineno}: the prompt tokenized to nothing")
        return ids
    return paradigms.encode_prompt(tokenizer, [{"role": "user", "content": prompt}])


def generated_turns(lines: list[dict], tokenizer, prompt_format: str | None) -> Trace:
    """The turns of a file of generations (every format but this harness's answer files): each question's samples
    in sample order, a question's samples as the turns of its one chain (as the live loop holds Best-of-N)."""
    kind, records = records_of(lines)
    questions: dict = {}
    for r in records:
        key = r.question if r.question is not None else f"line-{r.lineno}"
        questions.setdefault(key, []).append(r)
    turns = []
    for key, samples in questions.items():
        if any(r.sample is None for r in samples) and any(r.sample is not None for r in samples):
            raise UserError(f"question {key!r}: some lines give their sample, some do not")
        if samples[0].sample is not None:
            samples = sorted(samples, key=lambda r: r.sample)
            for a, b in zip(samples, samples[1:]):
                if a.sample == b.sample:
                    raise UserError(f"line {b.lineno}: question {key!r} has sample {b.sample} twice "
                                    f"(also line {a.lineno})")
        for t, r in enumerate(samples):
            if r.output_ids is not None:
                prompt, tokens, retokenized = r.prompt_ids, r.output_ids, False
            else:
                chosen = prompt_format or ("chat" if isinstance(r.prompt, list) else DEFAULT_FORMAT[kind])
                prompt = encode_record_prompt(tokenizer, r.prompt, chosen, r.lineno)
                tokens, retokenized = encode_text(tokenizer, r.output), True
            turns.append(Turn(key, r.category, 0, t, prompt, tokens, None, 0, retokenized))
    most = max(len(s) for s in questions.values())
    return Trace(turns, kind, {}, "best_of_n" if most > 1 else "single", 1)


def answer_turns(lines: list[dict], config: dict, question_file: str | None, tokenizer) -> list[Turn]:
    """The turns of an answer file in the order the live run generated them, with the prompts it built."""
    from evaluation.data.questions import load_questions
    question_file = question_file or config.get("question_file")
    if not question_file:
        raise UserError("the answer file has no configuration naming its question file: give --question-file")
    questions = {q["question_id"]: q for q in load_questions(question_file)}
    paradigm = config.get("paradigm", lines[0].get("paradigm", "single"))
    budget = config.get("thinking_budget") or {}
    turns = []
    for line in lines:
        try:
            question = questions[line["question_id"]]
            choices = line["choices"]
        except KeyError:
            raise UserError(f"question {line.get('question_id')!r} of the answer file is not in {question_file} "
                            "(give the --question-file it was answered from)") from None
        for choice in choices:
            previous, ids = None, choice.get("token_ids")
            for t, text in enumerate(choice["turns"]):
                prompt = paradigms.encode_prompt(tokenizer, paradigms.turn_messages(question, paradigm, t, previous))
                forced = (choice.get("forced_tokens") or [0] * len(choice["turns"]))[t]
                if forced and "trigger_at" not in budget:
                    raise UserError(f"question {line['question_id']!r}: a turn ends in the thinking budget's phrase, "
                                    "but no run configuration says where it was forced (keep <stem>.config.json "
                                    "beside the answer file)")
                if ids is not None:
                    tokens, retokenized = list(ids[t]), False
                else:
                    tokens, retokenized = encode_text(tokenizer, text), True
                turns.append(Turn(line["question_id"], line.get("category", ""), choice.get("index", 0), t, prompt,
                                  tokens, budget.get("trigger_at") if forced else None, forced, retokenized))
                previous = text
    return turns


def mark_thinking(turns: list[Turn], tokenizer) -> None:
    """Where each output's thinking ends: its first end-of-thinking token (none for a model without markers)."""
    end = paradigms.single_token_id(tokenizer, paradigms.THINK_END) if paradigms.has_thinking_markers(tokenizer) \
        else None
    for turn in turns:
        turn.think_end = turn.tokens.index(end) if end is not None and end in turn.tokens else None


def check_traces(path: str, model: str | None = None) -> None:
    """Every line readable, before any tokenizer is loaded (a bad line is reported in a moment, not after one)."""
    lines = select_model(read_jsonl(path), model)
    if not is_answer_line(lines[0]):
        records_of(lines)


def read_traces(path: str, tokenizer, question_file: str | None = None, prompt_format: str | None = None,
                model: str | None = None) -> Trace:
    lines = select_model(read_jsonl(path), model)
    if is_answer_line(lines[0]):
        if prompt_format is not None:
            raise UserError("--prompt-format is for files of generations: an answer file's prompts are rebuilt "
                            "from its question file as the live run built them")
        config = read_config(path)
        if config.get("temperature", 0) > 0 and config.get("method") == "sps":
            raise UserError("this trace was sampled at temperature > 0 with residual resampling (SpS): its tokens are "
                            "not the ones a point-mass drafter's live run would draw, so replay would not be exact")
        for line in lines:
            if not is_answer_line(line):
                raise UserError(f"line {line['__line__']}: not an answer line, in an answer file")
        paradigm = config.get("paradigm", lines[0].get("paradigm", "single"))
        trace = Trace(answer_turns(lines, config, question_file, tokenizer), "answer file", config, paradigm,
                      max(len(line["choices"]) for line in lines))
    else:
        trace = generated_turns(lines, tokenizer, prompt_format)
    mark_thinking(trace.turns, tokenizer)
    return trace


def trace_models(path: str) -> list[str]:
    """The models a trace file's lines name (`model` field), in order of first appearance."""
    seen = []
    for line in read_jsonl(path):
        if "model" in line and str(line["model"]) not in seen:
            seen.append(str(line["model"]))
    return seen
