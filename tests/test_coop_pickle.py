"""CoOp's few-shot pickles: read without running anything, and checked against the dassl draw."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
from fixtures_datasets import Counts, write_imagenet, write_oxford_pets

from pipeline import sample_shots
from pipeline.core.errors import InputError
from pipeline.data.coop import load_dataset
from pipeline.data.coop_pickle import read_coop_pickle
from pipeline.data.fewshot import sample_fewshot

DASSL_MODULE = "dassl.data.datasets.base_dataset"
# Where the machine that drew CoOp's subsets kept its data root.
THEIR_ROOT = "/home/someone/DATA"


@pytest.fixture
def datum_class(monkeypatch: pytest.MonkeyPatch) -> type:
    """A class that pickles as Dassl's ``Datum`` (same module and name, same underscored
    attributes), registered in ``sys.modules`` for this test only so ``pickle.dumps`` finds it."""

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    cls = types.new_class("Datum", exec_body=lambda ns: ns.update(__init__=__init__))
    cls.__module__, cls.__qualname__ = DASSL_MODULE, "Datum"
    module = types.ModuleType(DASSL_MODULE)
    module.Datum = cls
    for name in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, DASSL_MODULE, module)
    return cls


def write_pickle(path: Path, data: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def coop_pickle_of(datum_class: type, items, image_dir: str) -> list:
    """CoOp's records of ``items``: absolute paths on another machine, Dassl's Datum."""
    return [
        datum_class(f"{THEIR_ROOT}/{image_dir}/{item.path}", item.label, 0, item.classname) for item in items
    ]


def test_agreeing_pickle_passes_and_the_split_file_records_it(tmp_path, datum_class, monkeypatch):
    write_oxford_pets(tmp_path, Counts(train=6, val=3, test=1))
    splits = load_dataset("oxford_pets", tmp_path)
    draw = sample_fewshot(splits, 2, 1, "dassl")
    assert draw.checked_against is None  # no pickle yet
    data = {
        "train": coop_pickle_of(datum_class, draw.train, "oxford_pets/images"),
        "val": coop_pickle_of(datum_class, draw.val, "oxford_pets/images"),
    }
    pkl = write_pickle(tmp_path / "oxford_pets" / "split_fewshot" / "shot_2-seed_1.pkl", data)
    for name in [n for n in sys.modules if n == "dassl" or n.startswith("dassl.")]:
        monkeypatch.delitem(sys.modules, name)  # reading needs no dassl (nor imports it)

    checked = sample_fewshot(splits, 2, 1, "dassl")
    assert checked == draw and checked.checked_against == pkl
    assert "dassl" not in sys.modules
    assert sample_fewshot(splits, 2, 1, "numpy").checked_against is None  # only CoOp's draw is checked
    assert sample_fewshot(splits, 4, 1, "dassl").checked_against is None  # no pickle for 4 shots

    out = tmp_path / "split.json"
    argv = ["--dataset", "oxford_pets", "--data-root", str(tmp_path), "--shot", "2", "--seed", "1"]
    assert sample_shots.main([*argv, "--sampler", "dassl", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["checked_against"] == str(pkl)


def test_imagenet_pickle_holds_only_train(tmp_path, datum_class):
    write_imagenet(tmp_path, Counts(train=5, val=0, test=1))
    splits = load_dataset("imagenet", tmp_path)
    draw = sample_fewshot(splits, 2, 3, "dassl")
    pkl = write_pickle(
        tmp_path / "imagenet" / "split_fewshot" / "shot_2-seed_3.pkl",
        {"train": coop_pickle_of(datum_class, draw.train, "imagenet/images")},
    )
    assert sample_fewshot(splits, 2, 3, "dassl").checked_against == pkl
    # The same file name under another class folder differs: the whole relative path is compared.
    data = pickle.loads(pkl.read_bytes())
    first = data["train"][0]._impath
    data["train"][0]._impath = first.replace("/train/n01440764/", "/train/n01443537/")
    write_pickle(pkl, data)
    with pytest.raises(InputError, match=r"train\[0\] is '.*/images/train/n01443537/n01440764_\d.JPEG'"):
        sample_fewshot(splits, 2, 3, "dassl")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["train"].__setitem__(slice(0, 2), d["train"][1::-1]),
            r"train\[0\] is '/home/someone/DATA/oxford_pets/images/\w+\.jpg' \(label \d\), "
            r"the dassl draw has '\w+\.jpg' \(label \d\)$",
        ),
        (lambda d: setattr(d["val"][1], "_label", 1 - d["val"][1]._label), r"val\[1\] is .* \(label \d\)"),
        (lambda d: d["val"].pop(), r"val has 3 images, the dassl draw has more \(val\[3\] is"),
        (lambda d: d["train"].append(d["train"][0]), r"train\[4\] is .*, beyond the 4 images of the dassl"),
        (lambda d: d.pop("train"), r"expected a dict with keys train and val, got \['val'\]"),
        (
            lambda d: d.update(test=[]),
            r"expected a dict with keys train and val, got \['test', 'train', 'val'\]",
        ),
        (
            lambda d: d["train"].__setitem__(0, ("a.jpg", 0)),
            r"train\[0\] is not a Datum with an impath and a label",
        ),
    ],
)
def test_disagreeing_pickle_is_one_line_naming_it_and_the_item(tmp_path, datum_class, edit, message):
    write_oxford_pets(tmp_path, Counts(train=6, val=3, test=1))
    splits = load_dataset("oxford_pets", tmp_path)
    draw = sample_fewshot(splits, 2, 1, "dassl")
    data = {
        "train": coop_pickle_of(datum_class, draw.train, "oxford_pets/images"),
        "val": coop_pickle_of(datum_class, draw.val, "oxford_pets/images"),
    }
    edit(data)
    pkl = write_pickle(tmp_path / "oxford_pets" / "split_fewshot" / "shot_2-seed_1.pkl", data)
    with pytest.raises(InputError, match=message) as err:
        sample_fewshot(splits, 2, 1, "dassl")
    assert str(err.value).startswith(f"few-shot pickle {pkl}: ") and "\n" not in str(err.value)


class _SystemCall:
    """Unpickles as ``os.system(command)``: the classic pickle payload."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Eval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (lambda cmd, _: _SystemCall(cmd), f"{os.system.__module__}.system"),
        (lambda _, marker: _Eval(f"open({str(marker)!r}, 'w')"), "builtins.eval"),
        # Hidden in a Datum's attributes: refused all the same, before anything is called.
        (lambda cmd, _: {"train": [_datum_with(_SystemCall(cmd))]}, f"{os.system.__module__}.system"),
    ],
)
def test_a_pickle_with_code_is_refused_without_running_it(tmp_path, datum_class, payload, refused):
    marker = tmp_path / "pwned"
    path = write_pickle(tmp_path / "shot_1-seed_1.pkl", payload(f"touch {marker}", marker))
    with pytest.raises(InputError) as err:
        read_coop_pickle(path)
    assert str(err.value).startswith(f"few-shot pickle {path}: refused global {refused} ")
    assert "\n" not in str(err.value)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the control: an ordinary unpickler runs the payload
    assert marker.exists()


