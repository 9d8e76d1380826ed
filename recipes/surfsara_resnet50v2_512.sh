#!/usr/bin/env bash
# SURFsara's Covid19-HPML baseline: COVID-Net with a ResNet50V2 backbone at 512 px, the command of
# their README, then the evaluation of the final model on the test list.
#
#   DATA=/data/covidx bash recipes/surfsara_resnet50v2_512.sh     # real data (a GPU; ~2 GB per checkpoint)
#   SMOKE=1 bash recipes/surfsara_resnet50v2_512.sh               # synthetic data, 64 px, 1 epoch, CPU
#
# DATA is the folder create_covidx.py --out wrote (train/, test/, train_COVIDx.txt, test_COVIDx.txt);
# SURFsara used their own COVIDx lists (create_covidx.py --split surfsara rebuilds their recipe).
# The ImageNet file resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5 must be in
# ~/.keras/models/ (or $KERAS_HOME/models/): nothing is downloaded; train_keras.py names it if missing.
# Re-running the same command resumes an interrupted training. See recipes/README.md.
set -euo pipefail

SMOKE="${SMOKE:-0}"
DATA="${DATA:-}"                                   # COVIDx folder (ignored with SMOKE=1)
OUT="${OUT:-output/recipes/surfsara_resnet50v2_512}"
PY="${PY:-}"
WEIGHTS="${WEIGHTS:-imagenet}"                     # SURFsara's ImageNet initialisation

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=recipes/common.sh
source "$HERE/common.sh"
PY="${PY:-$(default_python)}"

# SURFsara's README: --img_size 512 --lr 0.00002 --bs 8 --epochs 10 --name covid-net-resnet512-
# --model resnet50v2 (the flatten head, class weights 1/1/25, one COVID-19 image per batch, their
# augmentation and ReduceLROnPlateau are train_keras.py's defaults). The run folder is <name>lr<lr>
# with the learning rate as Python prints it: covid-net-resnet512-lr2e-05.
NAME=covid-net-resnet512-
LR=0.00002
LR_PRINTED=2e-05
IMG=512
BS=8
EPOCHS=10
if [[ "$SMOKE" == 1 ]]; then
    smoke_banner
    DATA="$OUT/synthetic/covidx"
    smoke_dataset "$DATA"
    IMG=64
    EPOCHS=1
    WEIGHTS=none
else
    : "${DATA:?set DATA to the COVIDx folder written by create_covidx.py --out (or run with SMOKE=1)}"
fi
RUN="$OUT/runs/${NAME}lr${LR_PRINTED}"

# 1. Train: SURFsara's command line, unchanged apart from where the files are. Their script validated
#    on the test list; train_keras.py holds out 10% of the train list's patients instead (--val_split 0.1,
#    the default); add --val_split 0 to validate on the test list as they did.
tool train_keras.py --trainfile "$DATA/train_COVIDx.txt" --testfile "$DATA/test_COVIDx.txt" \
    --data_path "$DATA" --img_size "$IMG" --lr "$LR" --bs "$BS" --epochs "$EPOCHS" --name "$NAME" \
    --model resnet50v2 --weights "$WEIGHTS" --output "$OUT/runs"

# 2. Evaluate the final model: SURFsara's Sens/PPV lines plus patient-bootstrap confidence intervals.
tool eval_keras.py --checkpoint "$RUN/final_model.hdf5" --testfile "$DATA/test_COVIDx.txt" \
    --data_path "$DATA" --out "$OUT/eval/resnet50v2_test"

echo
echo "Done: $RUN (training), $OUT/eval/resnet50v2_test (metrics.json, predictions.csv)."
echo "$DISCLAIMER"
