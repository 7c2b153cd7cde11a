#!/usr/bin/env bash
# Run on the development machine before sending the tree to a GPU machine: copies what that machine
# lacks and cannot download (ONNX Runtime's C/C++ headers, GoogleTest's sources, the training corpus)
# into build/gpu-carry, about 17 MiB. Pass that folder in the device call's `carry` list; tests/gpu/run.sh reads it.
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=build/gpu-carry
rm -rf "$carry"
mkdir -p "$carry"

ort_version=$(sed -n 's/^set(ORT_VERSION \([0-9.]*\) .*/\1/p' CMakeLists.txt)
ort_include=""
for root in "${NUGET_PACKAGES:-}" "$HOME/.nuget/packages"; do
  candidate="$root/microsoft.ml.onnxruntime/$ort_version/build/native/include"
  if [ -n "$root" ] && [ -f "$candidate/onnxruntime_cxx_api.h" ]; then ort_include=$candidate; break; fi
done
if [ -z "$ort_include" ]; then
  echo "prepare.sh: ONNX Runtime $ort_version headers not found; run 'dotnet restore' first" >&2
  exit 1
fi
cp -r "$ort_include" "$carry/ort-include"

gtest_src=""
for candidate in /usr/src/googletest /usr/src/gtest; do
  if [ -f "$candidate/CMakeLists.txt" ]; then gtest_src=$candidate; break; fi
done
if [ -z "$gtest_src" ]; then
  echo "prepare.sh: GoogleTest sources not found (apt-get install googletest)" >&2
  exit 1
fi
cp -r "$gtest_src" "$carry/googletest"

# The training corpus for models/train/gpu_recipe.sh (11 MiB; the GPU image has no Python 3.11
# standard library to build it from). corpus.py --check refuses anything but the committed corpus.
/usr/bin/python3 models/train/corpus.py --out "$carry/corpus" --check models/train/corpus-manifest.json
rm -f "$carry/corpus/manifest.json"
du -sh "$carry"
