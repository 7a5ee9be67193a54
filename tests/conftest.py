"""Shared test fixtures."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import slurm_cluster as slurm
import torch

from pipeline.backbones.encoder import Encoder, load_encoder
from pipeline.core.config import EncoderConfig
from pipeline.data.coop import load_dataset
from pipeline.data.fewshot import sample_fewshot, write_split_file
from pipeline.demo.datasets import build_demo_dataset


def fresh_encoder() -> Encoder:
    """A private copy of the tiny encoder, for CLIP-LoRA (which changes its model in place)."""
    return load_encoder(EncoderConfig(model="demo-vit-t-28", pretrained=None), torch.device("cpu"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module: the 128-wide model runs fastest so, and is not slowed by
    a busy second core. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_encoder() -> Encoder:
    """The demo architecture ``demo-vit-t-28`` (D = 128), seeded random init, frozen, on the CPU.

    Shared by every test: never hand it to CLIP-LoRA, which attaches LoRA to the model in place
    (use ``fresh_encoder()`` for that).
    """
    return fresh_encoder()


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at the new folder ``mount`` with ``options`` (e.g. ``ro,size=64k``), unmounted
    afterwards; the test is skipped where ``mount`` is refused (it needs root)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs filled up by a file ``filler``: every further write fails with ENOSPC."""
    with mounted_tmpfs(tmp_path / "full", "size=64k") as mount:
        with open(mount / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 1024)
            except OSError as err:
                assert err.errno == errno.ENOSPC
        yield mount


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with demo_digits built in it and a 2-shot seed-1 split file ``split.json``."""
    root = tmp_path_factory.mktemp("data")
    build_demo_dataset("demo_digits", root / "demo_digits")
    splits = load_dataset("demo_digits", root)
    write_split_file(root / "split.json", "demo_digits", 2, 1, sample_fewshot(splits, 2, 1))
    return root


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[slurm.SlurmCluster]:
    """A single-node Slurm (partitions cpu and gpu, two fake GPUs) for the session; skipped, with
    the reason, where its packages are missing (.ci/install-slurm.sh installs them)."""
    reason = slurm.unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = slurm.start()
    yield cluster
    slurm.stop(cluster)
