"""Generated bad input of every kind: exit code 2, one paragraph naming the field, no traceback, nothing written.

Hypothesis generates invalid configs, command lines, environment settings and data files; each goes
through the real `stagetune run` in-process (typer's CliRunner; data cases through the Prefect flow
on the session's test server, whose first task loads the data). Every case has its own workdir,
which must end up without an MLflow run, an Optuna study or any file in it.

Generated cases (EXPECTED, counted in the `generated` fixture and checked by the last test):
config 135 (a wrong type for any number setting 30, beyond any declared bound 30, unknown keys and
typos 20, search-space ranges 20, impossible budgets 25, malformed URLs 10), command line 30,
environment 40, data 40: 245 in all.
"""

import math
import sqlite3
import string
import tempfile
import types
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import annotated_types
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import Result
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

from schemas.config import PipelineConfig
from stagetune.cli import app
from stagetune.config_loading import parse_override, with_value
from tests.conftest import TINY_OVERRIDES

CONFIG_EXAMPLES = {"wrong type": 30, "out of range": 30, "unknown key": 20, "range": 20, "budget": 25, "url": 10}
EXPECTED = {"config": sum(CONFIG_EXAMPLES.values()), "command line": 30, "environment": 40, "data": 40}

FAST = settings(
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow],
)
# A data case runs a Prefect flow (~1 s): report a failing example as generated instead of shrinking it.
SLOW = settings(FAST, phases=(Phase.explicit, Phase.generate))

runner = CliRunner()
word = st.text(string.ascii_lowercase, min_size=3, max_size=10)
identifier = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)


# ---------------------------------------------------------------- running one case and judging it


def base_settings(workdir: Path) -> dict[str, Any]:
    """The tiny test settings as a nested mapping (a YAML file's content), stores under `workdir`."""
    raw: dict[str, Any] = {}
    for override in (*TINY_OVERRIDES, f"execution.workdir={workdir}", "tracking.io_retry_seconds=0"):
        key, value = parse_override(override)
        raw = with_value(raw, key.split("."), value)
    return raw


def run_case(
    root: Path, changes: Mapping[str, Any], args: tuple[str, ...] = (), env: Mapping[str, str] | None = None
) -> tuple[Result, Path]:
    """`stagetune run <config.yaml> *args` with the tiny settings and `changes` (dotted keys) in the file."""
    case = Path(tempfile.mkdtemp(dir=root))
    workdir = case / "work"
    raw = base_settings(workdir)
    for key, value in changes.items():
        raw = with_value(raw, key.split("."), value)
    config = case / "config.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return runner.invoke(app, ["run", str(config), *args], env=dict(env or {})), workdir


def assert_rejected(result: Result, workdir: Path, fields: str | tuple[str, ...], hidden: tuple[str, ...] = ()) -> None:
    """Exit 2, a short message naming one of `fields` (none of `hidden`), no traceback, nothing written."""
    output = result.output
    fields = (fields,) if isinstance(fields, str) else fields
    assert result.exit_code == 2, f"exit {result.exit_code} ({result.exception!r}) for {fields}:\n{output}"
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in output
    if "Usage:" not in output:  # ours: the last thing printed, one line saying what is wrong and how to fix it
        message = output[output.find("error in ") :].strip()
        assert message.startswith("error in "), output
        assert "\n" not in message, f"more than one line:\n{output}"
        assert any(field in message for field in fields), f"{fields} not named in:\n{output}"
        assert len(message) > len("error in : ") + max(map(len, fields)) + 20, output
    else:  # click's usage error: one block naming the option
        assert "\n\n" not in output.strip(), f"more than one paragraph:\n{output}"
        assert any(field in output for field in fields), f"{fields} not named in:\n{output}"
    for secret in hidden:
        assert secret not in output, f"the secret {secret!r} is echoed:\n{output}"
    assert_nothing_written(workdir)


def assert_nothing_written(workdir: Path) -> None:
    """No MLflow run, no Optuna study, no file at all under `workdir` (empty folders aside)."""
    database = workdir / "mlflow.db"
    if database.exists():
        with sqlite3.connect(database) as connection:
            assert connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    assert not (workdir / "optuna.db").exists()
    written = [str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file()]
    assert not written, written


