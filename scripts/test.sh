#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing (scripts/setup.sh --test-data), checks the
# C++ formatting (scripts/format.sh --check, clang-format 14), builds, writes the oracle fixtures
# (transformers / PEFT / gguf / tokenizers / jinja2, same run), runs the GoogleTest suites with ctest and
# a fuzz smoke of every parser (scripts/fuzz.sh) and the oracle suites with pytest. Exits non-zero on any
# failure, including "no tests collected".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test-data
status=0
echo "== formatting (clang-format 14)"
bash scripts/format.sh --check || status=1
bash scripts/build.sh
export CARTRIDGE_FIXTURES=$PWD/build/fixtures
export CARTRIDGE_BIN=$PWD/build/cartridge
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python tests/fixtures/make_all.py --out "$CARTRIDGE_FIXTURES"

echo "== GoogleTest suites (ctest)"
ctest --test-dir build --output-on-failure -j2 --no-tests=error || status=1

echo "== fuzz smoke (libFuzzer, ASan + UBSan: 20000 runs per target on its seed corpus)"
JOBS=2 bash scripts/fuzz.sh --runs 20000 || status=1

echo "== oracle suites (pytest)"
set +e
.venv/bin/python -m pytest -q tests/oracle
pytest_status=$?
set -e
# pytest exit 5 means no test was collected: that is a failure here, not a pass.
if [ "$pytest_status" -ne 0 ]; then
  [ "$pytest_status" -eq 5 ] && echo "pytest collected no tests: failing" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then echo "TESTS FAILED" >&2; fi
exit "$status"
