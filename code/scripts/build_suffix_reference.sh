#!/bin/bash
# Build SuffixDecoding's reference (arctic-inference 0.3.0's csrc/suffix_decoding + its SuffixDecodingCache) for the
# cross-check tests, from the hash-pinned source distribution; nothing of it is committed. Only the suffix-tree
# extension is compiled (CMake + g++, no CUDA, no torch): about a minute on 2 cores.
# Run from the repository root:  bash code/scripts/build_suffix_reference.sh [PYTHON] [OUT]
# OUT (default code/local_model/suffix_reference, git-ignored) then holds arctic_inference/suffix_decoding/ with _C.
set -euo pipefail
PY=${1:-.venv/bin/python}
OUT=${2:-code/local_model/suffix_reference}
for tool in cmake g++; do
  command -v $tool > /dev/null || { echo "error: building the SuffixDecoding reference needs $tool" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# --no-build-isolation: pip only reads the sdist's metadata; its build requirements (torch, vLLM's) are not needed.
"$PY" -m pip download -q --no-deps --no-build-isolation --no-binary arctic-inference --require-hashes \
  -r requirements-suffix-ref.txt -d "$work/dl"
# (the wheel, hash-checked above, is a zip: unpacked, it is importable for CMake's `python -m nanobind`)
"$PY" -m zipfile -e "$(ls "$work"/dl/nanobind-*.whl)" "$work/nb"
tar xzf "$work"/dl/arctic_inference-0.3.0.tar.gz -C "$work"
src=$work/arctic_inference-0.3.0
PYTHONPATH="$work/nb" cmake -S "$src/csrc/suffix_decoding" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(realpath "$PY")" > "$work/cmake.log" || { cat "$work/cmake.log" >&2; exit 1; }
PYTHONPATH="$work/nb" cmake --build "$work/build" -j 2 > "$work/build.log" || { cat "$work/build.log" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT/arctic_inference/suffix_decoding"
cp "$src/LICENSE" "$OUT/"
cp "$src/arctic_inference/__init__.py" "$OUT/arctic_inference/"
cp "$src"/arctic_inference/suffix_decoding/{__init__,cache,simulator}.py "$OUT/arctic_inference/suffix_decoding/"
cp "$work"/build/_C*.so "$OUT/arctic_inference/suffix_decoding/"
echo "SuffixDecoding reference built in $OUT"
