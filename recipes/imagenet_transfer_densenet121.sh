#!/usr/bin/env bash
# ImageNet-transfer study, best DenseNet-121 ("progressively resizing 64x64 -> 128x128 and using mixup"):
# ImageNet DenseNet-121 with its backbone frozen (batch norm still training, fastai's freeze()), a
# one-cycle schedule per size, mixup, plain cross-entropy; then predictions on the test list and on the
# validation list (for the weighted ensemble, recipes/imagenet_transfer_ensemble.sh).
#
#   DATA=/data/covidx bash recipes/imagenet_transfer_densenet121.sh
#   SMOKE=1 bash recipes/imagenet_transfer_densenet121.sh           # synthetic data, 32 -> 64 px, CPU
#
# DATA: the folder create_covidx.py --out wrote. ImageNet file needed in ~/.keras/models/:
# densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5. What maps to what: recipes/README.md.
set -euo pipefail

SMOKE="${SMOKE:-0}"
DATA="${DATA:-}"                                   # COVIDx folder (ignored with SMOKE=1)
OUT="${OUT:-output/recipes/imagenet_transfer}"     # shared with the Xception and ensemble recipes
PY="${PY:-}"
WEIGHTS="${WEIGHTS:-imagenet}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=recipes/common.sh
source "$HERE/common.sh"
PY="${PY:-$(default_python)}"

# From the study's notebooks (manujosephv/covid-xray-imagenet): batch 32, one-cycle max_lr 1e-2 in
# 10-epoch cycles (fastai v1: pct_start 0.3, final_div 25 * 1e4), CrossEntropyFlat without class
# weights or oversampling, 10% validation split. From the blog: sizes 64 then 128 and mixup; fastai's
# learn.mixup() default alpha is 0.4. The blog is silent on the epochs per size: 10 each, the cycle
# length of the notebooks. The stored notebook's unfrozen stage ran fit_one_cycle(10,
# max_lr=slice(1e-14, 1e-8)), rates at which nothing changes; --lr is the head's peak in every phase
# here, so that stage cannot be written and the whole run keeps the backbone frozen (--freeze_epochs =
# --epochs). The head's L2 1e-4 stands in for the notebook's weight decay wd=1e-4.
NAME=imagenet-densenet121-
LR=0.01
IMG=128
STAGES=64:10,128:10
EPOCHS=20
BS=32
if [[ "$SMOKE" == 1 ]]; then
    smoke_banner
    DATA="$OUT/synthetic/covidx"
    smoke_dataset "$DATA"
    IMG=64
    STAGES=32:1,64:1
    EPOCHS=2
    BS=8
    WEIGHTS=none
else
    : "${DATA:?set DATA to the COVIDx folder written by create_covidx.py --out (or run with SMOKE=1)}"
fi
LISTS="$OUT/lists"
RUN="$OUT/runs/${NAME}lr${LR}"

# 1. The validation split as files (the same for DenseNet and Xception): 10% of the patients of each class.
tool recipes/split_val.py --trainfile "$DATA/train_COVIDx.txt" --fraction 0.1 --seed 0 \
    --out-train "$LISTS/train_split.txt" --out-val "$LISTS/val_split.txt"

# 2. Train.
tool train_keras.py --trainfile "$LISTS/train_split.txt" --valfile "$LISTS/val_split.txt" \
    --testfile "$DATA/test_COVIDx.txt" --data_path "$DATA" --model densenet121 --weights "$WEIGHTS" \
    --head avg --img_size "$IMG" --progressive "$STAGES" --epochs "$EPOCHS" --freeze_epochs "$EPOCHS" \
    --mixup 0.4 --schedule onecycle --lr "$LR" --onecycle_pct_start 0.3 --onecycle_div_final 2.5e5 \
    --bs "$BS" --balance none --class_weights 1,1,1 --name "$NAME" --output "$OUT/runs"

# 3. Predictions of the final model on the test list and on the validation list (images in train/).
tool eval_keras.py --checkpoint "$RUN/final_model.hdf5" --testfile "$DATA/test_COVIDx.txt" \
    --data_path "$DATA" --out "$OUT/eval/densenet121_test"
tool eval_keras.py --checkpoint "$RUN/final_model.hdf5" --testfile "$LISTS/val_split.txt" \
    --data_path "$DATA" --image_dir "$DATA/train" --out "$OUT/eval/densenet121_val"

echo
echo "Done: $RUN (training), $OUT/eval/densenet121_test and densenet121_val (predictions.csv)."
echo "$DISCLAIMER"
