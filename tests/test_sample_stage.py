"""Stage 1 end to end: the npz it writes, the SampleResult it returns, and the fingerprints."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from schemas.config import PipelineConfig
from stagetune.config_loading import load_config
from stagetune.data import stage
from stagetune.data.fingerprint import arrays_fingerprint
from stagetune.data.stage import StageArrays, load_stage_arrays, run_sample_stage
from stagetune.errors import InputError
from stagetune.serving.preprocessing import serving_paths

ARRAY_KEYS = {f"{xy}_{split}" for xy in "Xy" for split in ("train", "val", "test")} | {
    f"{xy}_{split}_sampled" for xy in "Xy" for split in ("train", "val")
}


def config(**settings: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(settings)


def write_csv(path: Path, n: int = 90) -> Path:
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "size": rng.normal(size=n),
            "shape": rng.choice(np.array(["round", "flat", None], dtype=object), n),
            "label": np.resize(["x", "y", "z"], n),
        }
    ).to_csv(path, index=False)
    return path


def test_stage_writes_one_npz_and_describes_it(tmp_path: Path) -> None:
    cfg = config(data={"source": "builtin:digits"}, sample={"fraction": 0.5, "max_rows": 300})
    result = run_sample_stage(cfg, tmp_path / "out")
    # The npz, and beside it the fitted preprocessing and the raw test rows for the served model.
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted([Path(result.data_path).name, *(p.name for p in serving_paths(result.data_path))])
    with np.load(result.data_path) as stored:
        assert set(stored.files) == ARRAY_KEYS
        x_train, y_train = stored["X_train"], stored["y_train"]
        y_sampled = stored["y_train_sampled"]
    assert result.input_shape == [1, 8, 8]
    assert x_train.shape == (result.n_train, 64)
    assert x_train.dtype == np.float32
    assert result.n_train + result.n_val + result.n_test == result.n_rows == 1797
    assert result.n_train_sampled == len(y_sampled) == 300
    assert result.class_counts_train == {str(c): int(n) for c, n in enumerate(np.bincount(y_train))}
    assert result.class_counts_sampled == {str(c): int(n) for c, n in enumerate(np.bincount(y_sampled))}
    assert result.class_counts_rebalanced == result.class_counts_sampled  # rebalance "none"
    assert result.class_names == result.sampled_class_names == [str(i) for i in range(10)]
    assert result.num_classes == 10
    assert len(result.feature_names) == 64
    assert result.class_weights is None


def test_load_stage_arrays_round_trips(tmp_path: Path) -> None:
    result = run_sample_stage(config(data={"source": "builtin:iris"}, sample={"fraction": 0.5}), tmp_path)
    arrays = load_stage_arrays(result)
    with np.load(result.data_path) as stored:
        for key in ARRAY_KEYS:
            np.testing.assert_array_equal(getattr(arrays, key), stored[key])
    assert (len(arrays.y_train), len(arrays.y_val), len(arrays.y_test)) == (result.n_train, result.n_val, result.n_test)
    assert (len(arrays.y_train_sampled), len(arrays.y_val_sampled)) == (result.n_train_sampled, result.n_val_sampled)
    assert arrays.X_val_sampled.shape[1] == arrays.X_test.shape[1] == result.input_shape[0] == 4


def test_load_stage_arrays_rejects_a_changed_or_missing_file(tmp_path: Path) -> None:
    result = run_sample_stage(config(data={"source": "builtin:iris"}), tmp_path)
    arrays = load_stage_arrays(result)
    stage.write_npz_atomic(Path(result.data_path), {**vars(arrays), "y_val_sampled": arrays.y_val_sampled[::-1]})
    with pytest.raises(ValueError, match="sampled_fingerprint"):
        load_stage_arrays(result)
    Path(result.data_path).unlink()
    with pytest.raises(FileNotFoundError, match="rerun"):
        load_stage_arrays(result)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "data.npz"
    stage.write_npz_atomic(target, {"a": np.arange(3)})
    before = target.read_bytes()

    def savez_then_crash(file: Any, **arrays: np.ndarray) -> None:
        file.write(b"half an npz")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_then_crash)
    with pytest.raises(OSError, match="disk full"):
        stage.write_npz_atomic(target, {"a": np.arange(5)})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["data.npz"]


def test_bad_data_fails_before_anything_is_written(tmp_path: Path) -> None:
    cfg = config(data={"source": str(write_csv(tmp_path / "d.csv")), "target": "colour"})
    with pytest.raises(InputError) as caught:
        run_sample_stage(cfg, tmp_path / "out")
    assert caught.value.field == "data.target"
    assert not (tmp_path / "out").exists()


def test_class_subset_and_class_weights_are_recorded(tmp_path: Path) -> None:
    cfg = config(
        data={"source": "builtin:wine"},
        sample={"classes": ["2", "0"], "rebalance": "class_weights"},
    )
    result = run_sample_stage(cfg, tmp_path)
    arrays = load_stage_arrays(result)
    assert result.sampled_class_names == ["0", "2"]
    assert result.class_names == ["0", "1", "2"]
    assert result.num_classes == 3
    assert set(result.class_counts_sampled) == set(result.class_counts_rebalanced) == {"0", "2"}
    assert set(np.unique(arrays.y_train_sampled)) == set(np.unique(arrays.y_val_sampled)) == {0, 1}
    counts = np.array(list(result.class_counts_sampled.values()))
    assert result.class_weights == pytest.approx((counts.sum() / (2 * counts)).tolist())


def test_oversampling_is_recorded_not_stored(tmp_path: Path) -> None:
    synthetic = {"n_samples": 400, "n_features": 5, "n_informative": 3, "class_weights": [0.9, 0.1]}
    cfg = config(
        data={"source": "builtin:synthetic_imbalanced", "synthetic": synthetic}, sample={"rebalance": "oversample"}
    )
    result = run_sample_stage(cfg, tmp_path)
    majority = result.class_counts_sampled["0"]
    assert result.class_counts_rebalanced == {"0": majority, "1": majority}
    assert result.class_counts_sampled["1"] < majority / 5
    assert np.bincount(load_stage_arrays(result).y_train_sampled).tolist() == [
        majority,
        result.class_counts_sampled["1"],
    ]


def test_fingerprints_are_deterministic_and_sensitive(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "d.csv")
    base = {"data": {"source": str(source), "target": "label"}, "sample": {"fraction": 0.5}}
    first = run_sample_stage(config(**base), tmp_path / "a")
    again = run_sample_stage(config(**base), tmp_path / "b")
    assert (first.fingerprint, first.sampled_fingerprint) == (again.fingerprint, again.sampled_fingerprint)
    sampled = {k: getattr(load_stage_arrays(first), k) for k in stage.SAMPLED_KEYS}
    assert first.sampled_fingerprint == arrays_fingerprint(sampled)

    # Rebalancing is applied per training run: it does not change the stored arrays or their fingerprint.
    rebalanced = run_sample_stage(
        config(**{**base, "sample": {"fraction": 0.5, "rebalance": "oversample"}}), tmp_path / "c"
    )
    assert rebalanced.fingerprint == first.fingerprint

    other_fraction = run_sample_stage(config(**{**base, "sample": {"fraction": 0.6}}), tmp_path / "d")
    assert other_fraction.fingerprint != first.fingerprint
    assert other_fraction.sampled_fingerprint != first.sampled_fingerprint
    other_seed = run_sample_stage(config(**base, seed=1), tmp_path / "e")
    assert other_seed.fingerprint != first.fingerprint

    frame = pd.read_csv(source)
    frame.loc[17, "size"] += 0.001
    frame.to_csv(source, index=False)
    changed = run_sample_stage(config(**base), tmp_path / "f")
    assert changed.fingerprint != first.fingerprint
    assert changed.sampled_fingerprint != first.sampled_fingerprint


def test_fingerprint_matches_in_a_fresh_process(tmp_path: Path) -> None:
    # Text columns are where a salted hash() would creep in; the arrays' fingerprint involves no hashing of
    # Python objects (and is checked run-to-run above), so the child only loads, to stay fast (no torch).
    cfg = config(data={"source": str(write_csv(tmp_path / "d.csv")), "target": "label"})
    here = run_sample_stage(cfg, tmp_path / "here")
    code = (
        "import sys; from schemas.config import PipelineConfig; "
        "from stagetune.data.fingerprint import dataset_fingerprint; "
        "from stagetune.data.loading import load_table; "
        "c = PipelineConfig.model_validate_json(sys.argv[1]); "
        "print(dataset_fingerprint(load_table(c.data, c.seed).content_hash, c.data, c.sample, c.seed))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # a different str-hash salt must not matter
    out = subprocess.run(
        [sys.executable, "-c", code, cfg.model_dump_json()], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == here.fingerprint


def test_stage_arrays_fields_match_the_stored_keys() -> None:
    assert set(StageArrays.__dataclass_fields__) == ARRAY_KEYS


def test_balanced_batches_smaller_than_the_class_count_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    config = load_config(
        None,
        ["space.rebalance.choices=[none, balanced_batches]", "space.batch_size.choices=[4, 64]", "sample.max_rows=300"],
    )
    with pytest.raises(InputError, match="at least 10") as error:
        run_sample_stage(config, tmp_path / "out")
    assert error.value.field == "space.batch_size"
    assert not (tmp_path / "out").exists()
