"""How well a coarse trial's score predicts its full-fidelity score (issue 17, "budget between stages").

For each data set (the suite's CSV under the embedded defaults, only `data.source` and `data.target` set), N
configurations are drawn from the default search space with stagetune's own sampler code
(`suggest_hyperparams`, an Optuna random sampler as the coarse stage uses). Each one is trained:

- at **search fidelity**, the way a coarse trial trains (`stagetune.stages.trial`: the stage's stratified
  share of the sampled training rows, the config's objective, k-fold scores on small data), once on
  `coarse.train_fraction` of the rows and once on all of them, for `--max-epochs` epochs. The loop has no
  schedule tied to the epoch count, so the best objective over the first e epochs of that run is exactly the
  score of an e-epoch trial: one run per row share gives every coarse epoch count up to `--max-epochs`;
- at **full fidelity**, the way the final stage trains (the full training split, up to `final.max_epochs`
  with early stopping and learning-rate decay on plateau, the best epoch's weights): its best validation
  objective is the score a coarse score should predict, and its test metric is reported beside it.

Per data set and coarse fidelity (epochs x row share) the table gives the Spearman rank correlation between
the coarse and the full-fidelity scores with a 95% bootstrap interval (configurations resampled), how many of
the full-fidelity top k are in the coarse top k, whether the full-fidelity best is among the coarse top k
(the narrowing builds its ranges on the coarse top k), and the regret of the coarse pick (full-fidelity test
metric of the best-at-full-fidelity configuration minus that of the coarse best). A successive-halving row
(eta 3: every configuration 1 epoch, the best third 3 epochs, the best ninth `--max-epochs`) is read off the
same curves, with its cost in epochs over the sampled rows.

    .venv/bin/python bench/fidelity.py --datasets wine glass breast_cancer attrition diabetes --configs 24
"""

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python bench/fidelity.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, format_table, prepare_process, write_results

TOP_K = (3, 5, 8)
ETA = 3


@dataclass
class ConfigScores:
    """One sampled configuration: its search-fidelity curves (per row share) and its full-fidelity result."""

    params: dict[str, Any]
    curves: dict[float, list[float]] = field(default_factory=dict)  # share -> objective per epoch (NaN: failed)
    full_objective: float = math.nan
    full_test: float = math.nan
    full_epochs: int = 0


def sample_configs(config: Any, n: int, seed: int) -> list[tuple[dict[str, Any], Any]]:
    """`n` (optuna params, HyperParams) drawn from the config's space as the coarse stage draws them."""
    import optuna

    from stagetune.search.space import suggest_hyperparams

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(n):
        trial = study.ask()
        hp = suggest_hyperparams(trial, config.space, config.model)
        drawn.append((dict(trial.params), hp))
        study.tell(trial, 0.0)
    return drawn


def search_curve(data: Any, hp: Any, share: float, epochs: int, seed: int) -> list[float]:
    """The objective after each epoch of a search-fidelity trial on `share` of the sampled rows (the coarse
    stage's row choice, and its k-fold scores on small data); a failed trial gives NaN for every epoch."""
    from functools import partial

    from stagetune.data.sampling import stratified_subsample
    from stagetune.models import build_model
    from stagetune.stages.trial import objective_value
    from stagetune.training.device import resolve_device
    from stagetune.training.loaders import make_eval_loader, make_train_loader
    from stagetune.training.loop import fit
    from stagetune.training.small_data import FitOptions, cross_validate, joined

    config, arrays, task = data.config, data.arrays, data.task
    x, y = arrays.X_train_sampled, arrays.y_train_sampled
    if share < 1.0:  # as stagetune.stages.search_stage.trial_data: same rows for every trial of the stage
        keep = stratified_subsample(task.strata(y), max(1, round(share * len(y))), np.random.default_rng(config.seed))
        x, y = x[keep], y[keep]
    device = resolve_device(config.execution.device)
    build = partial(
        build_model, config.model.family, hp, data.input_shape, task.output_size, config.model.import_path, seed=seed
    )
    objective = config.search.resolved_objective
    try:
        folds = config.search.resolved_cv_folds
        if folds > 1:
            xs, ys = joined(x, y, arrays.X_val_sampled, arrays.y_val_sampled)
            options = FitOptions.of(config)
            result = cross_validate(build, xs, ys, hp, task, epochs, device, folds=folds, seed=seed, options=options)
            history, status = result.fit.history, result.fit.status
        else:
            import torch

            torch.manual_seed(seed)
            feed = make_train_loader(x, y, hp, task, seed, config.sample.oversample_ratio)
            val = make_eval_loader(arrays.X_val_sampled, arrays.y_val_sampled, batch_size=1024, task=task)
            fitted = fit(build(), feed, val, hp, epochs, device, grad_clip_norm=config.training.grad_clip_norm)
            history, status = fitted.history, fitted.status
    except Exception:  # a trial that crashes scores as failed, as in the search stage
        return [math.nan] * epochs
    if status == "diverged":
        return [math.nan] * epochs
    values = [objective_value(record, objective) for record in history]
    return values + [math.nan] * (epochs - len(values))


