"""Pipeline runs on disk: a folder per run with its config, state and every finished stage's result.

`stagetune run` continues an unfinished run of the same config (same name, same fingerprint)
instead of starting over; `--resume RUN` names one; `--new` always starts a fresh one. A run folder
is locked (`flock`) by the process running it, so two processes never continue the same run, and a
killed process's lock is released by the kernel.
"""

import datetime as dt
import fcntl
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from pydantic import BaseModel

from schemas.config import PipelineConfig
from schemas.run_state import RESUMABLE, RunState
from schemas.stages import Stage
from stagetune.atomic_file import write_text_atomically
from stagetune.errors import InputError
from stagetune.flat_keys import flatten

M = TypeVar("M", bound=BaseModel)

# Settings that do not change what a run computes: a resumed run may use other values.
VOLATILE_PREFIXES = (
    "execution.",
    "tracking.report",
    "tracking.trial_plots",
    "tracking.io_retry_seconds",
    "tracking.system_metrics",
)
VOLATILE_KEYS = ("search.heartbeat_seconds", "search.stale_after_seconds", "search.max_retries")


def config_fingerprint(config: PipelineConfig) -> str:
    """sha256 of every setting that changes results (execution and tracking niceties excluded)."""
    return hashlib.sha256(json.dumps(_result_settings(config), sort_keys=True).encode()).hexdigest()


def runs_folder(config: PipelineConfig) -> Path:
    """`<execution.workdir>/runs`."""
    return Path(config.execution.workdir).resolve() / "runs"


@dataclass
class PipelineRun:
    """A run folder this process holds the lock of."""

    dir: Path
    state: RunState
    resumed: bool
    explicit: bool = False
    _lock: IO[str] | None = field(default=None, repr=False)

    def load(self, stage: Stage | Literal["pipeline"], model: type[M]) -> M | None:
        """The stored result of `stage` (or of the whole pipeline), or None when it has not finished."""
        if stage not in self.state.stages_done:
            return None
        return model.model_validate_json((self.dir / "results" / f"{stage}.json").read_text(encoding="utf-8"))

    def save(self, stage: Stage | Literal["pipeline"], result: BaseModel) -> None:
        """Store a finished stage's (or the whole pipeline's) result atomically, then mark it done in the state."""
        (self.dir / "results").mkdir(exist_ok=True)
        write_text_atomically(self.dir / "results" / f"{stage}.json", result.model_dump_json(indent=2))
        if stage not in self.state.stages_done:
            self.update(stages_done=[*self.state.stages_done, stage])

    def update(self, **changes: Any) -> None:
        """Change the state and write it (atomically)."""
        self.state = self.state.model_copy(update=changes)
        write_text_atomically(self.dir / "state.json", self.state.model_dump_json(indent=2))

    def release(self) -> None:
        """Let go of the run folder's lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def open_run(config: PipelineConfig, resume: str | None = None, new: bool = False) -> PipelineRun:
    """The run to work on: `resume` (a run folder name or path, or its MLflow parent run id), else the
    newest unfinished run of this config, else (or with `new`) a fresh one."""
    fingerprint = config_fingerprint(config)
    if resume is not None:
        folder = find_run(config, resume)
        run = _claim(folder, explicit=True)
        if run is None:
            raise InputError("--resume", f"run {folder.name} is being run by another process right now: wait for it")
        try:
            _check_resumable(config, run, fingerprint)
        except InputError:
            run.release()
            raise
        return _resumed(run)
    if not new:
        for folder in sorted(runs_folder(config).glob(f"{config.name}-*/state.json"), reverse=True):
            state = _read_state(folder.parent)
            if state is None or state.status not in RESUMABLE or state.config_fingerprint != fingerprint:
                continue
            run = _claim(folder.parent, explicit=False)
            if run is not None:  # None: another process is running it right now
                return _resumed(run)
    return _create(config, fingerprint)


def find_run(config: PipelineConfig, resume: str) -> Path:
    """The folder `--resume` names: a path, a folder under `<workdir>/runs`, or an MLflow parent run id."""
    candidates = [Path(resume), runs_folder(config) / resume]
    for candidate in candidates:
        if (candidate / "state.json").is_file():
            return candidate.resolve()
    for state_file in runs_folder(config).glob("*/state.json"):
        state = _read_state(state_file.parent)
        if state is not None and state.parent_run_id == resume:
            return state_file.parent
    raise InputError(
        "--resume",
        f"no run {resume!r} in {runs_folder(config)}: give a run folder name (as printed by `stagetune run`), "
        "its path, or its MLflow parent run id; set execution.workdir if the run lives elsewhere",
    )


def saved_config(folder: Path) -> dict[str, Any]:
    """The config a run was started with (`config.json` in its folder)."""
    data: dict[str, Any] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return data


def _create(config: PipelineConfig, fingerprint: str) -> PipelineRun:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = runs_folder(config) / f"{config.name}-{stamp}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True, exist_ok=False)
    run = _claim(folder, explicit=False)
    assert run is not None  # a brand-new folder
    write_text_atomically(folder / "config.json", config.model_dump_json(indent=2))
    state = RunState(run=folder.name, name=config.name, config_fingerprint=fingerprint, status="running")
    run.state = state
    run.update()
    return run


def _claim(folder: Path, explicit: bool) -> PipelineRun | None:
    lock = (folder / ".lock").open("a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    state = _read_state(folder) or RunState(run=folder.name, name="", config_fingerprint="", status="running")
    return PipelineRun(folder, state, resumed=False, explicit=explicit, _lock=lock)


def _resumed(run: PipelineRun) -> PipelineRun:
    run.resumed = True
    run.update(status="running", attempts=run.state.attempts + 1, message="")
    return run


def _check_resumable(config: PipelineConfig, run: PipelineRun, fingerprint: str) -> None:
    state = run.state
    if state.status not in RESUMABLE:
        raise InputError(
            "--resume", f"run {state.run} already ended ({state.status}): start a new run without --resume"
        )
    if state.config_fingerprint != fingerprint:
        changed = _changed_settings(saved_config(run.dir), config)
        raise InputError(
            "--resume",
            f"run {state.run} was started with other settings ({', '.join(changed[:8]) or 'unknown'} differ): "
            f"resume it with its own config (`stagetune run --resume {state.run}` without a config or --set), "
            "or start a new run without --resume",
        )


def _changed_settings(saved: dict[str, Any], config: PipelineConfig) -> list[str]:
    before = _result_settings(PipelineConfig.model_validate(saved)) if saved else {}
    after = _result_settings(config)
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def _result_settings(config: PipelineConfig) -> dict[str, Any]:
    flat = flatten(config.model_dump(mode="json"))
    return {
        key: value for key, value in flat.items() if not key.startswith(VOLATILE_PREFIXES) and key not in VOLATILE_KEYS
    }


def read_run_state(folder: Path) -> RunState | None:
    """The state a run folder records (None when unreadable)."""
    return _read_state(folder)


def _read_state(folder: Path) -> RunState | None:
    try:
        return RunState.model_validate_json((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
