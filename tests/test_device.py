"""GPU claims: concurrent local jobs on a multi-GPU machine each get their own GPU."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pipeline.core import device as device_mod
from pipeline.core.device import claim_gpu, resolve_device


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A machine with two visible GPUs (as torch sees it) and a private lock folder."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FEWSHOT_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(device_mod, "_CLAIMED", [])
    yield tmp_path
    for handle in device_mod._CLAIMED:
        handle.close()


def test_concurrent_jobs_claim_different_gpus(two_gpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Each claim is a separate open file description, as a separate job process would hold.
    assert resolve_device("auto") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda:1")
    with caplog.at_level(logging.WARNING):
        assert claim_gpu() == torch.device("cuda:0")  # a third job: both taken, it shares GPU 0
    assert "claimed by other jobs" in caplog.text
    device_mod._CLAIMED.pop(0).close()  # the first job ends: its GPU is free again
    assert claim_gpu() == torch.device("cuda:0")
    assert resolve_device("cuda:1") == torch.device("cuda:1")  # an explicit index is taken as given


def test_locks_name_the_physical_gpus(two_gpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert claim_gpu() == torch.device("cuda:0")
    assert sorted(p.name for p in two_gpus.iterdir()) == ["fewshot-flows-gpu-2.lock"]


def test_one_visible_gpu_is_used_without_a_lock(two_gpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # e.g. Slurm's CUDA_VISIBLE_DEVICES
    assert resolve_device("auto") == torch.device("cuda")
    assert list(two_gpus.iterdir()) == []
