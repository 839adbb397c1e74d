#!/bin/bash
# CPU demo on the embedded SmolLM2-135M-Instruct: every method, multi-round thinking (2 rounds), greedy, over the
# first demo questions, interleaved in one process, then one comparison table and the figures. Resumable: a second
# run reuses the REST datastore, the EAGLE-3 head and every finished answer.
# Run from code/:  bash scripts/demo.sh          (what `make demo` runs)
#                  bash scripts/demo.sh head     (only train the demo's EAGLE-3 head; `make head`)
# Variables: QUESTIONS (default 4, at most 8), MAX_NEW_TOKENS (48), HEAD_MINUTES (the head's training budget, 4).
set -euo pipefail
PYTHON=${PYTHON:-python}
MODEL=${MODEL:-local_model/SmolLM2-135M-Instruct}
QUESTIONS=${QUESTIONS:-4}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-48}
HEAD_MINUTES=${HEAD_MINUTES:-4}
OUT=data/demo/model_answer
TAG=smollm2-q${QUESTIONS}-n${MAX_NEW_TOKENS}
if [ "$QUESTIONS" -gt 8 ]; then
  echo "error: QUESTIONS must be at most 8: demo questions 9-16 are REST's corpus" >&2; exit 2
fi
started=$SECONDS
say() { echo "== [$(( (SECONDS - started) / 60 ))m$(( (SECONDS - started) % 60 ))s] $*" >&2; }

# EAGLE-3's head: trained once on ShareGPT conversations (never the demo questions), one folder per budget.
HEAD=${HEAD:-local_model/eagle3-SmolLM2-135M-Instruct-${HEAD_MINUTES}min}
if [ ! -f "$HEAD/model.safetensors" ]; then
  say "training the EAGLE-3 head: $HEAD_MINUTES minutes on ShareGPT (once; HEAD_MINUTES=25 for a stronger head)"
  $PYTHON -m model.eagle3.train --target $MODEL --data sharegpt --output $HEAD --draft-vocab 8192 --max-length 512 \
    --max-samples 2000 --minutes $HEAD_MINUTES --lr 3e-4 --bf16-autocast
fi
[ "${1:-}" = head ] && exit 0

# The forward-cost profile is measured at the demo's context lengths only (its answers are short).
COMMON="--model-path $MODEL --bench-name demo --question-file data/demo/question.jsonl
        --max-new-tokens $MAX_NEW_TOKENS --dtype float32 --device cpu --warmup 1 --warmup-tokens 16
        --cost-profile-contexts 256"

# REST's datastore: the model's own answers to the OTHER demo questions (never the answers being measured).
DATASTORE=$OUT/$TAG-rest-corpus.idx
if [ ! -f "$DATASTORE" ]; then
  say "REST's corpus: the model's answers to demo questions 9-16"
  $PYTHON -m evaluation.inference_baseline $COMMON --question-begin 8 --model-id $TAG-rest-corpus-answers \
    --cost-profile-repeats 1
  $PYTHON -m model.rest.build_datastore --corpus $OUT/$TAG-rest-corpus-answers.jsonl --tokenizer-path $MODEL \
    --output $DATASTORE
fi

# SpS's draft: the same model in bfloat16 (no smaller model shares SmolLM2's tokenizer here; see docs/methods.md).
# All methods run in ONE process, interleaved per question (baseline first), so a burst of load on the machine hits
# every method alike; each still writes its own answer file, as its inference_<method> CLI would. The EAGLE-3 files
# are named after the head's budget, so a stronger head adds its own rows instead of clashing with the first.
E3=eagle3-h${HEAD_MINUTES}min
METHODS=(baseline pld samd recycling lookahead pia stand suffix "rest --datastore-path $DATASTORE"
         "sps --drafter-path $MODEL --drafter-dtype bfloat16" "$E3=eagle3 --ea-model-path $HEAD"
         "samd-$E3=samd --tree_method eagle3 --tree_model_path $HEAD")
ARGS=()
for method in "${METHODS[@]}"; do ARGS+=(--method "$method"); done
say "running ${#METHODS[@]} methods on $QUESTIONS demo questions x 2 rounds x $MAX_NEW_TOKENS tokens, interleaved"
$PYTHON -m evaluation.interleaved $COMMON --question-end $QUESTIONS --think-twice --model-id-prefix $TAG "${ARGS[@]}"
FILES=""
for method in pld samd recycling lookahead pia stand suffix rest sps $E3 samd-$E3; do FILES="$FILES $OUT/$TAG-$method.jsonl"; done
$PYTHON evaluation/compare.py --base-path $OUT/$TAG-baseline.jsonl --file-path $FILES --markdown-out $OUT/$TAG-table.md
$PYTHON evaluation/plot.py --base-path $OUT/$TAG-baseline.jsonl --file-path $FILES --out-dir $OUT/$TAG-fig > /dev/null
say "done. Table: code/$OUT/$TAG-table.md  Figures: code/$OUT/$TAG-fig/ (PNG + SVG)  Answers: code/$OUT/$TAG-*.jsonl"
