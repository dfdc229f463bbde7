"""Prefect wrapper of a search trial: one task per trial, driven by the ask/tell loop in flows/search.py."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.hyperparams import HyperParams
from schemas.search import TrialRecord
from stagetune.stages.trial import Reporter, TrialContext, run_trial


@task(name="trial", task_run_name="{context.stage}-trial-{number}", cache_policy=NO_CACHE)
def train_trial(
    context: TrialContext, number: int, hp: HyperParams, params: dict[str, object], report: Reporter
) -> TrialRecord:
    """Train and record one trial (never retried: a retry would train it twice)."""
    return run_trial(context, number, hp, params, report)
