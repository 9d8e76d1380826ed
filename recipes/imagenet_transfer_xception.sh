#!/usr/bin/env bash
# ImageNet-transfer study, best Xception ("trained using mixup and finetuned after initial pretraining
# with frozen weights"): ImageNet Xception at 224 px, the head trained on the frozen backbone for one
# cycle, then every layer for a second cycle with a lower backbone rate, mixup throughout; then
# predictions on the test list and on the validation list (for the weighted ensemble).
#
#   DATA=/data/covidx bash recipes/imagenet_transfer_xception.sh
#   SMOKE=1 bash recipes/imagenet_transfer_xception.sh              # synthetic data, 72 px, CPU
#
# DATA: the folder create_covidx.py --out wrote. ImageNet file needed in ~/.keras/models/:
# xception_weights_tf_dim_ordering_tf_kernels_notop.h5. What maps to what: recipes/README.md.
set -euo pipefail

SMOKE="${SMOKE:-0}"
DATA="${DATA:-}"                                   # COVIDx folder (ignored with SMOKE=1)
OUT="${OUT:-output/recipes/imagenet_transfer}"     # shared with the DenseNet and ensemble recipes
PY="${PY:-}"
WEIGHTS="${WEIGHTS:-imagenet}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=recipes/common.sh
source "$HERE/common.sh"
PY="${PY:-$(default_python)}"

# From the study's Xception notebook: 224 px, batch 32, mixup on (fastai's default alpha 0.4),
# max_lr 1e-2, plain cross-entropy, 10% validation split; fastai v1's one-cycle shape (pct_start 0.3,
# final_div 25 * 1e4). The blog and the stored notebook do not give the epochs of the two stages or
# the fine-tuning rates: we use 10 + 10 epochs (the notebooks' cycle length) and a backbone rate 100
# times below the head's once unfrozen (--backbone_lr_mult 0.01, i.e. a backbone peak of 1e-4, the
# usual fastai slice(lr/100, ...) lower end). Xception needs at least 71 px, so no progressive resizing.
NAME=imagenet-xception-
LR=0.01
IMG=224
EPOCHS=20
FROZEN=10
BS=32
if [[ "$SMOKE" == 1 ]]; then
    smoke_banner
    DATA="$OUT/synthetic/covidx"
    smoke_dataset "$DATA"
    IMG=72
    EPOCHS=2
    FROZEN=1
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

# 2. Train: frozen stage, then unfrozen with discriminative rates (one cycle per stage).
tool train_keras.py --trainfile "$LISTS/train_split.txt" --valfile "$LISTS/val_split.txt" \
    --testfile "$DATA/test_COVIDx.txt" --data_path "$DATA" --model xception --weights "$WEIGHTS" \
    --head avg --img_size "$IMG" --epochs "$EPOCHS" --freeze_epochs "$FROZEN" --backbone_lr_mult 0.01 \
    --mixup 0.4 --schedule onecycle --lr "$LR" --onecycle_pct_start 0.3 --onecycle_div_final 2.5e5 \
    --bs "$BS" --balance none --class_weights 1,1,1 --name "$NAME" --output "$OUT/runs"

# 3. Predictions of the final model on the test list and on the validation list (images in train/).
tool eval_keras.py --checkpoint "$RUN/final_model.hdf5" --testfile "$DATA/test_COVIDx.txt" \
    --data_path "$DATA" --out "$OUT/eval/xception_test"
tool eval_keras.py --checkpoint "$RUN/final_model.hdf5" --testfile "$LISTS/val_split.txt" \
    --data_path "$DATA" --image_dir "$DATA/train" --out "$OUT/eval/xception_val"

echo
echo "Done: $RUN (training), $OUT/eval/xception_test and xception_val (predictions.csv)."
echo "$DISCLAIMER"
