"""HDF5 cache round trips (static and per-image texts, per-run test files) and damaged files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from pipeline.core.errors import InputError
from pipeline.features.cache import (
    SCHEMA_VERSION,
    load_features,
    load_fewshot,
    read_attrs,
    write_fewshot_cache,
    write_test_cache,
)

RUN = {"dataset": "toy", "shot": 2, "seed": 1}
ATTRS = {"backbone": "zeroshot", "dataset": "toy", "model": "m", "pretrained": "", "config": {}}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def write_pair(
    tmp_path, *, per_image=False, backbone="zeroshot", image_source=None, run_test=False, test_seed=1
):
    rng = np.random.default_rng(0)
    train_x = _unit(rng.normal(size=(6, 3, 8)))
    common = {**ATTRS, "backbone": backbone, "image_source": image_source or backbone}
    write_fewshot_cache(
        tmp_path / "fs.h5",
        train_x=train_x,
        train_y=np.array([0, 0, 1, 1, 2, 2]),
        train_paths=[f"ç/{i}.png" for i in range(6)],  # non-ASCII survives
        val_x=_unit(rng.normal(size=(3, 8))),
        val_y=np.array([0, 1, 2]),
        val_paths=["a", "b", "c"],
        text=None if per_image else _unit(rng.normal(size=(3, 8))),
        classnames=["cat", "dog", "ünï"],
        attrs={**common, "shot": 2, "seed": 1, "templates": ["{}"], "forwards": {"image": 21}},
        train_targets=_unit(rng.normal(size=(6, 3, 8))) if per_image else None,
    )
    test_attrs = {
        **common,
        "backbone": image_source or backbone,
        **({"shot": 2, "seed": test_seed} if run_test else {}),
    }
    write_test_cache(
        tmp_path / "test.h5",
        features=_unit(rng.normal(size=(5, 8))),
        labels=np.array([0, 1, 2, 0, 1]),
        paths=[str(i) for i in range(5)],
        attrs=test_attrs,
    )
    return tmp_path / "fs.h5", tmp_path / "test.h5"


def test_static_round_trip(tmp_path) -> None:
    fs, test = write_pair(tmp_path)
    feats = load_features(fs, test, expect={**RUN, "backbone": "zeroshot"})
    assert feats.train_x.shape == (6, 3, 8) and feats.text.shape == (3, 8) and feats.train_targets is None
    assert feats.classnames == ["cat", "dog", "ünï"] and feats.train_paths[0] == "ç/0.png"
    assert feats.attrs["text_kind"] == "static" and feats.attrs["forwards"] == {"image": 21}
    assert feats.test_x.shape == (5, 8) and feats.dim == 8 and feats.n_classes == 3


def test_per_image_texts_and_reused_image_source(tmp_path) -> None:
    fs, test = write_pair(tmp_path, per_image=True, backbone="cocoop", image_source="zeroshot")
    feats = load_features(fs, test, expect={**RUN, "backbone": "cocoop"})
    assert feats.text is None and feats.train_targets.shape == (6, 3, 8)
    assert feats.attrs["image_source"] == "zeroshot"


def test_per_run_test_file_must_match_the_run(tmp_path) -> None:
    fs, test = write_pair(tmp_path, backbone="clip_adapter", run_test=True)
    assert load_features(fs, test, expect=RUN).test_y.shape == (5,)
    (tmp_path / "x").mkdir()
    _, test = write_pair(tmp_path / "x", backbone="clip_adapter", run_test=True, test_seed=2)
    with pytest.raises(InputError, match="'seed'"):
        load_features(fs, test, expect=RUN)


def test_test_file_of_other_image_features_is_refused(tmp_path) -> None:
    fs, _ = write_pair(tmp_path, backbone="coop", image_source="zeroshot")
    (tmp_path / "x").mkdir()
    _, other = write_pair(tmp_path / "x", backbone="clip_lora")
    with pytest.raises(InputError, match="'backbone' is 'clip_lora' but the config expects 'zeroshot'"):
        load_features(fs, other, expect=RUN)


def test_damaged_strings_fail_in_one_line(tmp_path) -> None:
    fs, test = write_pair(tmp_path)
    with h5py.File(fs, "a") as f:
        raw = f["classnames"][()]
        raw[:3] = 0xFF  # not UTF-8 any more
        f["classnames"][...] = raw
    with pytest.raises(InputError, match="fs.h5: 'classnames' fails its checksum"):
        load_fewshot(fs, expect=RUN)


def test_a_changed_feature_value_fails_its_checksum(tmp_path) -> None:
    """A finite, plausible change (one feature, one attribute) passes every shape and range check."""
    fs, test = write_pair(tmp_path)
    with h5py.File(test, "a") as f:
        x = f["test/features"][()]
        x[2, 3] += 0.01
        f["test/features"][...] = x
    with pytest.raises(InputError, match="test.h5: 'test/features' fails its checksum"):
        load_features(fs, test, expect=RUN)
    with h5py.File(fs, "a") as f:
        f.attrs["model"] = np.bytes_(b"m2")
    with pytest.raises(InputError, match="fs.h5: attributes fail their checksum"):
        read_attrs(fs)


# Flips 16 bytes at every 16th byte of a cache (so every byte is hit once) and reads each damaged copy in
# this subprocess. SIGALRM's default action ends the process: a read that spins (as a damaged HDF5
# variable-length string heap makes it do) kills the sweep, naming the offset it reached.
SWEEP = textwrap.dedent(
    """
    import signal, sys
    from pathlib import Path
    import numpy as np
    from pipeline.core.errors import InputError
    from pipeline.features.cache import load_features

    fs, test, which = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    start, stride = int(sys.argv[4]), int(sys.argv[5])
    expect = {"dataset": "toy", "shot": 2, "seed": 1, "backbone": "zeroshot"}
    ref = load_features(fs, test, expect=expect)
    target = fs if which == "fs" else test
    clean = target.read_bytes()
    for pos in range(start, len(clean), stride):
        damaged = bytearray(clean)
        damaged[pos : pos + 16] = bytes(b ^ 0xFF for b in damaged[pos : pos + 16])
        target.write_bytes(bytes(damaged))
        print("at", pos, flush=True)
        signal.alarm(1)
        try:
            got = load_features(fs, test, expect=expect)
        except InputError as err:
            message = str(err)
            assert "\\n" not in message and message.startswith(str(target)), message
            print("error", pos, message, flush=True)
        else:
            for key in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "text"):
                assert np.array_equal(getattr(got, key), getattr(ref, key)), (pos, key)
            for key in ("classnames", "train_paths", "attrs"):
                assert getattr(got, key) == getattr(ref, key), (pos, key)
            print("same", pos, flush=True)
        signal.alarm(0)
    target.write_bytes(clean)
    """
)


@pytest.mark.parametrize("which, start, stride", [("fs", 0, 16), ("test", 8, 16)])
def test_damage_anywhere_reads_identically_or_fails_within_a_second(tmp_path, which, start, stride) -> None:
    fs, test = write_pair(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", SWEEP, str(fs), str(test), which, str(start), str(stride)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert result.returncode == 0, (lines[-1:], result.stderr[-2000:])
    outcomes = [line.split()[0] for line in lines if not line.startswith("at ")]
    size = (fs if which == "fs" else test).stat().st_size
    assert len(outcomes) == len(range(start, size, stride))
    assert outcomes.count("error") > 50 and outcomes.count("same") > 50  # data and padding both hit


def test_an_old_layout_is_refused_before_its_strings_are_read(tmp_path) -> None:
    """Schema 2 kept attributes (and schema 1 the class names) as variable-length strings, in the
    global heap ("GCOL"); flipping 16 bytes there made the reader spin forever. Such a file is now
    refused from its integer schema version, before any string is touched."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs["schema_version"] = 2
        f.attrs["kind"] = "fewshot"  # a Python str: a variable-length string
        f.create_dataset("classnames", data=["cat", "dog"], dtype=h5py.string_dtype())
    data = bytearray(path.read_bytes())
    heap = data.index(b"GCOL")
    data[heap + 16 : heap + 32] = bytes(b ^ 0xFF for b in data[heap + 16 : heap + 32])
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"'schema_version' is 2 but this code reads {SCHEMA_VERSION}"):
        load_fewshot(path, expect=RUN)


def test_truncated_file_is_an_input_error(tmp_path) -> None:
    fs, test = write_pair(tmp_path)
    data = fs.read_bytes()
    fs.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="fs.h5"):
        load_features(fs, test, expect=RUN)
