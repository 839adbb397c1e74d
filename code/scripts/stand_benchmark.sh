#!/usr/bin/env bash
# STAND against AR, PLD, SAM, PIA and Token Recycling, interleaved per question in one process (evaluation.interleaved):
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
# The point-mass n-gram drafters (PLD, SAM, PIA), Token Recycling, STAND; STAND and SAM also with cost-aware
# verification (the verifier sizes each draft by the measured forward cost: what makes a tree budget device-free).
METHODS=(baseline pld samd pia recycling stand "stand-ca=stand --cost-aware" "samd-ca=samd --cost-aware")

run() {   # setting question-file flags...
    local setting=$1 questions=$2; shift 2
    mkdir -p "$OUT/$setting"
    local files=() specs=()
    for spec in "${METHODS[@]}"; do
        local name=${spec%% *}; name=${name%%=*}
        files+=("$OUT/$setting/stand-$name.jsonl")
        specs+=(--method "$spec --answer-file $OUT/$setting/stand-$name.jsonl")
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