def _datum_with(value: object) -> object:
    datum = sys.modules[DASSL_MODULE].Datum("a.jpg", 0)
    datum._impath = value
    return datum


def test_other_ways_in_are_closed(tmp_path, datum_class):
    # Protocol 0 rebuilds objects through copyreg._reconstructor: refused (CoOp writes protocol 4+).
    old = write_pickle(tmp_path / "old.pkl", {"train": [datum_class("a.jpg", 0)]}, protocol=0)
    with pytest.raises(InputError, match=r"refused global copy_?reg\._reconstructor"):
        read_coop_pickle(old)
    # Calling the stand-in with arguments (REDUCE) instead of creating it empty: it takes none.
    called = tmp_path / "called.pkl"
    called.write_bytes(b"\x80\x04c" + DASSL_MODULE.encode() + b"\nDatum\n(S'x'\ntR.")
    with pytest.raises(InputError, match=r"called.pkl: unreadable \(TypeError"):
        read_coop_pickle(called)
    # A Datum whose state is not a mapping.
    bad_state = tmp_path / "state.pkl"
    bad_state.write_bytes(b"\x80\x04c" + DASSL_MODULE.encode() + b"\nDatum\n)\x81S'x'\nb.")
    with pytest.raises(
        InputError, match=r"state.pkl: unreadable \(UnpicklingError: a Datum's state is a str"
    ):
        read_coop_pickle(bad_state)
    # Not a pickle at all; a persistent id.
    (tmp_path / "text.pkl").write_text("train, val\n")
    with pytest.raises(InputError, match=r"text.pkl: unreadable \("):
        read_coop_pickle(tmp_path / "text.pkl")
    (tmp_path / "pid.pkl").write_bytes(b"\x80\x04Pabc\n.")
    with pytest.raises(InputError, match=r"pid.pkl: unreadable \(UnpicklingError"):
        read_coop_pickle(tmp_path / "pid.pkl")
