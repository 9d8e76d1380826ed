# Shared by the recipe scripts (sourced, not run). Needs REPO set to the repository root.
# shellcheck shell=bash

# common/disclaimer.py's DISCLAIMER, word for word (tests/test_recipes.py checks it).
# shellcheck disable=SC2034  # used by the scripts that source this file
DISCLAIMER="Research use only: these models are not medical devices, have not been clinically validated and must not be used for diagnosis, triage or any clinical decision. Seek advice from a qualified health professional."

# The project's virtual environment when there is one (make venv), else python3 from PATH.
default_python() {
    if [[ -x "$REPO/.venv/bin/python" ]]; then
        printf '%s\n' "$REPO/.venv/bin/python"
    else
        printf '%s\n' python3
    fi
}

# Print a command the way a shell would take it, then run it.
run() {
    printf '\n+'
    printf ' %q' "$@"
    printf '\n'
    "$@"
}

# Run one of the project's Python tools (train_keras.py, ...) or a recipes/ helper with the project importable.
tool() {
    local script=$1
    shift
    case "$script" in
        recipes/*) run env PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$REPO/$script" "$@" ;;
        *) run "$PY" "$REPO/$script" "$@" ;;
    esac
}

# The first checkpoint with the lowest validation loss in its name (cp-EE-LOSS.hdf5, epochs in order),
# the model a "save when the validation loss decreased" loop ends with.
best_checkpoint() {
    local dir=$1 best="" best_loss="" file loss
    for file in "$dir"/cp-*.hdf5; do
        [[ -e "$file" ]] || continue
        loss=${file##*/cp-}
        loss=${loss#*-}
        loss=${loss%.hdf5}
        [[ "$loss" =~ ^[0-9]+(\.[0-9]+)?$ ]] || continue  # nan/inf: a diverged epoch is never the best
        if [[ -z "$best" ]] || awk -v a="$loss" -v b="$best_loss" 'BEGIN { exit !(a + 0 < b + 0) }'; then
            best=$file
            best_loss=$loss
        fi
    done
    if [[ -z "$best" ]]; then
        echo "error: no cp-EE-LOSS.hdf5 checkpoint in $dir" >&2
        return 1
    fi
    printf '%s\n' "$best"
}

# Synthetic COVIDx (or, with "radiography", the synthetic Radiography Database split) for SMOKE=1 runs.
smoke_dataset() {
    local out=$1 split=${2:-covidnet} size=${3:-200}
    if [[ -f "$out/train_COVIDx.txt" && -f "$out/test_COVIDx.txt" ]]; then
        echo "SMOKE: reusing the synthetic dataset in $out"
        return 0
    fi
    tool create_covidx.py --synthetic "$(dirname "$out")/sources" --synthetic-size "$size" \
        --synthetic-image-size 96 --split "$split" --out "$out" --no-progress
}

smoke_banner() {
    echo "SMOKE=1: synthetic data, tiny images and epochs, random weights. This only shows that the"
    echo "pipeline runs end to end; the numbers it prints say nothing about the study's results."
}