@pytest.fixture(scope="module")
def cases_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-input")


@pytest.fixture(scope="module")
def generated() -> Counter[str]:
    """Cases generated per category, counted by every test of the module and checked by the last one.

    A fixture, not a global: the tests sharing it run in one process even on several xdist workers.
    """
    return Counter()


# ---------------------------------------------------------------- configs


def number_settings(
    model: type[BaseModel] = PipelineConfig, prefix: str = ""
) -> dict[str, tuple[type, bool, FieldInfo]]:
    """Every int or float setting of the config, by dotted key: (int or float, optional?, field), from the schema."""
    found: dict[str, tuple[type, bool, FieldInfo]] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= number_settings(annotation, f"{prefix}{name}.")
            continue
        union = get_origin(annotation) in (Union, types.UnionType)
        kinds = [a for a in get_args(annotation) if a is not type(None)] if union else [annotation]
        if len(kinds) == 1 and kinds[0] in (int, float):
            found[prefix + name] = (kinds[0], union, field)
    return found


NUMBERS = number_settings()


def not_a_number(kind: type, optional: bool, field: FieldInfo) -> st.SearchStrategy[Any]:
    """Values of the wrong type for a number setting, including those pydantic would quietly coerce."""
    wrong = [
        st.text(string.ascii_letters + " _", min_size=1, max_size=12),  # 'inf' and 'nan' among them
        st.booleans(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(identifier, st.integers(), min_size=1, max_size=2),
        st.sampled_from([math.inf, -math.inf, math.nan]),
    ]
    if kind is int:
        wrong.append(st.floats(-1e6, 1e6).filter(lambda x: x != int(x)))
    if not optional:  # None is a valid "unset" for optional settings
        wrong.append(st.none())
    return st.one_of(wrong)


def out_of_bounds(kind: type, optional: bool, field: FieldInfo) -> st.SearchStrategy[Any] | None:
    """Values just past and far past each bound the schema declares (ge, gt, le, lt); None if it has none."""
    is_int, big = kind is int, 10**12
    options = []
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Ge | annotated_types.Gt):
            low = bound.ge if isinstance(bound, annotated_types.Ge) else bound.gt
            inclusive = isinstance(bound, annotated_types.Gt)  # gt=0 refuses 0 itself
            options.append(
                st.integers(-big, low - (0 if inclusive else 1))
                if is_int
                else st.floats(-1e300, low, exclude_max=not inclusive)
            )
        if isinstance(bound, annotated_types.Le | annotated_types.Lt):
            high = bound.le if isinstance(bound, annotated_types.Le) else bound.lt
            inclusive = isinstance(bound, annotated_types.Lt)
            options.append(
                st.integers(high + (0 if inclusive else 1), big)
                if is_int
                else st.floats(high, 1e300, exclude_min=not inclusive)
            )
    return st.one_of(options) if options else None


BOUNDED = sorted(key for key, setting in NUMBERS.items() if out_of_bounds(*setting) is not None)


