"""Dynamic batching for the served model: the faces of concurrent requests go through the
compiled call together.

A ``Batcher`` runs on the server's event loop. Requests ``submit`` their faces (already resized,
one array per group of the predictor); one task gathers them into calls of at most ``max_batch``
faces, waiting at most ``max_wait`` seconds after the first face for others, and runs each call
in one worker thread (the device's), so that the event loop never waits on the device. Every call
is padded to one of a few sizes (``call_sizes``: powers of two up to ``max_batch``), each compiled
once when the server starts (``warm``).

    >>> batcher = Batcher(predictor, max_batch=16, max_wait=0.005)
    >>> await batcher.start()            # compiles every call size
    >>> prediction = await batcher.submit(batcher.prepare(crops))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
import threading
import time

import numpy as np

from faml_jax.errors import ConfigError
from faml_jax.evaluate import pad_batch
from faml_jax.predict import Prediction

logger = logging.getLogger(__name__)


def sliced(prediction: Prediction, start: int, stop: int) -> Prediction:
    """Faces ``start:stop`` of a ``Prediction`` (every field is per face)."""
    faces = slice(start, stop)
    return dataclasses.replace(
        prediction,
        logits=prediction.logits[:, faces],
        probabilities=prediction.probabilities[:, faces],
        scores=prediction.scores[faces],
        decision=prediction.decision[faces],
        confidence=prediction.confidence[faces],
        member_top1=prediction.member_top1[:, faces],
    )


def joined(parts: list[Prediction]) -> Prediction:
    """One ``Prediction`` of consecutive parts."""
    if len(parts) == 1:
        return parts[0]
    return dataclasses.replace(
        parts[0],
        logits=np.concatenate([p.logits for p in parts], 1),
        probabilities=np.concatenate([p.probabilities for p in parts], 1),
        scores=np.concatenate([p.scores for p in parts]),
        decision=np.concatenate([p.decision for p in parts]),
        confidence=np.concatenate([p.confidence for p in parts]),
        member_top1=np.concatenate([p.member_top1 for p in parts], 1),
    )


def call_sizes(max_batch: int) -> tuple[int, ...]:
    """The faces per compiled call: powers of two below ``max_batch``, and ``max_batch`` (a call
    of n faces is padded to the smallest size >= n: at most 2x the work, log2 compilations)."""
    if max_batch < 1:
        raise ConfigError(f"the largest batch must be at least 1 face, got {max_batch}")
    sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch]
    return (*sizes, max_batch)


@dataclasses.dataclass
class _Waiting:
    images: tuple[np.ndarray, ...]  # one (n, S, S, 3) uint8 array per group of the predictor
    future: asyncio.Future
    arrived: float

    @property
    def count(self) -> int:
        return len(self.images[0])


@dataclasses.dataclass
class BatchStats:
    """What the batcher has done: compiled calls, faces through them, requests answered."""

    calls: int = 0
    faces: int = 0
    requests: int = 0
    call_seconds: float = 0.0

    def mean_call_seconds(self) -> float:
        return self.call_seconds / self.calls if self.calls else 0.0


class Batcher:
    """Gathers faces of concurrent requests into compiled calls of a ``predict.Predictor``.

    Args:
      predictor: the networks (each group of one architecture is one compiled call per size,
        ``Group.step``: the very call ``Predictor.logits`` makes).
      max_batch: at most this many faces per call (a request with more is split over calls).
      max_wait: seconds the first face waits for others before its call is made.
    """

    def __init__(self, predictor, *, max_batch: int = 16, max_wait: float = 0.005):
        if max_wait < 0:
            raise ConfigError(f"the longest wait must not be negative, got {max_wait} s")
        self.predictor, self.max_batch, self.max_wait = predictor, max_batch, max_wait
        self.sizes = call_sizes(max_batch)
        self.stats = BatchStats()
        self.ready = False
        self.warmed = threading.Event()  # set once every call size is compiled (for other threads)
        self._draining = False
        self._waiting: list[_Waiting] = []
        self._in_call: list[_Waiting] = []  # the requests of the call the device is making
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._device = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="faml-device")

    # -- the device thread ---------------------------------------------------------------------

    def prepare(self, crops) -> tuple[np.ndarray, ...]:
        """Face crops (uint8 RGB, any size) resized for each group as ``Predictor.preprocess``
        resizes them (call it off the event loop: it is CPU work)."""
        return tuple(self.predictor.preprocess(crops, group.input_size) for group in self.predictor.groups)

    def predict(self, images: tuple[np.ndarray, ...]) -> Prediction:
        """The ``Prediction`` of N prepared faces, in calls of the sizes compiled at start: each
        call's logits (padded rows too) decided at once (``Predictor.decide``, per face), so a
        call's size, not its requests, sets the compiled shapes and the work."""
        n = len(images[0])
        parts = []
        for start in range(0, n, self.max_batch):
            count = min(self.max_batch, n - start)
            size = next(s for s in self.sizes if s >= count)
            logits = np.zeros((self.predictor.num_members, size, self.predictor.config.model.num_classes), np.float32)
            for group, group_images in zip(self.predictor.groups, images):
                padded, _ = pad_batch(group_images[start : start + count], size)
                logits[group.members] = np.asarray(group.step(group.variables, padded))
            parts.append(sliced(self.predictor.decide(logits), 0, count))
        return joined(parts)

    def warm(self) -> None:
        """Compile every call size of every group (blocking: the server is not ready before)."""
        for group in self.predictor.groups:
            for size in self.sizes:
                blank = np.zeros((size, group.input_size, group.input_size, 3), np.uint8)
                np.asarray(group.step(group.variables, blank))
        for size in self.sizes:  # the decision's compiled calls, one per call size
            self.predict(
                tuple(np.zeros((size, g.input_size, g.input_size, 3), np.uint8) for g in self.predictor.groups)
            )
        logger.info(
            f"compiled calls of {', '.join(map(str, self.sizes))} face(s) for {len(self.predictor.groups)} group(s)"
        )

    async def in_device_thread(self, fn, *args):
        """``fn(*args)`` in the device's worker thread (maps, warm-up): the event loop goes on."""
        return await asyncio.get_running_loop().run_in_executor(self._device, fn, *args)

    # -- the event loop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Compile (in the device thread; the server answers /healthz meanwhile), then gather and
        run calls until ``stop``."""
        self._wake = asyncio.Event()
        await self.in_device_thread(self.warm)
        self._task = asyncio.create_task(self._run(), name="faml-batcher")
        self.ready = True
        self.warmed.set()

    def drain(self) -> None:
        """From now on, faces waiting go into a call at once (the server is stopping: the
        requests in flight are answered without waiting for company). On the event loop."""
        self._draining = True
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        """Answer the faces still waiting or in a call, then stop (the server has stopped taking
        requests). Stopped while compiling, it does not wait for the compilation to end."""
        self.ready = False
        self.drain()
        pending = [w.future for w in (*self._waiting, *self._in_call) if not w.future.done()]
        if pending and self._task is not None:
            self._wake.set()
            await asyncio.wait(pending)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for w in (*self._waiting, *self._in_call):  # never the case through the server: said, not left hanging
            if not w.future.done():
                w.future.set_exception(RuntimeError("the batcher stopped before this request's call"))
        self._device.shutdown(wait=self.warmed.is_set(), cancel_futures=True)

    @property
    def queued(self) -> int:
        """Faces waiting for a call (a request that timed out no longer counts)."""
        return sum(w.count for w in self._waiting if not w.future.done())

    async def submit(self, images: tuple[np.ndarray, ...]) -> Prediction:
        """The ``Prediction`` of N prepared faces (``prepare``), computed with other requests'."""
        if len(images[0]) == 0:
            empty = np.zeros((self.predictor.num_members, 0, self.predictor.config.model.num_classes), np.float32)
            return await self.in_device_thread(self.predictor.decide, empty)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(images, future, time.monotonic()))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            while not self._waiting:
                self._wake.clear()
                await self._wake.wait()
            deadline = self._waiting[0].arrived + self.max_wait
            while (
                self.queued < self.max_batch and not self._draining and (remaining := deadline - time.monotonic()) > 0
            ):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            self._waiting = [w for w in self._waiting if not w.future.done()]  # timed out: not computed
            taken, count = [], 0
            while self._waiting and (not taken or count + self._waiting[0].count <= self.max_batch):
                count += self._waiting[0].count
                taken.append(self._waiting.pop(0))
            if not taken:
                continue
            images = tuple(np.concatenate(parts) for parts in zip(*(w.images for w in taken)))
            started = time.monotonic()
            self._in_call = taken
            try:
                prediction = await self.in_device_thread(self.predict, images)
            except Exception as error:  # a bug: every request of the call answers 500, the server goes on
                logger.exception("the compiled call failed")
                for w in taken:
                    if not w.future.done():
                        w.future.set_exception(error)
                continue
            finally:
                self._in_call = []
            self.stats.calls += math.ceil(count / self.max_batch)
            self.stats.faces += count
            self.stats.requests += len(taken)
            self.stats.call_seconds += time.monotonic() - started
            start = 0
            for w in taken:
                if not w.future.done():
                    w.future.set_result(sliced(prediction, start, start + w.count))
                start += w.count

    def retry_after(self) -> int:
        """Whole seconds until the waiting faces have probably been through (at least 1)."""
        calls = math.ceil(self.queued / self.max_batch) + 1
        return max(1, math.ceil(calls * self.stats.mean_call_seconds()))
