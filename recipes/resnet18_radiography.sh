#!/usr/bin/env bash
# The PyTorch ResNet-18 study on the COVID-19 Radiography Database (COVID-19, normal, viral pneumonia):
# its 70/10/20 split, ResNet-18 at 224 px, learning rate 3e-5, plain cross-entropy, 20 epochs, no
# augmentation, the model of the epoch with the lowest validation loss evaluated on the test list.
#
#   RADIOGRAPHY_DB=COVID-19_Radiography_Dataset bash recipes/resnet18_radiography.sh
#   SMOKE=1 bash recipes/resnet18_radiography.sh                    # synthetic database, 64 px, CPU, ~1 min
#
# RADIOGRAPHY_DB is the unzipped Kaggle folder (https://www.kaggle.com/tawsifurrahman/covid19-radiography-database,
# first or 2021+ layout); the dataset is built into DATA. What maps to what: recipes/README.md.
set -euo pipefail

SMOKE="${SMOKE:-0}"
RADIOGRAPHY_DB="${RADIOGRAPHY_DB:-}"               # the Kaggle folder (ignored with SMOKE=1)
OUT="${OUT:-output/recipes/resnet18_radiography}"
DATA="${DATA:-$OUT/radiography}"                   # built here by create_covidx.py --radiography-db
PY="${PY:-}"
# The study started from torchvision's ImageNet weights; Keras has none for ResNet-18, so the default
# is random initialisation. WEIGHTS=FILE loads a backbone .h5 converted from torchvision's
# resnet18-5c106cde.pth (layer names are torchvision's keys, see docs/models.md).
WEIGHTS="${WEIGHTS:-none}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=recipes/common.sh
source "$HERE/common.sh"
PY="${PY:-$(default_python)}"

# From the notebook: Resize(224) + ToTensor() only (no augmentation, no normalisation: [0, 1] input),
# CrossEntropyLoss without class weights, lr 3e-5, 20 epochs, random 70/10/20 split, the model saved
# whenever the validation loss decreased. Its code cells (optimizer, batch size, the layers added after
# the backbone) are gists the seed does not include: the optimizer stays train_keras.py's Adam, the
# batch size is our choice (32), the head is the registry's Dense(1024) -> Dense(256) -> softmax on
# global average pooling (torchvision's avgpool). A constant rate: the plateau schedule with its
# floor at the rate itself (--min_lr = --lr) never lowers it.
NAME=resnet18-radiography-
LR=3e-05
IMG=224
EPOCHS=20
BS=32
if [[ "$SMOKE" == 1 ]]; then
    smoke_banner
    DATA="$OUT/synthetic/radiography"
    IMG=64
    EPOCHS=2
    BS=16
    WEIGHTS=none
    smoke_dataset "$DATA" radiography 120
else
    : "${RADIOGRAPHY_DB:?set RADIOGRAPHY_DB to the COVID-19 Radiography Database folder (or run with SMOKE=1)}"
    # 1. The dataset: the whole database, a seeded stratified 70/10/20 split by image (it has no patient ids).
    tool create_covidx.py --radiography-db "$RADIOGRAPHY_DB" --out "$DATA" --seed 0
fi
RUN="$OUT/runs/${NAME}lr${LR}"

# 2. Train on train_COVIDx.txt, validate on the drawn val_COVIDx.txt (its images are in DATA/train).
tool train_keras.py --trainfile "$DATA/train_COVIDx.txt" --valfile "$DATA/val_COVIDx.txt" \
    --testfile "$DATA/test_COVIDx.txt" --data_path "$DATA" --model resnet18 --weights "$WEIGHTS" \
    --head avg --img_size "$IMG" --lr "$LR" --min_lr "$LR" --epochs "$EPOCHS" --bs "$BS" \
    --balance none --class_weights 1,1,1 --no_augment --name "$NAME" --output "$OUT/runs"

# 3. Evaluate the epoch with the lowest validation loss, as the notebook did (its checkpoint was saved
#    only when the validation loss decreased): per-class sensitivity is its "Test Accuracy of <class>".
BEST="$(best_checkpoint "$RUN")"
echo "lowest validation loss: $BEST"
tool eval_keras.py --checkpoint "$BEST" --testfile "$DATA/test_COVIDx.txt" --data_path "$DATA" \
    --out "$OUT/eval/resnet18_test"

echo
echo "Done: $RUN (training), $OUT/eval/resnet18_test (metrics.json, predictions.csv)."
echo "$DISCLAIMER"
