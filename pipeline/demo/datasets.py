"""Build the demo datasets (real images shipped with installed packages) in CoOp's layout."""

from __future__ import annotations

import gzip
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import InputError
from pipeline.data.catalog import get_dataset_info, list_demo_datasets

log = logging.getLogger(__name__)

# Fixed seed for the demo splits: the same files on every machine.
DEMO_SEED = 0

DIGIT_CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Fraction of each digit class in train and val; the rest is test.
DIGITS_FRACTIONS = (0.5, 0.2)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_IMAGES = "t10k-images-idx3-ubyte.gz"
FASHION_LABELS = "t10k-labels-idx1-ubyte.gz"
FASHION_TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
FASHION_TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
FASHION_FILES = {
    "t10k": (FASHION_IMAGES, FASHION_LABELS),
    "train": (FASHION_TRAIN_IMAGES, FASHION_TRAIN_LABELS),
}
FASHION_CLASSNAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
# Images per class in train, val and test (a class-balanced subset of the 1,000 per class in t10k).
FASHION_COUNTS = (200, 50, 200)
# Images per class of demo_fashion_v2, drawn from the 550 per class that demo_fashion leaves out.
FASHION_V2_PER_CLASS = 200

# Source indices of the images in each split: {"train": [...], "val": [...], "test": [...]}.
Split = dict[str, list[int]]
# What a source loader returns: images (N, H, W) uint8, labels (N,) int64, class names, the split.
SourceData = tuple[np.ndarray, np.ndarray, tuple[str, ...], Split]


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as uint8 grayscale.

    Returns:
        images (1797, 8, 8) uint8 with values 0..16 scaled to 0..255, labels (1797,) int64.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    return images, digits.target.astype(np.int64)


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse a gzipped idx file (big-endian header: magic, then one uint32 per dimension)."""
    if not path.is_file():
        raise InputError(f"Fashion-MNIST file {path} is missing (apt-get install dataset-fashion-mnist)")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise InputError(f"Fashion-MNIST file {path} is not a readable gzip file ({err})") from None
    header = 4 * (1 + ndim)
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise InputError(f"Fashion-MNIST file {path}: not an idx file with magic number {magic}")
    shape = tuple(int.from_bytes(raw[4 * (1 + i) : 4 * (2 + i)], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise InputError(f"Fashion-MNIST file {path}: expected {shape} values, found {data.size}")
    return data.reshape(shape)


def load_fashion_images(folder: Path | None = None, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images from Debian's ``dataset-fashion-mnist`` package.

    Args:
        split: "t10k" (the 10,000 test images: the demo dataset) or "train" (the 60,000 training
            images: the demo backbone's pretraining data; disjoint from the demo dataset).

    Returns:
        images (N, 28, 28) uint8, labels (N,) int64.

    Raises:
        InputError: a file is missing (names it and the apt package) or malformed.
    """
    image_file, label_file = FASHION_FILES[split]
    folder = FASHION_DIR if folder is None else Path(folder)
    images = read_idx(folder / image_file, magic=2051, ndim=3)  # (N, 28, 28)
    labels = read_idx(folder / label_file, magic=2049, ndim=1).astype(np.int64)  # (N,)
    if len(images) != len(labels):
        raise InputError(f"Fashion-MNIST files in {folder}: {len(images)} images but {len(labels)} labels")
    return images, labels


