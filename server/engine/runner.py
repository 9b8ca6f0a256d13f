"""The runner: one worker thread that owns the model and does all device work.

How this works
--------------
:class:`Engine` starts a single thread (``dgasr-engine``). That thread loads the model
onto its device, warms it up (a draft and a final on silence, so the first real request
pays no allocation or kernel-selection cost; a model with lexicons builds their decoders,
~0.4 s each, which the first unhinted speaker would otherwise wait for), flips the state
to ``READY`` and then serves batches from a small bounded queue, blocking on it (no polling). Because only
this thread touches the model there is one CUDA context, one allocator and one copy of
the weights for the whole process, however many clients connect.

:meth:`Engine.submit` validates requests in the caller's thread (a bad request fails
alone, immediately) and returns a ``concurrent.futures.Future``; asyncio code awaits it
with ``asyncio.wrap_future``. A batch that raises fails its own future with the error;
the thread carries on with the next batch.
"""

from __future__ import annotations

import concurrent.futures
import enum
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from server.core.requests import EngineError, TranscribeRequest, TranscribeResult

from .denoise import run_batch, validate_request
from .model import AsrModel
from .spec import ModelSpec

__all__ = ["EngineState", "EngineStats", "Engine"]

log = logging.getLogger("dgasr.engine")

Batch = tuple[list[TranscribeRequest], concurrent.futures.Future]


class EngineState(enum.Enum):
    NEW = "new"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass
class EngineStats:
    batches: int = 0
    requests: int = 0
    failed_batches: int = 0
    busy_seconds: float = 0.0
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0


class Engine:
    """Owns one model on one device for the life of the process.

    Args:
        load: called once, on the worker thread, to build the model (so CUDA state is
            created on the thread that uses it).
        warmup: run a draft and a final on silence before reporting ready.
        queue_size: batches that may wait for the worker; the scheduler keeps at most
            one or two in flight, so this only guards against misuse.
        on_ready: called from the worker thread once the engine is READY or FAILED
            (asyncio callers pass ``lambda: loop.call_soon_threadsafe(event.set)``).
        threads: CPU threads for torch ops (process-wide). A server on CPU leaves a core
            to its event loop: oversubscribed OpenMP threads stall for whole seconds.
    """

    def __init__(
        self,
        load: Callable[[], AsrModel],
        *,
        warmup: bool = True,
        queue_size: int = 4,
        on_ready: Callable[[], None] | None = None,
        threads: int | None = None,
    ) -> None:
        self._load = load
        self._threads = threads
        self._on_ready = on_ready
        self._warmup = warmup
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=queue_size)
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._model: AsrModel | None = None
        self._error: BaseException | None = None
        self.state = EngineState.NEW
        self.stats = EngineStats()

    # ---- lifecycle ---------------------------------------------------------

    def start(self) -> Engine:
        if self.state is not EngineState.NEW:
            raise EngineError(f"engine cannot start in state {self.state.value}")
        self.state = EngineState.LOADING
        self._thread = threading.Thread(target=self._main, name="dgasr-engine", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> AsrModel:
        """Block until the model is loaded and warm; re-raises a load failure."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"engine not ready after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._model is not None
        return self._model

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @property
    def model(self) -> AsrModel:
        if self._model is None:
            raise EngineError(f"no model: engine is {self.state.value}")
        return self._model

    @property
    def cpu_threads(self) -> int | None:
        """The torch threads of an engine on CPU (None: on a GPU, or torch's own default)."""
        return self._threads

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    def device_memory_bytes(self) -> float:
        """Memory the model holds on its CUDA device now; NaN on a CPU or before it is loaded."""
        if self._model is None or self._model.device.type != "cuda":
            return float("nan")
        return float(torch.cuda.memory_allocated(self._model.device))

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish queued batches, stop the worker and release the model's memory."""
        if self.state in (EngineState.NEW, EngineState.CLOSED):
            self.state = EngineState.CLOSED
            return
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self.state = EngineState.CLOSED

    # ---- work --------------------------------------------------------------

    def submit(self, requests: Sequence[TranscribeRequest]) -> concurrent.futures.Future:
        """Queue one batch; the future resolves to results in request order.

        Raises:
            InvalidRequest: a request can never succeed (too long, bad steps, ...).
            EngineError: the engine is not ready or its queue is full.
        """
        if self.state is not EngineState.READY:
            raise EngineError(f"engine is {self.state.value}, not ready")
        if not requests:
            raise EngineError("empty batch")
        for request in requests:
            validate_request(self.model, request)
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._queue.put_nowait((list(requests), future))
        except queue.Full:
            raise EngineError("engine queue is full") from None
        return future

    def transcribe(self, requests: Sequence[TranscribeRequest], timeout: float | None = None) -> list[TranscribeResult]:
        """Blocking convenience around :meth:`submit` (CLI, scripts, tests)."""
        return self.submit(requests).result(timeout)

    # ---- worker thread -----------------------------------------------------

    def _main(self) -> None:
        try:
            if self._threads:
                torch.set_num_threads(self._threads)
            t0 = time.perf_counter()
            self._model = self._load()
            self.stats.load_seconds = time.perf_counter() - t0
            if self._warmup:
                self._warm_up(self._model)
        except BaseException as exc:  # reported through wait_ready, never lost
            log.debug("model failed to load: %s", exc)  # the caller reports it, once
            self._error = exc
            self.state = EngineState.FAILED
            self._signal_ready()
            return
        self.state = EngineState.READY
        self._signal_ready()
        log.info(
            "engine ready: model=%s device=%s load=%.2fs warmup=%.2fs",
            self._model.spec.name, self._model.device, self.stats.load_seconds, self.stats.warmup_seconds,
        )
        while (item := self._queue.get()) is not None:
            self._serve(*item)
        self._release()

    def _signal_ready(self) -> None:
        self._ready.set()
        if self._on_ready is not None:
            self._on_ready()

    def _warm_up(self, model: AsrModel) -> None:
        t0 = time.perf_counter()
        silence = np.zeros(model.spec.sample_rate, dtype=np.float32)
        run_batch(
            model,
            [TranscribeRequest(silence, model.spec.draft_steps), TranscribeRequest(silence, model.spec.final_steps)],
        )
        if model.lexicon is not None:  # silence reads as nothing, so no lexicon was needed yet
            model.lexicon.prepare()
        self.stats.warmup_seconds = time.perf_counter() - t0

    def _serve(self, requests: list[TranscribeRequest], future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        t0 = time.perf_counter()
        try:
            results = run_batch(self.model, requests)
        except Exception as exc:
            self.stats.failed_batches += 1
            log.exception("batch of %d failed", len(requests))
            future.set_exception(exc)
        else:
            future.set_result(results)
        finally:
            self.stats.batches += 1
            self.stats.requests += len(requests)
            self.stats.busy_seconds += time.perf_counter() - t0

    def _release(self) -> None:
        device = self._model.device if self._model is not None else None
        self._model = None
        gc.collect()
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()
