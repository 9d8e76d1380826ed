"""Compare models from their prediction CSVs, whatever framework wrote them.

    python compare.py run1/predictions.csv run2/predictions.csv [--names a b] \\
        [--weights-from run1/val_predictions.csv run2/val_predictions.csv] [--out DIR]

Prints one Markdown table (accuracy, macro F1, per-class precision, recall and
F1, Brier score, ECE and average precision, each with a patient-level bootstrap
confidence interval) with a column per model, plus the mean ensemble and, with
--weights-from, the weighted ensemble whose weights are fitted on the
validation predictions only; then McNemar's test between every pair, and how
far apart every pair of models' probabilities are, image by image. Writes
comparison.md, comparison.csv, mcnemar.csv, agreement.csv, disagreements.csv
(and ensemble_weights.csv) to --out. File format: docs/predictions_format.md.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from common.cli import EXIT_OK, DefaultsHelpFormatter, check_output_dir, handle_errors, setup_logging
from evaluation.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_N_BOOTSTRAP, DEFAULT_SEED
from evaluation.compare import compare_predictions, default_names, format_comparison, write_comparison
from evaluation.ensemble import DEFAULT_WEIGHT_STEP
from evaluation.predictions import read_predictions

log = logging.getLogger("compare")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``compare.py``."""
    parser = argparse.ArgumentParser(
        prog="compare.py", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "predictions", nargs="+", metavar="PREDICTIONS_CSV",
        help="test-set prediction CSVs, one per model, all covering the same images",
    )
    inputs.add_argument(
        "--names", nargs="+", metavar="NAME", default=argparse.SUPPRESS,
        help="column name per predictions file, in the same order (default: the file stems)",
    )
    ens = parser.add_argument_group("weighted ensemble")
    ens.add_argument(
        "--weights-from", nargs="+", metavar="VAL_CSV", default=argparse.SUPPRESS,
        help="validation prediction CSVs, one per model in the same order; the ensemble weights are "
        "fitted on these, never on the test predictions (default: no weighted ensemble)",
    )
    ens.add_argument(
        "--weight-step", type=float, default=DEFAULT_WEIGHT_STEP,
        help="spacing of the weight grid searched for the best validation macro F1 (must divide 1)",
    )
    boot = parser.add_argument_group("confidence intervals (patient-level bootstrap)")
    boot.add_argument(
        "--n-bootstrap", type=int, default=DEFAULT_N_BOOTSTRAP, help="number of patient resamples"
    )
    boot.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the resampling")
    boot.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE, help="interval level")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", default=".", metavar="DIR",
        help="folder for comparison.md/.csv, mcnemar.csv, agreement.csv and disagreements.csv"
    )
    out.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    return parser.parse_args(argv)


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    out_dir = check_output_dir(args.out, flag="--out")  # before the work, not at its last step
    # --names and --weights-from default to "absent" so --help does not show "None".
    names = getattr(args, "names", None) or default_names(args.predictions)
    weights_from = getattr(args, "weights_from", None)
    predictions = [read_predictions(path) for path in args.predictions]
    validation = [read_predictions(path) for path in weights_from] if weights_from else None
    comparison = compare_predictions(
        predictions=predictions,
        names=names,
        validation=validation,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        confidence=args.confidence,
        weight_step=args.weight_step,
    )
    for path in write_comparison(out_dir, comparison).values():
        log.info("wrote %s", path)
    # The Markdown report ends with the research-use disclaimer.
    print(format_comparison(comparison), end="")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
