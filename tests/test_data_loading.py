"""Loading: builtin sets, CSV and Parquet files, and every kind of bad data rejected with a clear InputError."""

import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from schemas.config import DataConfig, SyntheticDataConfig
from stagetune.data import loading
from stagetune.data.loading import load_table
from stagetune.errors import InputError


def mixed_frame(n: int = 60) -> pd.DataFrame:
    """Numeric and categorical features with missing values, and string labels of three classes."""
    rng = np.random.default_rng(0)
    age = rng.normal(40, 10, n)
    age[[1, 7]] = np.nan
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    colour[[2, 9]] = None
    return pd.DataFrame(
        {
            "age": age,
            "income": rng.integers(1000, 5000, n),
            "colour": colour,
            "member": rng.choice([True, False], n),
            "label": np.resize(["cat", "dog", "eel"], n),
        }
    )


def write(frame: pd.DataFrame, path: Path) -> str:
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return str(path)


def load(source: str, **data: Any) -> Any:
    return load_table(DataConfig(source=source, target=data.pop("target", "label"), **data), seed=0)


@pytest.mark.parametrize(
    ("name", "n_rows", "n_features", "n_classes"),
    [("digits", 1797, 64, 10), ("breast_cancer", 569, 30, 2), ("iris", 150, 4, 3), ("wine", 178, 13, 3)],
)
def test_builtin_sets_load_with_their_shapes(name: str, n_rows: int, n_features: int, n_classes: int) -> None:
    table = load_table(DataConfig(source=f"builtin:{name}"), seed=0)
    assert (table.n_rows, table.features.shape) == (n_rows, (n_rows, n_features))
    assert table.class_names == tuple(str(i) for i in range(n_classes))
    assert table.labels.dtype == np.int64
    assert set(np.unique(table.labels)) == set(range(n_classes))
    assert table.categorical_columns == ()
    # Digits keeps all 64 pixels (even the always-blank ones) so the model can reshape to 1x8x8.
    assert table.image_shape == ((1, 8, 8) if name == "digits" else None)


def test_synthetic_imbalanced_follows_its_settings_and_seed() -> None:
    synthetic = SyntheticDataConfig(n_samples=400, n_features=6, n_informative=3, class_weights=[0.9, 0.1])
    cfg = DataConfig(source="builtin:synthetic_imbalanced", synthetic=synthetic)
    table = load_table(cfg, seed=3)
    assert table.features.shape == (400, 6)
    assert np.bincount(table.labels).tolist() == [360, 40]
    assert load_table(cfg, seed=3).content_hash == table.content_hash
    assert load_table(cfg, seed=4).content_hash != table.content_hash


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".csv.gz"])
def test_file_with_numeric_categorical_and_missing_values(tmp_path: Path, suffix: str) -> None:
    frame = mixed_frame()
    table = load(write(frame, tmp_path / f"data{suffix}"))
    assert table.class_names == ("cat", "dog", "eel")
    assert table.labels[:4].tolist() == [0, 1, 2, 0]
    assert table.numeric_columns == ("age", "income")
    assert table.categorical_columns == ("colour", "member")  # text and bool columns are categories
    assert table.features["age"].isna().sum() == 2
    assert table.features["colour"].isna().sum() == 2
    assert set(table.features["member"].dropna()) == {"True", "False"}
    assert table.n_rows == 60
    assert table.warnings == ()


def test_features_and_categorical_select_and_type_columns(tmp_path: Path) -> None:
    source = write(mixed_frame(), tmp_path / "data.csv")
    table = load(source, features=["income", "age"], categorical=["income"])
    assert table.numeric_columns == ("age",)
    assert table.categorical_columns == ("income",)
    assert list(table.features.columns) == ["age", "income"]


