"""Real PostgreSQL and HAProxy processes for tests, on loopback ports, from the Debian packages.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user the
Debian package creates (``runuser``), in a fresh temporary cluster with ``trust`` auth on
127.0.0.1 only, fsync off (test data).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if found is None:
        raise RuntimeError(f"{name} not found: install the postgresql package (scripts/test.sh does)")
    return found


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A running PostgreSQL; yields its URL."""
    folder = tempfile.mkdtemp(prefix="dgasr-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(folder, "data")
    subprocess.run([*as_user, _pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "dgasr", "--no-sync"],
                   check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([*as_user, _pg_bin("postgres"), "-D", data, "-p", str(port), "-h", "127.0.0.1",
                             "-k", folder, "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"postgresql://dgasr@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        for _ in range(200):
            try:
                psycopg.connect(url).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read().decode()) from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def haproxy(backends: list[int]) -> Iterator[int]:
    """HAProxy with the repository's deploy/haproxy.cfg in front of two replicas; yields its port."""
    port = free_port()
    env = dict(os.environ, DGASR_LB_BIND=f"127.0.0.1:{port}", DGASR_A=f"127.0.0.1:{backends[0]}",
               DGASR_B=f"127.0.0.1:{backends[1]}")
    proc = subprocess.Popen(["haproxy", "-f", str(ROOT / "deploy" / "haproxy.cfg"), "-db"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode())
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