@st.composite
def wrong_types(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """(config changes, the field the message must name): any number setting given a value of the wrong type."""
    key = draw(st.sampled_from(sorted(NUMBERS)))
    return {key: draw(not_a_number(*NUMBERS[key]))}, key


@st.composite
def out_of_range(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """Any bounded number setting given a value beyond a bound (negative sizes, fractions above 1, ...)."""
    key = draw(st.sampled_from(BOUNDED))
    strategy = out_of_bounds(*NUMBERS[key])
    assert strategy is not None
    return {key: draw(strategy)}, key


SECTIONS = ["", *PipelineConfig.model_fields, "model.baseline", "refine.narrowing", "data.synthetic"]


def known_keys(section: str) -> set[str]:
    """The settings of a dotted section ("" for the top level); none for a plain value."""
    model: Any = PipelineConfig
    for part in filter(None, section.split(".")):
        model = model.model_fields[part].annotation
    return set(model.model_fields) if hasattr(model, "model_fields") else set()


def typos(name: str) -> list[str]:
    """`name` with one character dropped, doubled or swapped with the next, at each position."""
    spots = range(len(name) - 1)
    return [
        *(name[:i] + name[i + 1 :] for i in spots),
        *(name[:i] + name[i] + name[i:] for i in spots),
        *(name[:i] + name[i + 1] + name[i] + name[i + 2 :] for i in spots),
    ]


@st.composite
def unknown_keys(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A made-up key, or a typo of a real one, in a random section (or at the top)."""
    section = draw(st.sampled_from([s for s in SECTIONS if s not in ("name", "seed")]))
    known = known_keys(section)
    typo = st.sampled_from(sorted(known)).flatmap(lambda real: st.sampled_from(typos(real)))
    name = draw(identifier | typo)
    assume(name not in known)
    key = f"{section}.{name}" if section else name
    return {key: draw(st.integers() | word)}, key


RANGES = {
    "int": ("width", "depth", "batch_size", "channels"),
    "float": ("dropout", "weight_decay", "momentum", *(f"learning_rate.{o}" for o in ("adam", "adamw", "sgd"))),
}


@st.composite
def bad_ranges(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A search-space range with low > high, or on a log scale with a bound <= 0."""
    kind = draw(st.sampled_from(sorted(RANGES)))
    name = draw(st.sampled_from(RANGES[kind]))
    number, gap = (st.integers(-(10**6), 10**6), st.integers(1, 10**6))
    if kind == "float":
        number, gap = st.floats(-1e6, 1e6), st.floats(1e-3, 1e6)
    if draw(st.booleans()):
        high = draw(number)
        low, scale = high + draw(gap), draw(st.sampled_from(["linear", "log"]))
    else:
        low = -draw(gap | st.just(0))
        high, scale = low + draw(gap | st.just(0)), "log"
    return {f"space.{name}": {"kind": kind, "low": low, "high": high, "scale": scale}}, f"space.{name}"


@st.composite
def impossible_budgets(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """Settings each valid alone but impossible together (budgets, liveness, ranges, fractions)."""
    kind = draw(st.sampled_from(["warm_start", "top_k", "heartbeat", "lr_range", "fractions", "informative"]))
    if kind == "warm_start":
        coarse, refine = draw(st.integers(1, 50)), draw(st.integers(0, 50))
        warm = draw(st.integers(min(coarse, refine) + 1, 500))
        changes = {"coarse.n_trials": coarse, "refine.n_trials": refine, "refine.warm_start": warm}
        return changes | {"refine.narrowing.top_k": 1}, "refine.warm_start"
    if kind == "top_k":
        coarse = draw(st.integers(1, 100))
        changes = {"coarse.n_trials": coarse, "refine.narrowing.top_k": draw(st.integers(coarse + 1, 10**6))}
        return changes | {"refine.warm_start": 0}, "refine.narrowing.top_k"
    if kind == "heartbeat":
        beat = draw(st.integers(2, 3600))
        changes = {"search.heartbeat_seconds": beat, "search.stale_after_seconds": draw(st.integers(2, beat))}
        return changes, "search.stale_after_seconds"
    if kind == "lr_range":
        high = draw(st.floats(1e-9, 1e3))
        changes = {"sanity.lr_range_min": high * draw(st.floats(1, 1e3)), "sanity.lr_range_max": high}
        return changes, "sanity.lr_range_min"
    if kind == "fractions":
        val = draw(st.floats(0.32, 0.49))
        test = draw(st.floats(0.8 - val + 1e-9, 0.49))
        return {"data.val_fraction": val, "data.test_fraction": test}, "data.val_fraction"
    features = draw(st.integers(2, 50))
    changes = {
        "data.synthetic.n_features": features,
        "data.synthetic.n_informative": draw(st.integers(features + 1, 10**4)),
    }
    return changes, "data.synthetic.n_informative"


def config_case(strategy: st.SearchStrategy[tuple[dict[str, Any], str]], examples: int) -> Callable[..., None]:
    """A test: each generated (changes, field) in the config file is refused naming the field."""

    @settings(FAST, max_examples=examples)
    @given(case=strategy)
    def check(cases_root: Path, generated: Counter[str], case: tuple[dict[str, Any], str]) -> None:
        changes, field = case
        generated["config"] += 1
        result, workdir = run_case(cases_root, changes)
        assert_rejected(result, workdir, field)

    return check


test_config_values_of_the_wrong_type = config_case(wrong_types(), CONFIG_EXAMPLES["wrong type"])
test_config_values_out_of_range = config_case(out_of_range(), CONFIG_EXAMPLES["out of range"])
test_unknown_config_keys = config_case(unknown_keys(), CONFIG_EXAMPLES["unknown key"])
test_search_space_ranges_upside_down_or_nonpositive_on_a_log_scale = config_case(bad_ranges(), CONFIG_EXAMPLES["range"])
test_impossible_budgets_and_cross_field_limits = config_case(impossible_budgets(), CONFIG_EXAMPLES["budget"])


# ---------------------------------------------------------------- command line

OPTIONS = {"--set", "--summary", "--verbose", "--help"}
BROKEN_CONFIG_FILES = ("[unclosed", "- a list\n- of items\n", "just text", "a: [1, 2\n", "\t- tab", "null: {")


@st.composite
def bad_command_lines(draw: st.DrawFn, root: Path) -> tuple[tuple[str, ...], str, str | None]:
    """(arguments after the config file, the field the message must name, a broken config file's text or None)."""
    kind = draw(st.sampled_from(["option", "syntax", "yaml", "unknown", "below", "summary", "folder", "config"]))
    if kind == "option":
        option = "--" + draw(st.from_regex(r"[a-z][a-z-]{1,20}", fullmatch=True))
        assume(option not in OPTIONS)
        return (option,), option, None
    if kind == "syntax":  # no '=', an empty key or an empty part of a dotted key
        template = draw(st.sampled_from(["{}", "={}", ".{}=1", "{}.=1", "{}..x=1", " =1"]))
        return ("--set", template.format(draw(identifier))), "--set", None
    if kind == "yaml":
        value = draw(st.sampled_from(["[1, 2", "{a: 1", "'open", "a: b: c", "@x", "`x"]))
        return ("--set", f"coarse.epochs={value}"), "--set", None
    if kind in ("unknown", "below"):
        section = draw(st.sampled_from(["coarse", "refine", "sample", "sanity", "final", "search"]))
        name = draw(identifier)
        assume(name not in known_keys(section))
        if kind == "unknown":
            return ("--set", f"{section}.{name}={draw(st.integers())}"), f"{section}.{name}", None
        # A plain setting: below a nested section (refine.narrowing, refine.diagnosis_shift) a new name is an
        # unknown key, the case above.
        plain = sorted(key for key in known_keys(section) if not known_keys(f"{section}.{key}"))
        setting = draw(st.sampled_from(plain))
        return ("--set", f"{section}.{setting}.{name}=1"), "--set", None
    if kind == "summary":
        return ("--summary", str(root / draw(identifier) / draw(identifier) / "summary.json")), "--summary", None
    if kind == "folder":
        return ("--summary", str(root)), "--summary", None
    return (), "CONFIG", draw(st.sampled_from(BROKEN_CONFIG_FILES))


@settings(FAST, max_examples=EXPECTED["command line"])
@given(data=st.data())
def test_bad_command_lines(cases_root: Path, generated: Counter[str], data: st.DataObject) -> None:
    args, field, broken = data.draw(bad_command_lines(cases_root))
    generated["command line"] += 1
    if broken is None:
        result, workdir = run_case(cases_root, {}, args)
    else:  # a broken config file in place of the good one
        workdir = Path(tempfile.mkdtemp(dir=cases_root))
        (workdir / "broken.yaml").write_text(broken, encoding="utf-8")
        result = runner.invoke(app, ["run", str(workdir / "broken.yaml"), "--set", f"execution.workdir={workdir}"])
        (workdir / "broken.yaml").unlink()
    assert_rejected(result, workdir, field)


# ---------------------------------------------------------------- environment

URL_VARIABLES = {
    "MLFLOW_TRACKING_URI": "tracking",
    "STAGETUNE_TRACKING_URI": "tracking",
    "STAGETUNE_OPTUNA_STORAGE": "storage",
    "STAGETUNE_S3_ENDPOINT_URL": "endpoint",
    "MLFLOW_S3_ENDPOINT_URL": "endpoint",
    "AWS_ENDPOINT_URL": "endpoint",
}
password = st.from_regex(r"pw[A-Za-z0-9]{8,16}", fullmatch=True)
SCHEMES = {"http", "https", "file", "sqlite", "postgresql", "mysql", "databricks"}
host = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,4})?", fullmatch=True).filter(lambda h: h not in SCHEMES)


@st.composite
def malformed_urls(draw: st.DrawFn, kind: str) -> tuple[str, str | None]:
    """(a URL that is wrong for a `kind` setting, the password inside it or None)."""
    secret = draw(st.none() | password)
    user = f"user:{secret}@" if secret else ""
    form = draw(st.sampled_from(["no_scheme", "scheme", "no_host", "port", "sqlite", "space"]))
    if form == "no_scheme":
        return draw(host | st.builds("{}:{}".format, host, st.integers(1, 65535)) | st.just("mlruns/here")), None
    if form == "scheme":
        scheme = draw(st.from_regex(r"[a-z][a-z0-9+]{1,8}", fullmatch=True).filter(lambda s: s not in SCHEMES))
        return f"{scheme}://{user}{draw(host)}/x", secret
    if form == "no_host":
        if kind == "storage":
            return draw(st.sampled_from(["postgresql://", "mysql://", "postgresql+psycopg://"])), None
        return draw(st.sampled_from(["http://", "https:///path", "http://:5000", "https://@/x"])), None
    if form == "port":
        port = draw(st.integers(65536, 10**7).map(str) | st.from_regex(r"[a-z]{1,5}", fullmatch=True))
        scheme = "http" if kind != "storage" else "postgresql+psycopg"
        return f"{scheme}://{user}{draw(host)}:{port}/db", secret
    if form == "sqlite":
        if kind == "endpoint":
            return f"sqlite:///{draw(identifier)}.db", None  # a fine database, but not an S3 endpoint
        return draw(
            st.just("sqlite:///") | st.builds("{}{}".format, st.sampled_from(["sqlite:", "sqlite://"]), identifier)
        ), None
    return f"http://{draw(host)} {draw(host)}:5000", None


@st.composite
def bad_environments(draw: st.DrawFn, root: Path) -> tuple[dict[str, str], str, tuple[str, ...]]:
    """(environment, the variable the message must name, secrets it must not show)."""
    if draw(st.integers(0, 4)) == 0:  # the settings file: missing, a line that is not KEY=VALUE, or a bad value
        path = Path(tempfile.mkdtemp(dir=root)) / "stack.env"
        kind = draw(st.sampled_from(["missing", "line", "value"]))
        if kind == "line":
            path.write_text(f"MLFLOW_TRACKING_URI=sqlite:///x.db\n{draw(word)}\n", encoding="utf-8")
        if kind == "value":
            variable = draw(st.sampled_from(sorted(URL_VARIABLES)))
            url, secret = draw(malformed_urls(URL_VARIABLES[variable]))
            path.write_text(f"{variable}='{url}'\n", encoding="utf-8")
            return {"STAGETUNE_SETTINGS_FILE": str(path)}, variable, (secret,) if secret else ()
        return {"STAGETUNE_SETTINGS_FILE": str(path)}, "STAGETUNE_SETTINGS_FILE", ()
    variable = draw(st.sampled_from(sorted(URL_VARIABLES)))
    url, secret = draw(malformed_urls(URL_VARIABLES[variable]))
    return {variable: url}, variable, (secret,) if secret else ()


@settings(FAST, max_examples=EXPECTED["environment"])
@given(data=st.data())
def test_malformed_environment_settings(cases_root: Path, generated: Counter[str], data: st.DataObject) -> None:
    env, variable, hidden = data.draw(bad_environments(cases_root))
    generated["environment"] += 1
    result, workdir = run_case(cases_root, {}, env=env)
    assert_rejected(result, workdir, variable, hidden)


@settings(FAST, max_examples=CONFIG_EXAMPLES["url"])
@given(data=st.data())
def test_malformed_urls_in_the_config(cases_root: Path, generated: Counter[str], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(["tracking.uri", "search.storage"]))
    url, secret = data.draw(malformed_urls("tracking" if key == "tracking.uri" else "storage"))
    generated["config"] += 1
    result, workdir = run_case(cases_root, {key: url})
    assert_rejected(result, workdir, key, (secret,) if secret else ())


# ---------------------------------------------------------------- data files

DATA_PROBLEMS = {
    "missing file": "data.source",
    "empty file": "data.source",
    "header only": "data.source",
    "garbage bytes": "data.source",
    "no target column": "data.target",
    "single class": "data.target",
    "class too small to split": "data.target",
    "target all missing": "data.target",
    "target real-valued": "data.target",
    "target huge or infinite": "data.target",
    "features constant or empty": "data.features",
    "features huge or infinite": "data.features",
    "text in a numeric column": "data.features",
    "unknown feature column": "data.features",
    "unknown class": "sample.classes",
}
HUGE = (1e39, -1e39, 1e100, 1e308, -1e308, float("inf"), float("-inf"))
label = word.map("c_{}".format)  # a prefix keeps pandas from reading 'nan', 'null' or 'none' as missing
garbage = st.one_of(
    word.map("{}?".format), st.builds("{}.{}.{}".format, st.integers(0, 99), st.integers(0, 99), st.integers(0, 99))
)


@st.composite
def bad_tables(draw: st.DrawFn, root: Path) -> tuple[dict[str, Any], str]:
    """(config changes pointing at a broken data file, the field the message must name)."""
    problem = draw(st.sampled_from(sorted(DATA_PROBLEMS)))
    n = draw(st.integers(20, 60))
    target, *features = draw(st.lists(identifier, min_size=2, max_size=5, unique=True))
    classes = draw(st.lists(label, min_size=2, max_size=3, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    frame = pd.DataFrame({name: rng.normal(size=n) for name in features})
    frame[target] = rng.permutation(np.resize(classes, n))
    path = Path(tempfile.mkdtemp(dir=root)) / f"data{draw(st.sampled_from(['.csv', '.csv.gz', '.parquet']))}"
    changes: dict[str, Any] = {"data.source": str(path), "data.target": target}
    rows = rng.choice(n, size=draw(st.integers(1, n // 10)), replace=False)
    if problem == "missing file":
        changes["data.source"] = str(path.parent / draw(identifier) / path.name)
    elif problem == "header only":
        frame = frame.iloc[:0]
    elif problem == "no target column":
        frame = frame.drop(columns=target)
    elif problem == "single class":
        frame[target] = classes[0]
    elif problem == "class too small to split":
        few = draw(st.integers(1, 2))
        frame[target] = [classes[1]] * few + [classes[0]] * (n - few)
    elif problem == "target all missing":
        frame[target] = np.nan
    elif problem == "target real-valued":  # a regression target under data.task auto: declared classification
        frame[target] = rng.integers(0, 3, n) + rng.uniform(0.01, 0.99, n)
        changes["data.task"] = "classification"
    elif problem == "target huge or infinite":
        frame[target] = np.resize([0.0, 1.0], n)
        frame.loc[rows, target] = draw(st.sampled_from((*HUGE, 1e19)))
    elif problem in ("features constant or empty", "features huge or infinite"):
        for name in features:
            if problem.startswith("features huge"):
                frame[name] = rng.choice((*HUGE, np.nan), n)
            else:
                frame[name] = draw(st.sampled_from([np.nan, 0.0, 7.5, "same"]))
    elif problem == "text in a numeric column":
        name = draw(st.sampled_from(features))
        frame[name] = frame[name].astype(str)  # one type per column, as Parquet wants
        frame.loc[rows, name] = draw(garbage)
    elif problem == "unknown feature column":
        missing = draw(identifier.filter(lambda c: c not in features and c != target))
        changes["data.features"] = [features[0], missing]
    elif problem == "unknown class":
        changes["sample.classes"] = [classes[0], "not_" + classes[1]]
    if problem in ("empty file", "garbage bytes"):  # garbage starts with a byte UTF-8 never does
        path.write_bytes(b"" if problem == "empty file" else b"\xff" + draw(st.binary(max_size=200)))
    elif problem != "missing file":
        frame.to_parquet(path) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    note(f"problem: {problem}")
    return changes, DATA_PROBLEMS[problem]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
@settings(SLOW, max_examples=EXPECTED["data"])
@given(data=st.data())
def test_bad_data_files(cases_root: Path, generated: Counter[str], data: st.DataObject) -> None:
    changes, field = data.draw(bad_tables(cases_root))
    generated["data"] += 1
    result, workdir = run_case(cases_root, changes)
    assert_rejected(result, workdir, field)


def regression_csv(root: Path, target: object = None, n: int = 40) -> Path:
    """A small regression table: two numeric features and a float target `y` (or the given column)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    frame["y"] = frame["a"] * 3.0 + rng.normal(0, 0.1, n) if target is None else target
    path = Path(tempfile.mkdtemp(dir=root)) / "reg.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(
    ("target", "changes", "field"),
    [
        (None, {"sample.rebalance": "oversample"}, "sample.rebalance"),
        (2.5, {}, "data.target"),  # constant: nothing to regress
        (["1.5", "2.5", "n/a?"] * 13 + ["3.0"], {"data.task": "regression"}, "data.target"),  # text in the target
    ],
    ids=["rebalance", "constant", "text"],
)
def test_bad_regression_input(cases_root: Path, target: object, changes: dict[str, Any], field: str) -> None:
    path = regression_csv(cases_root, target)
    result, workdir = run_case(cases_root, {"data.source": str(path), "data.target": "y", **changes})
    assert_rejected(result, workdir, field)
    assert "regression" in result.output or field == "data.target"


def test_every_category_generated_its_cases(generated: Counter[str]) -> None:
    if not all(generated[category] for category in EXPECTED):
        pytest.skip(f"only some categories ran ({dict(generated)}): run the whole file to count them")
    assert Counter(EXPECTED) == generated
    assert sum(generated.values()) >= 200


# ---------------------------------------------------------------- input that used to pass validation
# Each of these once got past validation and failed later with exit 1, after writing MLflow runs.


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"space.activation.choices": ["sigmoid"]}, "space.activation", "not activations the models build"),
        ({"space.batch_norm.choices": ["yes", "maybe"]}, "space.batch_norm", "true/false"),
        ({"model.family": "custom", "model.import_path": "os:system"}, "model.import_path", "(hp, input_shape"),
    ],
)
def test_config_that_used_to_fail_after_validation(
    cases_root: Path, changes: dict[str, Any], field: str, words: str
) -> None:
    result, workdir = run_case(cases_root, changes)
    assert_rejected(result, workdir, field)
    assert words in result.output
    validated = runner.invoke(app, ["validate", *(f"--set={k}={v}" for k, v in changes.items())])
    assert validated.exit_code == 2, validated.output  # `stagetune validate` catches it too
    assert field in validated.output


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("case", ["parquet list column", "s3 endpoint refused"])
def test_data_that_used_to_fail_after_validation(cases_root: Path, case: str) -> None:
    from stagetune.stack.procs import free_port

    folder = Path(tempfile.mkdtemp(dir=cases_root))
    env: dict[str, str] = {}
    if case == "parquet list column":
        frame = pd.DataFrame({"x": np.arange(30.0), "tags": [[1, 2], [3]] * 15, "y": ["a", "b", "c"] * 10})
        frame.to_parquet(folder / "data.parquet")
        changes, field = {"data.source": str(folder / "data.parquet"), "data.target": "y"}, "data.features"
    else:  # nothing listens on the endpoint: a configuration error, not a file problem, and no run folder
        env = {"STAGETUNE_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "STAGETUNE_S3_MAX_ATTEMPTS": "1"}
        env |= {"AWS_ACCESS_KEY_ID": "STKTEST", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}
        changes, field = {"data.source": "s3://bucket/data.csv", "data.target": "y"}, "STAGETUNE_S3_ENDPOINT_URL"
    result, workdir = run_case(cases_root, changes, env=env)
    assert_rejected(result, workdir, field)
