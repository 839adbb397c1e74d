#!/bin/bash
# CPU demo on the embedded SmolLM2-135M-Instruct: every built method, multi-round thinking (2 rounds),
# greedy, over the demo questions, then one comparison table. Resumable: a second run reuses finished answers.
# Run from code/:  bash scripts/demo.sh   (QUESTIONS=16 MAX_NEW_TOKENS=256 for the full demo set)
set -euo pipefail
PYTHON=${PYTHON:-python}
MODEL=${MODEL:-local_model/SmolLM2-135M-Instruct}
QUESTIONS=${QUESTIONS:-8}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-96}
OUT=data/demo/model_answer
COMMON="--model-path $MODEL --bench-name demo --question-file data/demo/question.jsonl --question-end $QUESTIONS
        --max-new-tokens $MAX_NEW_TOKENS --dtype float32 --device cpu --think-twice --warmup 1 --warmup-tokens 32"
TAG=smollm2-q${QUESTIONS}-n${MAX_NEW_TOKENS}

for method in baseline pld samd recycling; do
  echo "== $method"
  $PYTHON -m evaluation.inference_$method $COMMON --model-id $TAG-$method
done
$PYTHON evaluation/compare.py --base-path $OUT/$TAG-baseline.jsonl \
  --file-path $OUT/$TAG-pld.jsonl $OUT/$TAG-samd.jsonl $OUT/$TAG-recycling.jsonl --markdown-out $OUT/$TAG-table.md