def full_fidelity(data: Any, hp: Any, seed: int) -> tuple[float, float, int]:
    """(best validation objective, test metric, epochs run) of the final stage's training rule on the full
    training split (early stopping, LR decay on plateau, best epoch's weights)."""
    import torch

    from bench.training import best_objective
    from stagetune.evaluation import evaluate_on_test
    from stagetune.models import build_model
    from stagetune.training.device import resolve_device
    from stagetune.training.loaders import make_eval_loader, make_train_loader
    from stagetune.training.loop import fit

    config, arrays, final, task = data.config, data.arrays, data.config.final, data.task
    device = resolve_device(config.execution.device)
    torch.manual_seed(seed)
    family, import_path = config.model.family, config.model.import_path
    model = build_model(family, hp, data.input_shape, task.output_size, import_path, seed=seed)
    try:
        outcome = fit(
            model,
            make_train_loader(arrays.X_train, arrays.y_train, hp, task, seed, config.sample.oversample_ratio),
            make_eval_loader(arrays.X_val, arrays.y_val, batch_size=1024, task=task),
            hp,
            final.max_epochs,
            device,
            grad_clip_norm=config.training.grad_clip_norm,
            lr_plateau_patience=final.lr_plateau_patience,
            lr_plateau_factor=final.lr_plateau_factor,
            early_stopping_patience=final.early_stopping_patience,
            keep_best_state=True,
        )
    except Exception:
        return math.nan, math.nan, 0
    if outcome.best_epoch is None or outcome.status == "diverged":
        return math.nan, math.nan, len(outcome.history)
    test = evaluate_on_test(model, arrays.X_test, arrays.y_test, task, device).summary_metrics()
    value = best_objective(outcome.history, config.search.resolved_objective)
    return value, float(test.get(data.spec.metric, math.nan)), len(outcome.history)


