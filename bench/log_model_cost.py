"""The final model's MLflow logging cost in a fresh process: `serving.log_model.log_pyfunc_model` on a tiny
classifier, the first call against a second one in the same process, beside the metadata scan alone.

    python bench/log_model_cost.py [--repeats 3] [--out bench/results]

Each repeat is a new child process (so MLflow's per-process caches start empty) that logs the same tiny
model twice into a fresh SQLite store. "scan" is `importlib_metadata.packages_distributions()` timed on
its own in that child after the logging (so the first call ran with nothing cached). MLflow runs that
scan once per process (cached in `mlflow.utils.requirements_utils._MODULES_TO_PACKAGES`) to check the
pinned requirements against the installed packages, so first minus second call is roughly the scan.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/log_model_cost.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, Stopwatch, format_table, prepare_process, spread, write_results


def child(workdir: Path) -> dict[str, float]:
    """Time two `log_pyfunc_model` calls of one tiny model, then the scan alone (run in a fresh process)."""
    import importlib_metadata
    import numpy as np
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from schemas.hyperparams import HyperParams
    from stagetune.models import build_model
    from stagetune.registry.checkpoint import save_checkpoint
    from stagetune.serving.log_model import log_pyfunc_model
    from stagetune.serving.preprocessing import TablePreprocessor

    hp = HyperParams(width=16, depth=2, dropout=0.3, batch_norm=True)
    weights, preprocess = workdir / "weights.pt", workdir / "preprocess.json"
    save_checkpoint(
        weights, build_model("mlp", hp, [3], 2, seed=1), family="mlp", hp=hp, input_shape=[3], num_classes=2,
        class_names=["a", "b"], import_path=None, data_fingerprint="fp", metrics=None,
    )  # fmt: skip
    kinds = {"x": "f", "y": "i", "c": "O"}
    preprocessor = TablePreprocessor(["x", "y"], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0], ["c"], ["p"], [["p"]], kinds)
    preprocess.write_text(json.dumps(preprocessor.to_state()))
    rows = pd.DataFrame({"x": [1.0, np.nan, 3.0], "y": [1, 2, 3], "c": ["p", "q", None]})
    uri = f"sqlite:///{workdir}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("log-model", str(workdir / "artifacts"))).info.run_id
    times: dict[str, float] = {}
    for name in ("first_log_s", "second_log_s"):
        with Stopwatch() as watch:
            log_pyfunc_model(
                uri, run_id, weights=weights, preprocess=preprocess, preprocessor=preprocessor,
                task="classification", output_names=["a", "b"], raw_example=rows,
            )  # fmt: skip
        times[name] = watch.seconds
    with Stopwatch() as watch:
        importlib_metadata.packages_distributions()
    times["scan_s"] = watch.seconds
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    prepare_process()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    runs: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as workdir:
            command = [sys.executable, str(Path(__file__).resolve()), "--child", workdir]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    names = ("first_log_s", "second_log_s", "scan_s")
    rows = [[name, *(r[name] for r in runs), spread([r[name] for r in runs]).median] for name in names]
    print(format_table(["seconds", *(f"run {i + 1}" for i in range(len(runs))), "median"], rows))
    path = write_results(args.out, "log_model_cost", {"runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
