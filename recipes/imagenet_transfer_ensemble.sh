#!/usr/bin/env bash
# ImageNet-transfer study, the final model: a weighted average of DenseNet-121 (high recall) and
# Xception (high precision) whose weights are tuned on the validation predictions, then applied
# unchanged to the test predictions. Trains both models with their recipes (skipped when a model's
# prediction files are already there), then compare.py with --weights-from.
#
#   DATA=/data/covidx bash recipes/imagenet_transfer_ensemble.sh
#   SMOKE=1 bash recipes/imagenet_transfer_ensemble.sh               # synthetic data, CPU, a few minutes
set -euo pipefail

SMOKE="${SMOKE:-0}"
DATA="${DATA:-}"                                   # COVIDx folder (ignored with SMOKE=1)
OUT="${OUT:-output/recipes/imagenet_transfer}"     # where the two model recipes write
PY="${PY:-}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=recipes/common.sh
source "$HERE/common.sh"
PY="${PY:-$(default_python)}"
export SMOKE DATA OUT PY
if [[ "$SMOKE" != 1 ]]; then
    : "${DATA:?set DATA to the COVIDx folder written by create_covidx.py --out (or run with SMOKE=1)}"
fi

# 1. The two models, each predicting the same validation list (held out of both trainings) and the
#    test list. Delete $OUT/eval/<model>_val to retrain one.
for model in densenet121 xception; do
    if [[ -f "$OUT/eval/${model}_val/predictions.csv" && -f "$OUT/eval/${model}_test/predictions.csv" ]]; then
        echo "$model: using the predictions in $OUT/eval/${model}_val and ${model}_test"
    else
        run bash "$HERE/imagenet_transfer_$model.sh"
    fi
done

# 2. The weighted ensemble. The blog "used the predictions in the validation set and tried different
#    weights" without saying which metric it maximised: compare.py searches weights in steps of 0.05 for
#    the best validation macro F1 (docs/predictions_format.md), and reports both models, their mean and
#    the weighted ensemble on the test list with bootstrap intervals and McNemar's tests.
tool compare.py "$OUT/eval/densenet121_test/predictions.csv" "$OUT/eval/xception_test/predictions.csv" \
    --names densenet121 xception \
    --weights-from "$OUT/eval/densenet121_val/predictions.csv" "$OUT/eval/xception_val/predictions.csv" \
    --out "$OUT/ensemble"

echo
echo "Done: $OUT/ensemble (comparison.md, comparison.csv, mcnemar.csv, agreement.csv, disagreements.csv,"
echo "ensemble_weights.csv)."
echo "$DISCLAIMER"
