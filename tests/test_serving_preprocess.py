"""The served model's preprocessing: raw rows in, exactly the matrix Stage 1 fed the network out."""

import json

import numpy as np
import pandas as pd
import pytest

from schemas.config import DataConfig
from stagetune.data.loading import load_table
from stagetune.data.preprocess import prepare
from stagetune.serving.preprocessing import (
    ServingInputError,
    preprocessor_from_state,
    raw_kinds,
    table_preprocessor,
)


def mixed_frame(n: int = 240) -> pd.DataFrame:
    """Text and integer categories, numbers with gaps and an infinity, a constant column the loader drops."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "size": rng.normal(10, 3, n),
            "count": rng.integers(0, 50, n).astype(float),
            "colour": rng.choice(["red", "green", "blue"], n).astype(object),
            "grade": rng.integers(1, 4, n),  # integers, declared categorical below
            "constant": 1.0,
            "label": rng.choice(["yes", "no"], n),
        }
    )
    frame.loc[::6, "size"] = np.nan
    frame.loc[::9, "colour"] = None
    frame.loc[5, "count"] = np.inf
    return frame


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, np.ndarray, object]:
    path = tmp_path_factory.mktemp("serving") / "data.csv"
    mixed_frame().to_csv(path, index=False)
    cfg = DataConfig.model_validate({"source": str(path), "target": "label", "categorical": ["colour", "grade"]})
    table = load_table(cfg, seed=0)
    prepared = prepare(table, cfg, seed=0)
    assert table.raw_features is not None
    state = table_preprocessor(prepared.transformer, raw_kinds(table.raw_features)).to_state()
    raw_test = table.raw_features.iloc[prepared.test_index].reset_index(drop=True)
    return raw_test, prepared.X_test, preprocessor_from_state(json.loads(json.dumps(state)))


def test_raw_test_rows_give_exactly_stage_ones_test_matrix(fitted: tuple[pd.DataFrame, np.ndarray, object]) -> None:
    raw_test, x_test, preprocessor = fitted
    assert raw_test["size"].isna().any()
    assert raw_test["colour"].isna().any()
    assert np.array_equal(preprocessor.transform(raw_test), x_test)
    # Served JSON turns integer columns with a gap into floats: the categories still match.
    as_served = raw_test.assign(grade=raw_test["grade"].astype(float), extra="ignored")
    assert np.array_equal(preprocessor.transform(as_served), x_test)


def test_unseen_categories_encode_as_zeros_and_missing_values_as_training_fills(
    fitted: tuple[pd.DataFrame, np.ndarray, object],
) -> None:
    raw_test, _, preprocessor = fitted
    rows = raw_test.head(2).copy()
    rows.loc[0, "colour"] = "purple"
    rows.loc[1, ["size", "colour"]] = [np.nan, None]
    out = preprocessor.transform(rows)
    names = [*preprocessor.numeric]
    colour = slice(len(names), len(names) + 3)
    assert out[0, colour].tolist() == [0.0, 0.0, 0.0]
    assert out[1, colour].sum() == 1.0  # the training mode
    assert not np.isnan(out).any()


def test_a_missing_or_wrongly_typed_column_is_named(fitted: tuple[pd.DataFrame, np.ndarray, object]) -> None:
    raw_test, _, preprocessor = fitted
    with pytest.raises(ServingInputError, match="'colour'"):
        preprocessor.transform(raw_test.drop(columns=["colour"]))
    with pytest.raises(ServingInputError, match=r"'size' must hold numbers.*'big'"):
        preprocessor.transform(raw_test.assign(size="big"))


def test_schema_types_follow_the_columns_as_read(fitted: tuple[pd.DataFrame, np.ndarray, object]) -> None:
    _, _, preprocessor = fitted
    assert {name: kind for name, kind, _ in preprocessor.schema_columns()} == {
        "size": "any", "count": "any", "colour": "string", "grade": "any",
    }  # fmt: skip
    assert all(required for _, _, required in preprocessor.schema_columns())