def oriented(values: Sequence[float], lower_is_better: bool) -> np.ndarray:
    """Scores where higher is better and a failed configuration (NaN) ranks last."""
    array = np.asarray(values, dtype=float)
    array = -array if lower_is_better else array
    return np.where(np.isfinite(array), array, -np.inf)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def spearman_interval(a: np.ndarray, b: np.ndarray, seed: int, rounds: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the Spearman correlation, resampling configurations."""
    rng = np.random.default_rng(seed)
    draws = [spearman(a[idx], b[idx]) for idx in (rng.integers(0, len(a), len(a)) for _ in range(rounds))]
    finite = [d for d in draws if math.isfinite(d)]
    if not finite:
        return math.nan, math.nan
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def top(scores: np.ndarray, k: int) -> set[int]:
    """Indices of the k best (highest) scores; ties broken by index."""
    return set(np.argsort(-scores, kind="stable")[:k].tolist())


def selection_quality(coarse: np.ndarray, truth: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Top-k overlap, whether the truth's best is in the coarse top k, and the coarse pick's test regret."""
    best = int(np.argmax(truth))
    row: dict[str, float] = {}
    for k in TOP_K:
        row[f"overlap@{k}"] = len(top(coarse, k) & top(truth, k)) / k
        row[f"best_in_top{k}"] = float(best in top(coarse, k))
    finite_test = np.where(np.isfinite(test), test, -np.inf)
    row["regret"] = float(finite_test.max() - finite_test[int(np.argmax(coarse))])
    return row


def prefix_best(curve: Sequence[float], epochs: int, lower_is_better: bool) -> float:
    """The score of an `epochs`-epoch trial: the best objective of the curve's first `epochs` epochs."""
    finite = [v for v in curve[:epochs] if math.isfinite(v)]
    if not finite:
        return math.nan
    return min(finite) if lower_is_better else max(finite)


def successive_halving(
    curves: Sequence[Sequence[float]], rungs: Sequence[int], lower_is_better: bool
) -> tuple[np.ndarray, float]:
    """Scores after successive halving (every configuration to rungs[0] epochs, the best 1/ETA of them to the
    next rung, ...): a configuration dropped at a rung keeps a score below every survivor's. Returns the scores
    (higher is better) and the epochs spent (each configuration's last rung)."""
    n = len(curves)
    alive = list(range(n))
    scores = np.full(n, -np.inf)
    spent = 0.0
    for level, epochs in enumerate(rungs):
        at_rung = oriented([prefix_best(curves[i], epochs, lower_is_better) for i in alive], lower_is_better)
        for i, score in zip(alive, at_rung, strict=True):
            scores[i] = score + 1e6 * level  # survivors of a later rung rank above everyone dropped earlier
        spent += (epochs - (rungs[level - 1] if level else 0)) * len(alive)
        keep = max(1, len(alive) // ETA)
        alive = [alive[j] for j in np.argsort(-at_rung, kind="stable")[:keep]]
    return scores, spent


def measure_dataset(name: str, n_configs: int, max_epochs: int, seed: int, cache: Path) -> dict[str, Any]:
    """Sample, train and score `n_configs` configurations on data set `name` (split at `seed`)."""
    from bench.datasets import bench_config, prepare_data
    from bench.suite_data import SUITE, suite_spec
    from schemas.config import TASK_OBJECTIVES

    spec = suite_spec(SUITE[name], cache)
    with tempfile.TemporaryDirectory(prefix="fidelity-") as workdir:
        data = prepare_data(spec, bench_config(spec, seed, Path(workdir)))
    config = data.config
    objective = config.search.resolved_objective
    lower = any(table.get(objective, False) for table in TASK_OBJECTIVES.values())
    shares = sorted({config.coarse.train_fraction, 1.0})
    scored: list[ConfigScores] = []
    started = time.perf_counter()
    for number, (params, hp) in enumerate(sample_configs(config, n_configs, seed)):
        item = ConfigScores(params=params)
        for share in shares:
            item.curves[share] = search_curve(data, hp, share, max_epochs, config.seed + number)
        item.full_objective, item.full_test, item.full_epochs = full_fidelity(data, hp, config.seed + number)
        scored.append(item)
        print(f"  {name} config {number + 1}/{n_configs}: full {item.full_objective:.4g} test {item.full_test:.4g}")
    truth = oriented([s.full_objective for s in scored], lower)
    test = np.asarray([s.full_test for s in scored], dtype=float)
    rows: list[dict[str, Any]] = []
    coarse_scores: list[list[float]] = []  # each row's coarse scores, for the paired comparison across rows
    epoch_counts = sorted({1, 2, config.coarse.epochs, 5, config.refine.epochs, max_epochs} - {0})
    for share in shares:
        for epochs in (e for e in epoch_counts if e <= max_epochs):
            coarse = oriented([prefix_best(s.curves[share], epochs, lower) for s in scored], lower)
            coarse_scores.append(coarse.tolist())
            rows.append(_fidelity_row(share, epochs, epochs * share * n_configs, coarse, truth, test, seed))
            if (epochs, share) == (config.coarse.epochs, config.coarse.train_fraction):
                rows[-1]["default"] = True
    rungs = [r for r in (1, 3, max_epochs) if r <= max_epochs]
    share = config.coarse.train_fraction
    halving, spent = successive_halving([s.curves[share] for s in scored], rungs, lower)
    coarse_scores.append(halving.tolist())
    rows.append(_fidelity_row(share, -1, spent * share, halving, truth, test, seed, label=f"SH {rungs}"))
    for row, scores in zip(rows, coarse_scores, strict=True):
        row["scores"] = scores
    return {
        "dataset": name,
        "metric": spec.metric,
        "objective": objective,
        "cv_folds": config.search.resolved_cv_folds,
        "n_train_sampled": data.n_search_rows,
        "n_val": len(data.arrays.y_val),
        "coarse_default": {"epochs": config.coarse.epochs, "train_fraction": config.coarse.train_fraction},
        "seconds": time.perf_counter() - started,
        "truth": truth.tolist(),
        "rows": rows,
        "configs": [
            {
                "params": s.params,
                "curves": {str(k): v for k, v in s.curves.items()},
                "full_objective": s.full_objective,
                "full_test": s.full_test,
                "full_epochs": s.full_epochs,
            }
            for s in scored
        ],
    }


def _fidelity_row(
    share: float,
    epochs: int,
    cost: float,
    coarse: np.ndarray,
    truth: np.ndarray,
    test: np.ndarray,
    seed: int,
    label: str | None = None,
) -> dict[str, Any]:
    low, high = spearman_interval(coarse, truth, seed)
    return {
        "fidelity": label or f"{epochs} ep x {share:g} rows",
        "epochs": epochs,
        "share": share,
        "cost_epochs": cost,
        "spearman": spearman(coarse, truth),
        "spearman_low": low,
        "spearman_high": high,
        **selection_quality(coarse, truth, test),
    }


def table(results: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per data set and coarse fidelity."""
    headers = ["dataset", "fidelity", "cost (epochs)", "Spearman [95% CI]", "top5 overlap", "best in top3/5/8",
               "regret (test)"]  # fmt: skip
    lines = []
    for result in results:
        for row in result["rows"]:
            lines.append([
                result["dataset"],
                row["fidelity"],
                f"{row['cost_epochs']:.0f}",
                f"{row['spearman']:+.2f} [{row['spearman_low']:+.2f}, {row['spearman_high']:+.2f}]",
                f"{row['overlap@5']:.2f}",
                f"{row['best_in_top3']:.0f}/{row['best_in_top5']:.0f}/{row['best_in_top8']:.0f}",
                f"{row['regret']:.4f}",
            ])  # fmt: skip
    return format_table(headers, lines)


def summary(results: Sequence[dict[str, Any]]) -> str:
    """Mean over the data sets for each fidelity."""
    by_fidelity: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        for row in result["rows"]:
            by_fidelity.setdefault(row["fidelity"], []).append(row)
    headers = ["fidelity", "sets", "mean Spearman", "mean top5 overlap", "best in top5 (sets)", "mean regret"]
    lines = []
    for label, rows in by_fidelity.items():
        rhos = [r["spearman"] for r in rows if r["spearman"] is not None and math.isfinite(r["spearman"])]
        lines.append([
            label,
            len(rows),
            f"{np.mean(rhos):+.2f}" if rhos else "-",
            f"{np.mean([r['overlap@5'] for r in rows]):.2f}",
            f"{sum(r['best_in_top5'] for r in rows):.0f}/{len(rows)}",
            f"{np.mean([r['regret'] for r in rows]):.4f}",
        ])  # fmt: skip
    return format_table(headers, lines)


def _one_thread() -> None:
    # Tiny models: one thread each is fastest, and spinning thread pools hurt most on a shared machine.
    import torch

    torch.set_num_threads(1)


def paired_differences(results: Sequence[dict[str, Any]], seed: int, rounds: int = 2000) -> str:
    """Each fidelity's Spearman minus the default coarse fidelity's, averaged over the data sets, with a 95%
    bootstrap interval: configurations resampled within each data set, the same draw for both fidelities."""
    rng = np.random.default_rng(seed)
    labels = [row["fidelity"] for row in results[0]["rows"]]
    draws: dict[str, list[float]] = {label: [] for label in labels}
    point: dict[str, float] = {}
    for round_ in range(rounds + 1):
        per_label: dict[str, list[float]] = {label: [] for label in labels}
        for result in results:
            truth = np.asarray(result["truth"], dtype=float)
            n = len(truth)
            idx = np.arange(n) if round_ == 0 else rng.integers(0, n, n)
            rows = {row["fidelity"]: np.asarray(row["scores"], dtype=float) for row in result["rows"]}
            base = next(row for row in result["rows"] if row.get("default"))["fidelity"]
            reference = spearman(rows[base][idx], truth[idx])
            for label in labels:
                per_label[label].append(spearman(rows[label][idx], truth[idx]) - reference)
        for label in labels:
            mean = float(np.nanmean(per_label[label]))
            if round_ == 0:
                point[label] = mean
            elif math.isfinite(mean):
                draws[label].append(mean)
    lines = []
    for label in labels:
        low, high = np.percentile(draws[label], [2.5, 97.5])
        lines.append([label, f"{point[label]:+.3f}", f"[{low:+.3f}, {high:+.3f}]"])
    return format_table(["fidelity", "Spearman - default's (mean over sets)", "95% CI"], lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["wine", "glass", "breast_cancer", "attrition", "diabetes"])
    parser.add_argument("--configs", type=int, default=24, help="configurations sampled per data set")
    parser.add_argument("--max-epochs", type=int, default=8, help="longest search-fidelity trial (the refine epochs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="CSV cache (default: the suite's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--jobs", type=int, default=1, help="data sets measured in parallel (one torch thread each)")
    args = parser.parse_args(argv)
    prepare_process()
    from bench.suite_data import SUITE, default_cache, suite_spec

    unknown = [name for name in args.datasets if name not in SUITE]
    if unknown:
        parser.error(f"unknown data set(s) {unknown}; choose from {sorted(SUITE)}")
    cache = args.cache or default_cache()
    for name in args.datasets:  # written once, before the workers read them
        suite_spec(SUITE[name], cache)
    results: list[dict[str, Any]] = []
    payload = {"configs": args.configs, "max_epochs": args.max_epochs, "seed": args.seed, "results": results}
    job = partial(measure_dataset, n_configs=args.configs, max_epochs=args.max_epochs, seed=args.seed, cache=cache)
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_one_thread) as pool:
        for result in pool.map(job, args.datasets):
            results.append(result)
            # Written after every data set: a run cut short keeps what it measured.
            write_results(args.out, "fidelity", payload)
            print(table(results[-1:]))
    print(table(results))
    print()
    print(summary(results))
    print()
    print(paired_differences(results, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
