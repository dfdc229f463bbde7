"""Test metric of the whole pipeline with augmentation off and on, next to the no-model baseline.

Each seed runs the flow (in this process) twice on the same config: `off` fixes `augment` false
(space.augment [false], model.baseline.augment false); `on` fixes it true and adds the `--on`
settings (the transforms). The searches are otherwise identical, so the difference is augmentation
plus search noise: use several seeds. The baseline is what a model that ignores its inputs scores on
the test split: predict-the-training-mean RMSE (regression), majority-class accuracy (classification).

    # digits, CNN, shift and noise (a flip changes a digit's meaning):
    .venv/bin/python bench/augment_effect.py --config configs/digits.yaml --set model.family=cnn \\
        --on augment.max_shift=1 --on augment.noise_std=0.1
    # synthetic keypoints (flip mirrors x and swaps the config's augment.flip_pairs):
    .venv/bin/stagetune make-example keypoints /tmp/kp
    .venv/bin/python bench/augment_effect.py --config configs/keypoints.yaml \\
        --set data.source=/tmp/kp/keypoints.csv --on augment.flip_probability=0.5
"""

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python bench/augment_effect.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, format_table, prepare_process, write_results

ARMS = {
    "off": ("space.augment.choices=[false]", "model.baseline.augment=false"),
    "on": ("space.augment.choices=[true]", "model.baseline.augment=true"),
}
QUIET = ("tracking.report=false", "tracking.trial_plots=false")


def no_model_baseline(sample: Any) -> tuple[str, float]:
    """The test score of ignoring the inputs: (metric name, value) in the pipeline's own units."""
    from stagetune.data.stage import load_stage_arrays

    arrays = load_stage_arrays(sample)
    if sample.task == "regression":
        z = np.asarray(arrays.y_test, dtype=np.float64).reshape(len(arrays.y_test), -1)
        # Targets are stored standardised: the training mean is 0; per-output RMSE in original units, averaged.
        rmse = np.sqrt((z**2).mean(axis=0)) * np.asarray(sample.target_std)
        return "rmse", float(rmse.mean())
    majority = np.bincount(arrays.y_train).argmax()
    return "accuracy", float((arrays.y_test == majority).mean())


def run_augment_effect(
    config_file: Path | None,
    overrides: Sequence[str],
    on: Sequence[str],
    seeds: Sequence[int],
    workdir: Path,
    arms: Sequence[str] = tuple(ARMS),
) -> list[dict[str, Any]]:
    """One pipeline run per seed and arm; a row each with the test metrics, the baseline and the seconds."""
    from flows.tune_pipeline import tune_pipeline
    from stagetune.config_loading import load_config

    rows = []
    for seed in seeds:
        for arm in arms:
            fixed = ARMS[arm]
            extra = [*QUIET, *overrides, *fixed, *(on if arm == "on" else ()), f"seed={seed}"]
            config = load_config(config_file, [*extra, f"execution.workdir={workdir / f'{arm}-{seed}'}"])
            started = time.perf_counter()
            result = tune_pipeline(config)
            metric, baseline = no_model_baseline(result.sample)
            rows.append(
                {
                    "seed": seed,
                    "arm": arm,
                    "status": result.status,
                    "metric": metric,
                    "test": result.test_metrics.get(metric, math.nan),
                    "baseline": baseline,
                    "test_metrics": result.test_metrics,
                    "best_hyperparams": None
                    if result.best_hyperparams is None
                    else result.best_hyperparams.model_dump(),
                    "seconds": time.perf_counter() - started,
                    "overrides": extra,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="config file (default: the embedded defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for both arms")
    parser.add_argument("--on", action="append", default=[], help="KEY=VALUE for the augmented arm only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="default: off and on")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/augment-effect"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--name", default="augment_effect")
    args = parser.parse_args()
    prepare_process()
    rows = run_augment_effect(args.config, args.overrides, args.on, args.seeds, args.workdir, args.arms)
    table = [
        [r["seed"], r["arm"], r["status"], f"{r['test']:.4f}", f"{r['baseline']:.4f}", f"{r['seconds']:.0f}"]
        for r in rows
    ]
    metric = rows[0]["metric"] if rows else "metric"
    print(format_table(["seed", "augment", "status", f"test {metric}", f"no-model {metric}", "seconds"], table))
    for arm in args.arms:
        values = [r["test"] for r in rows if r["arm"] == arm]
        print(f"{arm}: mean test {metric} {np.mean(values):.4f} over {len(values)} seed(s)")
    path = write_results(args.out, args.name, {"config": str(args.config), "on": args.on, "rows": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
