#!/usr/bin/env bash
# Time the README's main job on a fresh clone (set-up included), then a no-op `dvc repro`.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git clone -q "$src" "$work/clone"
cd "$work/clone"
start=$(date +%s)
make pipeline > "$work/pipeline.log" 2>&1 || { tail -40 "$work/pipeline.log"; exit 1; }
mid=$(date +%s)
PATH="$PWD/.venv/bin:$PATH" dvc repro > "$work/noop.log" 2>&1
end=$(date +%s)
echo "fresh clone -> make pipeline: $((mid - start)) s"
echo "no-op dvc repro afterwards:  $((end - mid)) s"
grep -E "up to date|didn't change" "$work/noop.log" | tail -1
echo "logs in $work"
