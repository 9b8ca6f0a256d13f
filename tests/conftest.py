"""Shared fixtures: one tiny-random engine (the real engine classes, random weights) per test run."""

from __future__ import annotations

import os

import pytest

from server.cli.server import cpu_threads
from server.engine import Engine
from server.engine.tiny import build_tiny_random


@pytest.fixture(scope="session", autouse=True)
def _private_data_home(tmp_path_factory):
    """Servers started by tests (in-process or as processes) keep their rooms' SQLite file here,
    not in the user's ~/.local/share."""
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))


@pytest.fixture(scope="session")
def tiny_engine():
    engine = Engine(lambda: build_tiny_random(seed=0), threads=cpu_threads()).start()
    engine.wait_ready(120)
    yield engine
    engine.close()
