"""Dynamic batching for servers that have none of their own (the KServe model server, a Ray
replica): requests that arrive within ``max_queue_delay`` of each other are stacked along the
batch dim, run as one, and split again, as Triton's dynamic batcher does.

A batch is formed only when an instance is free, so while every instance is busy requests
queue up and the next batch is larger; it is sent as soon as it reaches ``max_batch`` or the
largest preferred size, or when the first request in it has waited ``max_queue_delay``.
Only requests whose non-batch dims match are stacked together.

:class:`ModelRequests` is how those servers run a model's requests: checked, then batched or
run alone.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import Executor
from typing import Callable, Mapping, Sequence

import numpy as np

from kilnrt.errors import ErrorCode, KilnError

Feeds = Mapping[str, np.ndarray]


def stack_feeds(feeds: list[Feeds]) -> dict[str, np.ndarray]:
    """Requests of the same inputs stacked along the batch dim, to run as one."""
    return {n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]}


def split_outputs(outputs: Mapping[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """The outputs of requests stacked along the batch dim, cut back into each one's rows.  An
    output whose first dim is not the stacked batch (summed over it, or sized by the data)
    cannot be cut: that is an error for every request of the batch, not a wrong answer.  An
    output whose later dims depend on the batch (N, N) cannot be cut either, and its shape
    here does not tell: such a model is refused dynamic batching at start
    (``ServedModel.check_dynamic_batching``)."""
    total = sum(sizes)
    wrong = {n: list(v.shape) for n, v in outputs.items() if not v.shape or v.shape[0] != total}
    if wrong:
        raise KilnError(ErrorCode.RUNTIME, f"{len(sizes)} requests of {total} rows were batched together, but "
                                           f"output(s) {wrong} do not have {total} rows to split among them; "
                                           "serve this model without dynamic batching")
    bounds = np.cumsum([0, *sizes])
    return [{n: v[a:b] for n, v in outputs.items()} for a, b in zip(bounds[:-1], bounds[1:])]


@dataclasses.dataclass(eq=False)          # identity: two requests are never 'equal'
class _Pending:
    feeds: Feeds
    batch: int
    key: tuple
    future: asyncio.Future
    arrived: float


class DynamicBatcher:
    """``await batcher.submit(feeds, batch)`` -> that request's outputs."""

    def __init__(self, run: Callable[[Feeds], dict[str, np.ndarray]], *, max_batch: int, instances: int,
                 max_queue_delay_s: float, preferred_batch_sizes: tuple[int, ...] = (),
                 executor: Executor | None = None) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_queue_delay_s = max_queue_delay_s
        self.target = min(max(preferred_batch_sizes), max_batch) if preferred_batch_sizes else max_batch
        self._executor = executor
        self._instances = instances
        self._queue: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._free: asyncio.Semaphore | None = None
        self._task: asyncio.Task | None = None
        self.batches_run = 0               # statistics: batches and requests run
        self.requests_run = 0

    def _start(self) -> None:
        self._wakeup = asyncio.Event()
        self._free = asyncio.Semaphore(self._instances)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, feeds: Feeds, batch: int) -> dict[str, np.ndarray]:
        if self._task is None or self._task.done():
            self._start()
        key = tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(feeds.items()))
        item = _Pending(feeds, batch, key, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._queue.append(item)
        self._wakeup.set()
        return await item.future

    def _take(self) -> list[_Pending]:
        """The head request and the next ones of its shape that fit in ``target`` (queue order)."""
        head = self._queue[0]
        taken, rest, total = [], [], 0
        for item in self._queue:
            if item.key == head.key and total + item.batch <= self.target:
                taken.append(item)
                total += item.batch
            else:
                rest.append(item)
        if not taken:                    # the head alone is over the preferred size: send it alone
            taken, rest = [head], self._queue[1:]
        self._queue = rest
        return taken

    def _ready_size(self, key: tuple) -> int:
        return sum(i.batch for i in self._queue if i.key == key)

    async def _loop(self) -> None:
        while True:
            await self._free.acquire()
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            head = self._queue[0]
            deadline = head.arrived + self.max_queue_delay_s
            while self._ready_size(head.key) < self.target:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
            items = [i for i in self._take() if not i.future.cancelled()]
            if not items:
                self._free.release()
                continue
            asyncio.get_running_loop().create_task(self._dispatch(items))

    async def _dispatch(self, items: list[_Pending]) -> None:
        try:
            if len(items) == 1:
                feeds = items[0].feeds
            else:
                feeds = stack_feeds([i.feeds for i in items])
            loop = asyncio.get_running_loop()
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, feeds)
            except Exception as exc:      # every request of the batch gets the error
                for i in items:
                    if not i.future.done():
                        i.future.set_exception(exc)
                return
            self.batches_run += 1
            self.requests_run += len(items)
            try:
                parts = split_outputs(outputs, [i.batch for i in items]) if len(items) > 1 else [outputs]
            except KilnError as exc:
                parts = [exc] * len(items)
            for i, part in zip(items, parts):
                if not i.future.done():
                    (i.future.set_exception if isinstance(part, Exception) else i.future.set_result)(part)
        finally:
            self._free.release()
            self._wakeup.set()


class ModelRequests:
    """A served model's requests on a server without a batcher of its own (KServe's model
    server, a Ray replica): each is checked first, and one the model cannot take never runs;
    then it is stacked with others by a :class:`DynamicBatcher` where the model is batched
    dynamically, or run alone on ``executor``.  ``model`` is a
    :class:`~kilnrt.serve.models.ServedModel`.  ``metrics`` (``request(model, batch)``, ``failure(model, reason)``,
    ``batch(model, size)``: :class:`~kilnrt.serve.metrics.ServeMetrics` or Ray's) counts the
    accepted and refused requests and each run's batch size."""

    def __init__(self, model, *, instances: int, executor: Executor | None, metrics=None) -> None:
        self.model = model
        self.metrics = metrics
        self._executor = executor
        self.batcher = None
        s = model.settings
        if s.dynamic_batching and model.max_batch > 0:
            model.check_dynamic_batching()
            self.batcher = DynamicBatcher(self._counted_run, max_batch=model.max_batch, instances=instances,
                                          max_queue_delay_s=s.max_queue_delay_us / 1e6,
                                          preferred_batch_sizes=model.preferred_batch_sizes, executor=executor)

    def _counted_run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        if self.metrics is not None:
            self.metrics.batch(self.model.name, next(iter(feeds.values())).shape[0] if self.model.max_batch else 1)
        return self.model.run(feeds)

    async def infer(self, feeds: Feeds, outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """The ``outputs`` named (all where none are) of one request's ``feeds``.  A request the
        model cannot take (an unknown input or output, a wrong shape, ...) raises
        :class:`~kilnrt.serve.models.RequestError` before anything runs, counted as a failure
        (reason ``invalid_request``); one that passes the checks is counted as accepted."""
        from kilnrt.serve.models import RequestError

        try:
            batch = self.model.check_request(feeds, outputs)
        except RequestError:
            if self.metrics is not None:
                self.metrics.failure(self.model.name, "invalid_request")
            raise
        if self.metrics is not None:
            self.metrics.request(self.model.name, batch)
        if self.batcher is not None:
            result = await self.batcher.submit(feeds, batch)
        else:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._counted_run, feeds)
        return {n: result[n] for n in outputs} if outputs else result
