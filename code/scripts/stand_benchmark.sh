#!/usr/bin/env bash
# STAND against AR, PLD, SAM, PIA and Token Recycling, interleaved per question in one process (evaluation.interleaved):
# Best-of-N (N = 8, T = 0.6), multi-round thinking at T = 0 and at T = 0.6. Prints one compare.py table per setting
# (MAT and speedup per sample / round, 95% paired-bootstrap intervals over questions).
#
#   cd code && bash scripts/stand_benchmark.sh BON_QUESTIONS.jsonl ROUNDS_QUESTIONS.jsonl OUT_DIR [MAX_NEW_TOKENS]
#
# Environment: PYTHON (default python), MODEL (default the embedded SmolLM2-135M-Instruct), DTYPE (float32),
# BON_N (8), ROUNDS (2), SETTINGS (default "bon-T0.6 rounds-T0 rounds-T0.6": which to run). Answer files go to
# OUT_DIR/<setting>/; a rerun resumes them. Methods run in lockstep (`--lockstep`: one step each in turn, a waiting
# run's clock stopped), so a drifting machine slows every method alike.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: bash scripts/stand_benchmark.sh BON_QUESTIONS.jsonl ROUNDS_QUESTIONS.jsonl OUT_DIR [MAX_NEW_TOKENS]" >&2
    exit 2
fi
BON_QUESTIONS=$1; ROUND_QUESTIONS=$2; OUT=$3; TOKENS=${4:-96}
PYTHON=${PYTHON:-python}; MODEL=${MODEL:-local_model/SmolLM2-135M-Instruct}; DTYPE=${DTYPE:-float32}
BON_N=${BON_N:-8}; ROUNDS=${ROUNDS:-2}; SETTINGS=${SETTINGS:-bon-T0.6 rounds-T0 rounds-T0.6}
# The point-mass n-gram drafters (PLD, SAM, PIA), Token Recycling, STAND; STAND and SAM also with cost-aware
# verification (the verifier sizes each draft by the measured forward cost: what makes a tree budget device-free);
# STAND also at Token Recycling's budget (80 nodes, 8 children per node), for MAT at equal tree size.
METHODS=(baseline pld samd pia recycling stand "stand-ca=stand --cost-aware" "samd-ca=samd --cost-aware"
         "stand-80=stand --max-nodes 80 --max-children 8")

run() {   # setting question-file flags...
    local setting=$1 questions=$2; shift 2
    mkdir -p "$OUT/$setting"
    local files=() specs=()
    for spec in "${METHODS[@]}"; do
        local name=${spec%% *}; name=${name%%=*}
        files+=("$OUT/$setting/stand-$name.jsonl")
        specs+=(--method "$spec --answer-file $OUT/$setting/stand-$name.jsonl")
    done
    $PYTHON -m evaluation.interleaved --model-id-prefix stand "${specs[@]}" --model-path "$MODEL" --dtype "$DTYPE" --lockstep \
        --question-file "$questions" --max-new-tokens "$TOKENS" "$@"
    echo "== $setting"
    $PYTHON evaluation/compare.py --base-path "${files[0]}" --file-path "${files[@]:1}" \
        --markdown-out "$OUT/$setting/compare.md"
}

for setting in $SETTINGS; do
    case $setting in
        bon-T0.6) run bon-T0.6 "$BON_QUESTIONS" --BON --bon-n "$BON_N" --temperature 0.6 ;;
        rounds-T0) run rounds-T0 "$ROUND_QUESTIONS" --think-twice --num-rounds "$ROUNDS" ;;
        rounds-T0.6) run rounds-T0.6 "$ROUND_QUESTIONS" --think-twice --num-rounds "$ROUNDS" --temperature 0.6 ;;
        *) echo "unknown setting: $setting (bon-T0.6, rounds-T0, rounds-T0.6)" >&2; exit 2 ;;
    esac
done
