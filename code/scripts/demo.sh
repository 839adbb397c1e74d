#!/bin/bash
# CPU demo on the embedded SmolLM2-135M-Instruct: every built method, multi-round thinking (2 rounds), greedy,
# over the first demo questions, then one comparison table. Resumable: a second run reuses finished answers.
# Run from code/:  bash scripts/demo.sh     (QUESTIONS=8 MAX_NEW_TOKENS=256 for a longer run)
set -euo pipefail
PYTHON=${PYTHON:-python}
MODEL=${MODEL:-local_model/SmolLM2-135M-Instruct}
QUESTIONS=${QUESTIONS:-6}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-80}
OUT=data/demo/model_answer
TAG=smollm2-q${QUESTIONS}-n${MAX_NEW_TOKENS}
if [ "$QUESTIONS" -gt 8 ]; then
  echo "error: QUESTIONS must be at most 8: demo questions 9-16 are REST's corpus" >&2; exit 2
fi
COMMON="--model-path $MODEL --bench-name demo --question-file data/demo/question.jsonl
        --max-new-tokens $MAX_NEW_TOKENS --dtype float32 --device cpu --warmup 1 --warmup-tokens 32"

# REST's datastore: the model's own answers to the OTHER demo questions (never the answers being measured).
DATASTORE=$OUT/$TAG-rest-corpus.idx
if [ ! -f "$DATASTORE" ]; then
  $PYTHON -m evaluation.inference_baseline $COMMON --question-begin 8 --model-id $TAG-rest-corpus-answers
  $PYTHON -m model.rest.build_datastore --corpus $OUT/$TAG-rest-corpus-answers.jsonl --tokenizer-path $MODEL \
    --output $DATASTORE
fi

# EAGLE-3's head: trained once on ShareGPT conversations (never the demo questions), then reused.
HEAD=${HEAD:-local_model/eagle3-SmolLM2-135M-Instruct}
if [ ! -f "$HEAD/model.safetensors" ]; then
  echo "== training the EAGLE-3 head (25 minutes, once)"
  $PYTHON -m model.eagle3.train --target $MODEL --data sharegpt --output $HEAD --draft-vocab 8192 --max-length 512 \
    --max-samples 8000 --minutes 25 --lr 3e-4 --bf16-autocast
fi

# SpS's draft: the same model in bfloat16 (no smaller model shares SmolLM2's tokenizer here; see the README).
# All methods run in ONE process, interleaved per question (baseline first), so a burst of load on the machine hits
# every method alike; each still writes its own answer file, as its inference_<method> CLI would.
METHODS=(baseline pld samd recycling lookahead pia "rest --datastore-path $DATASTORE"
         "sps --drafter-path $MODEL --drafter-dtype bfloat16" "eagle3 --ea-model-path $HEAD"
         "samd-eagle3=samd --tree_method eagle3 --tree_model_path $HEAD")
ARGS=()
for method in "${METHODS[@]}"; do ARGS+=(--method "$method"); done
$PYTHON -m evaluation.interleaved $COMMON --question-end $QUESTIONS --think-twice --model-id-prefix $TAG "${ARGS[@]}"
FILES=""
for method in pld samd recycling lookahead pia rest sps eagle3 samd-eagle3; do FILES="$FILES $OUT/$TAG-$method.jsonl"; done
$PYTHON evaluation/compare.py --base-path $OUT/$TAG-baseline.jsonl --file-path $FILES --markdown-out $OUT/$TAG-table.md
$PYTHON evaluation/plot.py --base-path $OUT/$TAG-baseline.jsonl --file-path $FILES --out-dir $OUT/$TAG-fig
