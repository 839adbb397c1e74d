#!/bin/bash
################################################################################
# DeepSeek-R1-Distill-Llama-8B under Multi-Round Thinking or Best-of-N on question_cot.jsonl.
# Run from code/:  MODEL_PATH=./local_model MODEL_SIZE=8 TEMP=0.0 [ENGINE_MODE=static] bash scripts/deepseek.sh
# Every method runs through the same engine. REST's datastore is built on first use from the REST paper's small
# ShareGPT store (needs the hub once; docs/files.md for other corpora).
################################################################################
set -euo pipefail
export PYTHONWARNINGS="ignore"
PYTHON=${PYTHON:-python}
MODEL_PATH=${MODEL_PATH:-./local_model}
MODEL_SIZE=${MODEL_SIZE:-8}
TEMP=${TEMP:-0.0}
MODEL_NAME=DeepSeek-R1-Distill-Llama-${MODEL_SIZE}B
TARGET_PATH=$MODEL_PATH/$MODEL_NAME
Eagle3_PATH=$MODEL_PATH/EAGLE3-DeepSeek-R1-Distill-LLaMA-${MODEL_SIZE}B
datastore_PATH=./model/rest/datastore/datastore_chat_small_ds.idx
# SpS needs a draft with the target's tokenizer. None is published for the R1 distills (Llama-3.2-1B's special
# tokens differ, which the tokenizer check refuses): set SPS_DRAFTER_PATH to one to run the SpS line.
Sps_Drafter_PATH=${SPS_DRAFTER_PATH:-}
bench_NAME="SpecTTS_Bench"
torch_dtype="float16"
# eager (default): the paper's regime; static: fixed shapes and CUDA graphs, the regime of vLLM and SGLang (its answer
# files get "-static" in their names, so the two regimes sit side by side)
ENGINE_MODE=${ENGINE_MODE:-eager}
MODE_TAG=-$ENGINE_MODE
if [ "$ENGINE_MODE" = eager ]; then MODE_TAG=""; fi
COMMON="--bench-name $bench_NAME --temperature $TEMP --dtype $torch_dtype --max-new-tokens 15000 --use-cot-data --engine-mode $ENGINE_MODE"

## Reasoning under Multi-Round Thinking (the seed ran TEMP=0.0 and TEMP=0.6)
$PYTHON -m evaluation.inference_baseline --model-path $TARGET_PATH --model-id ${MODEL_NAME}-vanilla-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --think-twice
$PYTHON -m evaluation.inference_pld --model-path $TARGET_PATH --model-id ${MODEL_NAME}-pld-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --think-twice
$PYTHON -m evaluation.inference_samd --model-path $TARGET_PATH --model-id ${MODEL_NAME}-samd-only-${torch_dtype}${MODE_TAG}-temp-${TEMP} --samd_n_predicts 40 --samd_len_threshold 5 --samd_len_bias 5 $COMMON --think-twice
$PYTHON -m evaluation.inference_recycling --model-path $TARGET_PATH --model-id ${MODEL_NAME}-recycling-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --think-twice
$PYTHON -m evaluation.inference_stand --model-path $TARGET_PATH --model-id ${MODEL_NAME}-stand-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --think-twice
$PYTHON -m evaluation.inference_eagle3 --ea-model-path $Eagle3_PATH --base-model-path $TARGET_PATH --model-id ${MODEL_NAME}-eagle3-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --think-twice
$PYTHON -m evaluation.inference_samd --model-path $TARGET_PATH --model-id ${MODEL_NAME}-samd-eagle3-${torch_dtype}${MODE_TAG}-temp-${TEMP} --samd_n_predicts 40 --samd_len_threshold 5 --samd_len_bias 5 --tree_method eagle3 --tree_model_path $Eagle3_PATH $COMMON --think-twice
if [ -n "$Sps_Drafter_PATH" ]; then
$PYTHON -m evaluation.inference_sps --model-path $TARGET_PATH --drafter-path $Sps_Drafter_PATH --model-id ${MODEL_NAME}-sps-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --think-twice
fi
$PYTHON -m evaluation.inference_pia --model-path $TARGET_PATH --model-id ${MODEL_NAME}-pia-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --think-twice
$PYTHON -m evaluation.inference_suffix --model-path $TARGET_PATH --model-id ${MODEL_NAME}-suffix-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --think-twice
$PYTHON -m evaluation.inference_lookahead --model-path $TARGET_PATH --model-id ${MODEL_NAME}-lade-level-5-win-7-guess-7-${torch_dtype}${MODE_TAG}-temp-${TEMP} --level 5 --window 7 --guess 7 $COMMON --think-twice
if [ ! -f "$datastore_PATH" ]; then
  mkdir -p "$(dirname "$datastore_PATH")"
  $PYTHON -m model.rest.build_datastore --hf-dataset Aeala/ShareGPT_Vicuna_unfiltered --tokenizer-path $TARGET_PATH --output "$datastore_PATH"
fi
$PYTHON -m evaluation.inference_rest --model-path $TARGET_PATH --model-id ${MODEL_NAME}-rest-${torch_dtype}${MODE_TAG}-temp-${TEMP} --datastore-path $datastore_PATH $COMMON --think-twice

## Reasoning under Best-of-N (the seed ran TEMP=0.6): uncomment, with TEMP=0.6
# $PYTHON -m evaluation.inference_baseline --model-path $TARGET_PATH --model-id ${MODEL_NAME}-vanilla-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --BON
# $PYTHON -m evaluation.inference_pld --model-path $TARGET_PATH --model-id ${MODEL_NAME}-pld-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --BON
# $PYTHON -m evaluation.inference_samd --model-path $TARGET_PATH --model-id ${MODEL_NAME}-samd-only-${torch_dtype}${MODE_TAG}-temp-${TEMP} --samd_n_predicts 40 --samd_len_threshold 5 --samd_len_bias 5 $COMMON --BON
# $PYTHON -m evaluation.inference_recycling --model-path $TARGET_PATH --model-id ${MODEL_NAME}-recycling-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --BON
# $PYTHON -m evaluation.inference_stand --model-path $TARGET_PATH --model-id ${MODEL_NAME}-stand-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --BON
# $PYTHON -m evaluation.inference_suffix --model-path $TARGET_PATH --model-id ${MODEL_NAME}-suffix-${torch_dtype}${MODE_TAG}-temp-${TEMP} $COMMON --BON

## Evaluation
# $PYTHON evaluation/speed.py --file-path data/$bench_NAME/model_answer/${MODEL_NAME}-samd-only-${torch_dtype}${MODE_TAG}-temp-${TEMP}.jsonl --base-path data/$bench_NAME/model_answer/${MODEL_NAME}-vanilla-${torch_dtype}${MODE_TAG}-temp-${TEMP}.jsonl
