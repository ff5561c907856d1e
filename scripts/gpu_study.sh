#!/usr/bin/env bash
# The embedded study on one GPU, stage by stage as dvc.yaml runs them, for a machine without DVC:
#
#     bash scripts/gpu_study.sh [PRESET]        # default: presets/embedded-gpu.yaml (10 seeds)
#
# It writes the preset's effective parameters into params.yaml (`git checkout params.yaml`
# restores the default), then runs generate and subsets per dataset (the scale check's included), pretrain, runs per dataset
# and report, logging each stage's start and wall time, and ends with the paired half-widths to
# ce from results/tables/main.csv. Under DVC, `python -m paper_repro preset PRESET && dvc repro`
# does the same and also runs explain and the notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-presets/embedded-gpu.yaml}
python=${PYTHON:-python3}
export PYTHONPATH=. TQDM_DISABLE=1
start=$SECONDS

stage() {
    local began=$SECONDS
    echo "== $* (at ${began}s)"
    "$python" -m paper_repro "$@"
    echo "== $*: $((SECONDS - began)) s"
}

"$python" -m paper_repro preset "$preset"
# the study's datasets, then those the scale check draws larger (their own generate, subsets and runs stages)
datasets=$("$python" -c "from paper_repro.config import load_settings as l; s = l(); print(*s.study.datasets, *(s.scale.datasets if s.scale else ()))")
for dataset in $datasets; do
    stage generate --dataset "$dataset"
    stage subsets --dataset "$dataset"
done
stage pretrain
for dataset in $datasets; do
    stage runs --dataset "$dataset"
done
stage report
echo "== the study of $preset took $((SECONDS - start)) s"
"$python" - <<'EOF'
import pandas as pd

table = pd.read_csv("results/tables/main.csv")
table = table[table["method"] != "ce"].assign(half_width=lambda t: (t["miou_ci_high"] - t["miou_ci_low"]) / 2)
print(table[["dataset", "method", "percent", "n", "miou_delta_vs_ce", "miou_ci_low", "miou_ci_high", "half_width", "miou_resolved"]]
      .round(2).to_string(index=False))
EOF
