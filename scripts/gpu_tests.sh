#!/usr/bin/env bash
# The GPU tests in one command, on a machine with an NVIDIA GPU: the tests marked `cuda`, then
# the Triton kernel tests compiled for the GPU (they are not marked: on the CPU they run under
# Triton's interpreter, in the plain test run). Extra arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible: nothing to test here')" || exit 2
python -m pytest -q -p no:cacheprovider -m cuda "$@"
cuda=$?
python -m pytest -q -p no:cacheprovider tests/test_triton_*.py tests/test_int8_triton.py tests/test_plugins_triton.py "$@"
triton=$?
echo "cuda-marked tests: exit $cuda; Triton kernel tests: exit $triton"
exit $(( cuda || triton ))
