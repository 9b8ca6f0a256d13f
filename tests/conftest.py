"""Shared fixtures: one tiny-random engine (the real engine classes, random weights) per test run."""

from __future__ import annotations

import pytest

from server.cli.server import cpu_threads
from server.engine import Engine
from server.engine.tiny import build_tiny_random


@pytest.fixture(scope="session")
def tiny_engine():
    engine = Engine(lambda: build_tiny_random(seed=0), threads=cpu_threads()).start()
    engine.wait_ready(120)
    yield engine
    engine.close()
