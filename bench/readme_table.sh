#!/usr/bin/env bash
# The README's results table: each config's first run in an empty folder (no earlier champion to start
# from), two queues at a time. Usage: bench/readme_table.sh [OUT_DIR]   (default /tmp/readme-table)
# Prints "<name> rc=<code> wall=<s>s" per run into OUT_DIR/times.txt; each run's summary is
# OUT_DIR/<name>/summary.json and its console OUT_DIR/<name>/console.log.
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
st=$repo/.venv/bin/stagetune
root=${1:-/tmp/readme-table}
rm -rf "$root"; mkdir -p "$root"
[ -d /tmp/images-shapes ] || "$st" make-example shapes /tmp/images-shapes >/dev/null
[ -d /tmp/images-keypoints ] || "$st" make-example keypoints /tmp/images-keypoints >/dev/null
one() {
  local name=$1; shift
  mkdir -p "$root/$name"
  local start=$SECONDS
  (cd "$root/$name" && "$st" run "$@" --summary summary.json >console.log 2>&1)
  echo "$name rc=$? wall=$((SECONDS - start))s" >>"$root/times.txt"
}
(
  one digits "$repo/configs/digits.yaml"
  one breast_cancer "$repo/configs/breast_cancer.yaml"
  one imbalanced "$repo/configs/imbalanced.yaml"
  one diabetes "$repo/configs/diabetes.yaml"
) &
(
  one friedman "$repo/configs/friedman.yaml"
  one shapes "$repo/configs/shapes.yaml"
  one keypoints "$repo/configs/keypoints.yaml"
  one imagefolder --set data.source=/tmp/images-shapes/ --set model.family=cnn
) &
wait
cat "$root/times.txt"