def split_by_fraction(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> Split:
    """Shuffle each class and cut it into train / val / test by the given fractions (rest is test)."""
    rng = np.random.default_rng(seed)
    out: Split = {"train": [], "val": [], "test": []}
    for c in range(int(labels.max()) + 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(fractions[0] * len(idx))
        n_val = round(fractions[1] * len(idx))
        out["train"] += sorted(idx[:n_train].tolist())
        out["val"] += sorted(idx[n_train : n_train + n_val].tolist())
        out["test"] += sorted(idx[n_train + n_val :].tolist())
    return out


def split_by_count(labels: np.ndarray, counts: tuple[int, int, int], seed: int) -> Split:
    """Draw ``counts`` (train, val, test) distinct images from each class (class-balanced subset)."""
    rng = np.random.default_rng(seed)
    out: Split = {"train": [], "val": [], "test": []}
    n_train, n_val, n_test = counts
    for c in range(int(labels.max()) + 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < sum(counts):
            raise InputError(f"class {c} has {len(idx)} images, fewer than the {sum(counts)} the demo needs")
        out["train"] += sorted(idx[:n_train].tolist())
        out["val"] += sorted(idx[n_train : n_train + n_val].tolist())
        out["test"] += sorted(idx[n_train + n_val : n_train + n_val + n_test].tolist())
    return out


def _build_digits() -> SourceData:
    images, labels = load_digits_images()
    return images, labels, DIGIT_CLASSNAMES, split_by_fraction(labels, DIGITS_FRACTIONS, DEMO_SEED)


def _build_fashion() -> SourceData:
    images, labels = load_fashion_images()
    return images, labels, FASHION_CLASSNAMES, split_by_count(labels, FASHION_COUNTS, DEMO_SEED)


def _build_fashion_v2() -> SourceData:
    """demo_fashion's classes, ``FASHION_V2_PER_CLASS`` t10k images per class that none of
    demo_fashion's splits holds (a new test set, as ImageNet-V2 is ImageNet's)."""
    images, labels = load_fashion_images()
    used = {i for part in split_by_count(labels, FASHION_COUNTS, DEMO_SEED).values() for i in part}
    rng = np.random.default_rng(DEMO_SEED + 1)
    test: list[int] = []
    for c in range(int(labels.max()) + 1):
        free = np.array([i for i in np.flatnonzero(labels == c) if i not in used])
        test += sorted(rng.choice(free, FASHION_V2_PER_CLASS, replace=False).tolist())
    return images, labels, FASHION_CLASSNAMES, {"train": [], "val": [], "test": test}


# Keyed by ``DatasetInfo.source``.
SOURCES: dict[str, Callable[[], SourceData]] = {
    "sklearn-digits": _build_digits,
    "fashion-mnist-t10k": _build_fashion,
    "fashion-mnist-t10k-v2": _build_fashion_v2,
}


def format_split_json(entries: dict[str, list[list[str | int]]]) -> str:
    """CoOp split JSON with one ``[rel_path, label, classname]`` entry per line (readable diffs)."""
    blocks = []
    for key, rows in entries.items():
        body = ",\n".join(f"    {json.dumps(row)}" for row in rows)
        blocks.append(f'  "{key}": [\n{body}\n  ]' if rows else f'  "{key}": []')
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a (H, W) uint8 array as a grayscale PNG."""
    assert array.ndim == 2 and array.dtype == np.uint8, (array.shape, array.dtype)
    Image.fromarray(array).save(path, format="PNG")


def build_demo_dataset(name: str, out_dir: Path) -> Path:
    """Write a demo dataset's folder ``out_dir`` in CoOp's layout (a test-only one in ImageNet-V2's:
    ``images/<label>/<index>.png`` and ``classnames.txt``); return its split file's path.

    Images go to ``out_dir/images/<classname>/<index>.png`` (``index`` = position in the source
    data, class names with underscores for spaces as CoOp writes them), the split file to
    ``out_dir/<split_file>`` as ``{"train"|"val"|"test": [[rel_path, label, classname], ...]}``.
    The folder is assembled under a temporary sibling and renamed into place, so a failed build
    leaves nothing at ``out_dir`` (an existing ``out_dir`` is replaced only on success).

    Raises:
        InputError: ``name`` is not a demo dataset, or its source files are missing.
    """
    info = get_dataset_info(name)
    if info.source is None:
        raise InputError(
            f"dataset {name!r} is not a demo dataset (demo datasets: {', '.join(list_demo_datasets())})"
        )
    images, labels, classnames, split = SOURCES[info.source]()
    by_index = info.reader == "index_folders"  # ImageNet-V2's layout: a folder per label, classnames.txt
    folder_names = [str(c) if by_index else name.replace(" ", "_") for c, name in enumerate(classnames)]
    out_dir = Path(out_dir)
    n_images = sum(len(v) for v in split.values())
    with atomic_path(out_dir, is_dir=True) as tmp:
        image_root = tmp / info.image_dir
        for folder in folder_names:
            (image_root / folder).mkdir(parents=True)
        entries: dict[str, list[list[str | int]]] = {}
        with tqdm(total=n_images, desc=f"build {name}", disable=not sys.stderr.isatty()) as bar:
            for key in ("train", "val", "test"):
                entries[key] = []
                for index in split[key]:
                    label = int(labels[index])
                    rel = f"{folder_names[label]}/{index:05d}.png"
                    save_png(images[index], image_root / rel)
                    entries[key].append([rel, label, folder_names[label]])
                    bar.update()
        if by_index:  # "<id> <class name>" per line, ids in sorted order as the reader wants
            lines = [f"c{c:03d} {name}" for c, name in enumerate(classnames)]
            (tmp / info.split_file).write_text("\n".join(lines) + "\n")
        else:
            (tmp / info.split_file).write_text(format_split_json(entries))
    log.info(
        "built %s in %s: %d classes, %d train / %d val / %d test images",
        name,
        out_dir,
        len(classnames),
        len(entries["train"]),
        len(entries["val"]),
        len(entries["test"]),
    )
    return out_dir / info.split_file