def test_integer_labels_sort_numerically_even_when_some_are_missing(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": np.arange(12.0), "label": [2, 10, 2, 10, 2, 10, 7, 7, 7, None, 10, 2]})
    table = load(write(frame, tmp_path / "data.csv"))
    assert table.class_names == ("2", "7", "10")  # not "2.0", and 2 < 7 < 10 as numbers
    assert table.labels.tolist() == [0, 2, 0, 2, 0, 2, 1, 1, 1, 2, 0]
    assert table.dropped_label_rows == 1
    assert table.n_rows == 12
    assert any("1 row(s)" in w for w in table.warnings)


def test_constant_and_all_missing_columns_are_dropped_and_recorded(tmp_path: Path) -> None:
    frame = mixed_frame().assign(flat=5.0, empty=np.nan, same="x")
    table = load(write(frame, tmp_path / "data.csv"))
    assert table.dropped_columns == ("flat", "empty", "same")
    assert "flat" not in table.features.columns
    assert any("'flat', 'empty', 'same'" in w for w in table.warnings)


def test_infinite_and_huge_values_become_missing(tmp_path: Path) -> None:
    frame = mixed_frame()
    frame.loc[3, "age"] = np.inf
    frame.loc[4, "age"] = -1e300
    table = load(write(frame, tmp_path / "data.csv"))
    assert np.isnan(table.features["age"].to_numpy()[[3, 4]]).all()
    assert table.features["age"].isna().sum() == 4
    assert any("2 infinite" in w and "'age'" in w for w in table.warnings)


def bad(tmp_path: Path, name: str, content: bytes | pd.DataFrame) -> str:
    path = tmp_path / name
    if isinstance(content, pd.DataFrame):
        return write(content, path)
    path.write_bytes(content)
    return str(path)


def labelled(n_per_class: int = 5, **columns: Any) -> pd.DataFrame:
    n = 2 * n_per_class
    return pd.DataFrame({"x": np.arange(n, dtype=float), **columns, "label": ["a", "b"] * n_per_class})


@pytest.mark.parametrize(
    ("name", "content", "settings", "field", "words"),
    [
        ("missing.csv", None, {}, "data.source", ["missing.csv", "does not exist"]),
        ("zero.csv", b"", {}, "data.source", ["zero.csv", "empty"]),
        ("header.csv", b"x,label\n", {}, "data.source", ["header.csv", "no rows"]),
        ("binary.csv", bytes(range(256)) * 4, {}, "data.source", ["binary.csv", "cannot be read as CSV"]),
        ("ragged.csv", b"x,label\n1,a\n2,b,3,4\n", {}, "data.source", ["ragged.csv", "cannot be read as CSV"]),
        ("junk.parquet", b"not parquet at all", {}, "data.source", ["junk.parquet", "cannot be read as Parquet"]),
        ("t.csv", labelled(), {"target": "class"}, "data.target", ["'class'", "'x', 'label'"]),
        ("f.csv", labelled(), {"features": ["x", "y"]}, "data.features", ["'y'", "'x', 'label'"]),
        ("tf.csv", labelled(), {"features": ["x", "label"]}, "data.features", ["target", "'label'"]),
        ("c.csv", labelled(), {"categorical": ["z"]}, "data.categorical", ["'z'", "'x'"]),
        ("one.csv", labelled().assign(label="a"), {}, "data.target", ["single class", "'a'"]),
        ("few.csv", labelled().assign(label=list("aaaaaaaabb")), {}, "data.target", ["'b': 2", "3"]),
        ("nolabel.csv", labelled().assign(label=np.nan), {}, "data.target", ["'label'", "missing"]),
        (
            "real.csv",
            labelled().assign(label=np.linspace(0, 1, 10)),
            {"task": "classification"},
            "data.target",
            ["non-integer", "0.1111", "data.task regression"],
        ),
        (
            "rtext.csv",
            labelled().assign(label=["1.5"] * 9 + ["abc"]),
            {"task": "regression"},
            "data.target",
            ["'label'", "non-numeric", "'abc'"],
        ),
        ("rconst.csv", labelled().assign(label=2.5), {}, "data.target", ["'label'", "constant"]),
        ("const.csv", labelled().assign(x=1.0, y="k"), {}, "data.features", ["'x', 'y'", "constant"]),
        (
            "typo.csv",
            labelled(v=["1.5"] * 9 + ["abc"]),
            {},
            "data.features",
            ["'v'", "mostly numbers", "'abc'", "data.categorical"],
        ),
        (
            "decl.csv",
            labelled(v=list("pqpqpqpqpq")),
            {"categorical": []},
            "data.features",
            ["'v'", "declared numeric", "'p'"],
        ),
    ],
)
def test_bad_data_raises_input_error_naming_field_and_problem(
    tmp_path: Path, name: str, content: Any, settings: dict[str, Any], field: str, words: list[str]
) -> None:
    source = str(tmp_path / name) if content is None else bad(tmp_path, name, content)
    with pytest.raises(InputError) as caught:
        load(source, **settings)
    assert caught.value.field == field
    for word in words:
        assert word in caught.value.message
    assert ": " in caught.value.message  # the problem, then the fix


def test_text_column_with_a_few_numbers_is_categorical_not_an_error(tmp_path: Path) -> None:
    table = load(write(labelled(v=["1", "2", "x", "y", "z"] * 2), tmp_path / "data.csv"))
    assert table.categorical_columns == ("v",)


def test_s3_uris_are_read_through_the_bounded_s3_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    # No network here: stand in for `read_s3` (its timeouts and errors are tested against real sockets
    # in test_s3_read_faults.py) and check that pandas parses what it hands over, compressed or not.
    seen: list[str] = []

    def fake_read_s3(source: str, read: Any) -> pd.DataFrame:
        seen.append(source)
        raw = mixed_frame().to_csv(index=False).encode()
        return read(io.BytesIO(gzip.compress(raw) if source.endswith(".gz") else raw))

    monkeypatch.setattr(loading, "read_s3", fake_read_s3)
    for source in ("s3://bucket/dir/data.csv", "s3://bucket/dir/data.csv.gz"):
        assert load(source).class_names == ("cat", "dog", "eel")
    assert seen == ["s3://bucket/dir/data.csv", "s3://bucket/dir/data.csv.gz"]


def test_list_columns_are_refused_naming_the_column_unless_left_out(tmp_path: Path) -> None:
    frame = mixed_frame()
    frame["tags"] = [[1, 2], [3]] * (len(frame) // 2)
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    with pytest.raises(InputError) as caught:
        load(str(path))
    assert caught.value.field == "data.features"
    assert "column 'tags' holds list values" in caught.value.message
    features = [c for c in frame.columns if c not in ("tags", "label")]
    table = load(str(path), features=features)  # left out by data.features: dropped, with a warning
    assert "tags" not in table.features.columns
    assert any("'tags'" in warning for warning in table.warnings)
