"""data.task literal -> Task: the one place that lists the tasks."""

from typing import Literal, cast

from schemas.results import SampleResult
from stagetune.task.base import Task
from stagetune.task.classification import ClassificationTask
from stagetune.task.regression import RegressionLoss, RegressionTask

TaskName = Literal["classification", "regression"]
TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "regression": RegressionTask}


def task_for(sample: SampleResult, loss: str = "auto") -> Task:
    """The Task of Stage 1's resolved task; `loss` is training.loss ("auto": the task's default)."""
    if sample.task == "regression":
        if loss not in ("auto", "mse", "huber", "l1"):
            raise ValueError(f"training.loss {loss!r} is not a regression loss")
        chosen: RegressionLoss = "mse" if loss == "auto" else cast(RegressionLoss, loss)
        return RegressionTask(sample.target_names, sample.target_mean, sample.target_std, chosen)
    if loss not in ("auto", "cross_entropy"):
        raise ValueError(f"training.loss {loss!r} is not a classification loss")
    return ClassificationTask(sample.sampled_class_names or sample.class_names, _balanced(sample))


def full_task_for(sample: SampleResult, loss: str = "auto") -> Task:
    """The Task over the full label set (the final stage trains on every class, not sample.classes)."""
    if sample.task == "classification":
        return ClassificationTask(sample.class_names, _balanced(sample))
    return task_for(sample, loss)


def _balanced(sample: SampleResult) -> bool:
    # Skewed classes (Stage 1's resolved defaults): a class-weighted validation loss.
    return sample.defaults is not None and sample.defaults.balanced_val_loss
