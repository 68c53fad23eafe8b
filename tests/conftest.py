"""Shared fixtures. Tests needing ../shared/assets skip where it is absent, and fail under CI=true."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def _require(path: Path) -> Path:
    if path.exists():
        return path
    message = f"{path} is missing: the shared assets (published teachers, CIFAR-10 JPEGs) are expected at ../shared/assets"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " and CI=true, where their absence is an error", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return _require(ASSETS / "weights")


@pytest.fixture(scope="session")
def cifar_test_dir() -> Path:
    return _require(ASSETS / "cifar10-jpeg" / "test")


@pytest.fixture(scope="session")
def cifar_train_dir() -> Path:
    return _require(ASSETS / "cifar10-jpeg" / "train")


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch, tmp_path_factory):
    """Seed every test and keep weight lookups away from the user's caches and the network."""
    torch.manual_seed(0)
    monkeypatch.setenv("GZNQ_OFFLINE", "1")
    monkeypatch.delenv("GZNQ_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture
def ctrl_c_at_distill_step(monkeypatch):
    """`with ctrl_c_at_distill_step(3):` the third `Distiller.step` in the block raises KeyboardInterrupt, as
    Ctrl-C would there; the steps before it run as usual."""
    import contextlib

    from gznq.distill import Distiller

    @contextlib.contextmanager
    def interrupt(at: int):
        original, calls = Distiller.step, {"n": 0}

        def step(self):
            calls["n"] += 1
            if calls["n"] == at:
                raise KeyboardInterrupt
            return original(self)

        monkeypatch.setattr(Distiller, "step", step)
        try:
            yield
        finally:
            monkeypatch.setattr(Distiller, "step", original)

    return interrupt
