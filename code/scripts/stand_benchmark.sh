#!/usr/bin/env bash
# STAND against AR, PLD, SAM and Token Recycling, interleaved per question in one process (evaluation.interleaved):
# Best-of-N (N = 8, T = 0.6), multi-round thinking at T = 0 and at T = 0.6. Prints one compare.py table per setting
# (MAT and speedup per sample / round, 95% paired-bootstrap intervals over questions).
#
#   cd code && bash scripts/stand_benchmark.sh BON_QUESTIONS.jsonl ROUNDS_QUESTIONS.jsonl OUT_DIR [MAX_NEW_TOKENS]
#
# Environment: PYTHON (default python), MODEL (default the embedded SmolLM2-135M-Instruct), DTYPE (float32),
# BON_N (8), ROUNDS (2). Answer files go to OUT_DIR/<setting>/; a rerun resumes them.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: bash scripts/stand_benchmark.sh BON_QUESTIONS.jsonl ROUNDS_QUESTIONS.jsonl OUT_DIR [MAX_NEW_TOKENS]" >&2
    exit 2
fi
BON_QUESTIONS=$1; ROUND_QUESTIONS=$2; OUT=$3; TOKENS=${4:-96}
PYTHON=${PYTHON:-python}; MODEL=${MODEL:-local_model/SmolLM2-135M-Instruct}; DTYPE=${DTYPE:-float32}
BON_N=${BON_N:-8}; ROUNDS=${ROUNDS:-2}

run() {   # setting question-file flags...
    local setting=$1 questions=$2; shift 2
    mkdir -p "$OUT/$setting"
    local files=()
    for m in baseline pld samd recycling stand; do files+=("$OUT/$setting/stand-$m.jsonl"); done
    local specs=()   # a method's own flags may include the launchers' --answer-file
    for m in baseline pld samd recycling stand; do
        specs+=(--method "$m --answer-file $OUT/$setting/stand-$m.jsonl")
    done
    $PYTHON -m evaluation.interleaved --model-id-prefix stand "${specs[@]}" --model-path "$MODEL" --dtype "$DTYPE" \
        --question-file "$questions" --max-new-tokens "$TOKENS" "$@"
    echo "== $setting"
    $PYTHON evaluation/compare.py --base-path "${files[0]}" --file-path "${files[@]:1}" \
        --markdown-out "$OUT/$setting/compare.md"
}

run bon-T0.6 "$BON_QUESTIONS" --BON --bon-n "$BON_N" --temperature 0.6
run rounds-T0 "$ROUND_QUESTIONS" --think-twice --num-rounds "$ROUNDS"
run rounds-T0.6 "$ROUND_QUESTIONS" --think-twice --num-rounds "$ROUNDS" --temperature 0.6
