"""What class weighting alone does on a suite data set: a logistic regression fitted on the suite's own Stage-1
splits, unweighted and with `class_weight="balanced"`, C chosen on validation by accuracy or by balanced
accuracy; test accuracy, balanced accuracy and the share predicted positive.

    python bench/class_weight_effect.py [--dataset churn] [--seeds 0 1 2] [--out bench/results]

It separates the effect of weighting from the search (bench/README.md, "churn: the suite's metric against
the product's skew threshold"): logistic regressions only, seconds per seed.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score

if __package__ in (None, ""):  # run as `python bench/class_weight_effect.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, format_table, prepare_process, write_results
from bench.datasets import bench_config, prepare_data
from bench.suite_data import SUITE, default_cache, suite_spec

C_GRID = (0.01, 0.1, 1.0, 10.0)
SELECTORS = {"accuracy": accuracy_score, "balanced_accuracy": balanced_accuracy_score}


def weighting_rows(dataset: str, seed: int, cache: Path) -> list[dict[str, object]]:
    """One row per (weighting, selection metric) on `dataset`'s splits for `seed`."""
    spec = suite_spec(SUITE[dataset], cache)
    with tempfile.TemporaryDirectory() as workdir:
        data = prepare_data(spec, bench_config(spec, seed, Path(workdir)))
    arrays = data.arrays
    y_train, y_val, y_test = (np.asarray(y).ravel() for y in (arrays.y_train, arrays.y_val, arrays.y_test))
    counts = np.bincount(y_train)
    rows: list[dict[str, object]] = []
    for weight in (None, "balanced"):
        models = [
            (c, LogisticRegression(C=c, class_weight=weight, max_iter=2000).fit(arrays.X_train, y_train))
            for c in C_GRID
        ]
        for selector, score in SELECTORS.items():
            c, model = max(models, key=lambda pair: score(y_val, pair[1].predict(arrays.X_val)))
            predicted = model.predict(arrays.X_test)
            rows.append(
                {
                    "dataset": dataset,
                    "seed": seed,
                    "class_ratio": round(float(counts.max() / counts.min()), 2),
                    "weight": weight or "none",
                    "chosen_by": selector,
                    "C": c,
                    "test_accuracy": round(float(accuracy_score(y_test, predicted)), 4),
                    "test_balanced_accuracy": round(float(balanced_accuracy_score(y_test, predicted)), 4),
                    "predicted_positive": round(float(np.mean(predicted == 1)), 4),
                    "test_positive": round(float(np.mean(y_test == 1)), 4),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=list(SUITE), default="churn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", type=Path, default=None, help="the suite's CSV folder (default as the suite)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    prepare_process()
    cache = args.cache or default_cache()
    rows = [row for seed in args.seeds for row in weighting_rows(args.dataset, seed, cache)]
    print(format_table(list(rows[0]), [list(row.values()) for row in rows]))
    path = write_results(args.out, f"class_weight_effect_{args.dataset}", {"rows": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
