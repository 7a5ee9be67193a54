"""CoOp's few-shot pickles, read without running anything in them, and checked against our draw.

CoOp (Zhou et al., IJCV 2022) saves each few-shot subset it draws as
``<dataset folder>/split_fewshot/shot_{k}-seed_{s}.pkl``: ``{"train": [Datum, ...], "val": [...]}``
(ImageNet's holds only ``train``), where ``Datum`` is Dassl's ``dassl.data.datasets.base_dataset.Datum``
with the attributes ``impath`` (an absolute path on the machine that drew it), ``label``, ``domain``
and ``classname``. Where such a file exists, the ``dassl`` sampler checks that it drew the same images
with the same labels in the same order (docs/protocol.md).

A pickle can name any Python callable and have it called while loading. This reader maps the one
global the file needs, Dassl's ``Datum``, to ``PickledDatum``, a class without behaviour that only
records the attributes the file sets, and refuses every other global before anything is called.
"""

from __future__ import annotations

import pickle
from itertools import zip_longest
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.core.errors import InputError
from pipeline.data.splits import DatasetSplits, Item

# The only global a CoOp few-shot pickle names: Dassl's record of one image.
DATUM_GLOBAL = ("dassl.data.datasets.base_dataset", "Datum")
# The keys of a CoOp few-shot pickle; only "train" is always there.
PICKLE_KEYS = ("train", "val")


class PickledDatum:
    """Stand-in for Dassl's ``Datum``: the attributes a pickle gives it, nothing else.

    Unpickling creates it with ``object.__new__`` (no arguments allowed) and hands its state to
    ``__setstate__``, which only stores the mapping. Dassl keeps ``impath`` and the others in
    underscored attributes behind properties (``_impath``); both spellings are read.
    """

    __slots__ = ("attributes",)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a Datum's state is a {type(state).__name__}, not a dict")
        self.attributes = dict(state)

    def get(self, name: str) -> Any:
        attributes = getattr(self, "attributes", {})
        return attributes.get(f"_{name}", attributes.get(name))


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``DATUM_GLOBAL`` (to ``PickledDatum``)."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == DATUM_GLOBAL:
            return PickledDatum
        raise InputError(
            f"few-shot pickle {self.path}: refused global {module}.{name} (a CoOp few-shot pickle "
            f"names only {'.'.join(DATUM_GLOBAL)}; nothing in the file was run)"
        )


def read_coop_pickle(path: Path) -> dict[str, list[tuple[str, int]]]:
    """The ``(impath, label)`` of each Datum of a CoOp few-shot pickle, per key (``train``, ``val``).

    Raises:
        InputError: one line naming ``path``: a refused global, a file that is not a pickle, or a
            pickle that is not ``{"train": [Datum, ...], "val": [Datum, ...]}`` (``val`` optional).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f, path).load()
    except InputError:
        raise
    except Exception as err:  # anything a malformed file makes the unpickler raise
        reason = str(err).splitlines()[0] if str(err) else ""
        raise InputError(f"few-shot pickle {path}: unreadable ({type(err).__name__}: {reason})") from None
    if not isinstance(data, dict) or "train" not in data or not set(data) <= set(PICKLE_KEYS):
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise InputError(f"few-shot pickle {path}: expected a dict with keys train and val, got {keys}")
    out: dict[str, list[tuple[str, int]]] = {}
    for key, entries in data.items():
        if not isinstance(entries, list):
            raise InputError(f"few-shot pickle {path}: '{key}' is a {type(entries).__name__}, not a list")
        out[key] = []
        for i, datum in enumerate(entries):
            impath = datum.get("impath") if isinstance(datum, PickledDatum) else None
            label = datum.get("label") if isinstance(datum, PickledDatum) else None
            if not isinstance(impath, str) or not isinstance(label, int) or isinstance(label, bool):
                raise InputError(
                    f"few-shot pickle {path}: {key}[{i}] is not a Datum with an impath and a label"
                )
            out[key].append((impath, label))
    return out


def coop_pickle_path(splits: DatasetSplits, shot: int, seed: int) -> Path | None:
    """CoOp's pickle for (``shot``, ``seed``) in the dataset's folder, if there is one."""
    if splits.folder is None:
        return None
    path = splits.folder / "split_fewshot" / f"shot_{shot}-seed_{seed}.pkl"
    return path if path.is_file() else None


def _same_image(impath: str, item: Item) -> bool:
    """Whether CoOp's absolute ``impath`` ends with ``item.path`` (relative to the image root)."""
    ours = item.path.split("/")
    theirs = impath.replace("\\", "/").split("/")
    return theirs[-len(ours) :] == ours


def check_coop_pickle(path: Path, draws: dict[str, list[Item]]) -> None:
    """Check that a CoOp few-shot pickle holds ``draws`` (our dassl draw per key), item by item.

    Images are compared by their path relative to the dataset's image folder (the pickle's trailing
    path components), labels exactly, in order; only the keys the pickle holds are compared.

    Raises:
        InputError: one line naming ``path`` and the first item that differs (or the read errors
            of ``read_coop_pickle``).
    """
    pickled = read_coop_pickle(path)
    for key, theirs in pickled.items():
        for i, (datum, item) in enumerate(zip_longest(theirs, draws[key])):
            if datum is None:
                raise InputError(
                    f"few-shot pickle {path}: {key} has {len(theirs)} images, the dassl draw has more "
                    f"({key}[{i}] is {item.path!r}, label {item.label})"
                )
            impath, label = datum
            if item is None:
                raise InputError(
                    f"few-shot pickle {path}: {key}[{i}] is {impath!r} (label {label}), "
                    f"beyond the {len(draws[key])} images of the dassl draw"
                )
            if not _same_image(impath, item) or label != item.label:
                raise InputError(
                    f"few-shot pickle {path}: {key}[{i}] is {impath!r} (label {label}), "
                    f"the dassl draw has {item.path!r} (label {item.label})"
                )
