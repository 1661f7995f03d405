#!/usr/bin/env bash
# Applies the project's C++ style (.clang-format) to every .cc/.h file git tracks or would track, or with --check fails
# listing the files that differ. The formatter is pinned to Debian 12's clang-format 14 (scripts/setup.sh
# installs it): other versions format some constructs differently, so their verdict would not be ours.
#   scripts/format.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "format.sh: unknown option '$1' (expected --check)" >&2; exit 2 ;;
esac
CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
version=$("$CLANG_FORMAT" --version 2>/dev/null || true)
if [[ "$version" != *"version 14."* ]]; then
  echo "format.sh: need clang-format 14 (Debian 12's package 'clang-format'), found: ${version:-none}" >&2
  echo "           install it with scripts/setup.sh, or point CLANG_FORMAT at a clang-format 14 binary" >&2
  exit 2
fi
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.cc' '*.h')
if ((check)); then
  differing=()
  for file in "${files[@]}"; do
    "$CLANG_FORMAT" --dry-run --Werror "$file" >/dev/null 2>&1 || differing+=("$file")
  done
  if ((${#differing[@]})); then
    echo "these files are not formatted (run scripts/format.sh): ${differing[*]}" >&2
    exit 1
  fi
  echo "format: ${#files[@]} files formatted as .clang-format says"
else
  "$CLANG_FORMAT" -i "${files[@]}"
fi
