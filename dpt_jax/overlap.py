"""The batches of `pipeline.run`, with decoding, the device and the results overlapped.

Worker threads decode the pictures of batch k+1 while the device runs batch k and a results
thread resizes and hands out batch k-1, within the pixel budget; the depth is bit for bit that
of decoding one picture at a time.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass

import numpy as np

from .pictures import decode
from .preprocess import to_network, to_picture


def padded_batch(n: int, batch_size: int, multiple: int = 1) -> int:
    """The batch a group of n pictures runs with: n rounded up to a power of two (at most batch_size), then
    to `multiple`."""
    b = 1
    while b < n:
        b *= 2
    b = min(b, max(batch_size, n))
    return -(-b // multiple) * multiple


def emit(callback, result, keep_depth=True):
    if callback is not None:
        callback(result)
    if not keep_depth:
        result.depth = None


def first_call(call, size_hw, batch: int, on_status):
    """`call()`, the model's first call at (batch, H, W), which compiles its program: awaited, said and timed
    on `on_status` (when given), as every run that compiles one says it."""
    import time

    if on_status is not None:
        on_status(f"compiling for {size_hw[0]}x{size_hw[1]} (batch {batch})")
    t0 = time.perf_counter()
    out = call()
    out.block_until_ready()
    if on_status is not None:
        on_status(f"compiled and ran {size_hw[0]}x{size_hw[1]} (batch {batch}) in {time.perf_counter() - t0:.1f} s")
    return out


def default_workers() -> int:
    """Decoding threads `run` uses by default: one per CPU this process may use, at most 4 (Pillow
    releases the GIL while decoding, resizing and rotating)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


class _Deferred:
    """A decode done in the calling thread when its result is asked for (`run(workers=0)`)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def result(self):
        return self.fn(*self.args)


@dataclass
class _Dispatched:
    """A batch on the device: its depth, the pictures it holds, its chunks back to picture size."""

    depth: object  # (b, H, W) device array, or None when every picture of the batch failed
    order: list  # source indices, in the batch's row order
    failures: list  # (source index, message) of the batch's pictures that failed to decode
    chunks: list  # (first row, end row, picture (h, w), pixels): rows resized back together
    resized: list  # device arrays (rows, h, w) of the chunks whose pixels are taken, in order


class Overlapped:
    """The batches of `run`, with decoding, the device and the results overlapped.

        decode batch k+1 (worker threads)  |  device: batch k  |  results of batch k-1 (results thread)

    Pixel budget: a picture's decoded pixels are taken when its decode is submitted and given back
    when its chunk is resized to the network size (or it fails); a depth chunk's pixels are taken
    when its resize to picture size is dispatched and given back after its pictures' on_result.
    Every take happens in this thread, in one fixed order (the inputs of batch k, then its depth
    chunks, then the inputs of batch k+1, ...), and a take that does not fit waits (by finishing
    the batches before it) rather than skipping ahead: whatever is held is released by work that
    needs no later take, so the budget holds, prefetch included, and nothing can deadlock. Chunk
    boundaries follow the sequential rule (consecutive pictures while their pixels fit the budget),
    not the timing, so every run compiles and runs the same programs: the results are identical
    whatever `workers` is, and on_result sees them in batch order (failures of a batch first).

    With workers, the depth maps are pulled to the host and handed to on_result by one results
    thread (writing files there overlaps the next batches; one thread keeps the order), which
    gives their pixels back; this thread then only waits for it when a take does not fit. With
    workers=0 everything runs in the calling thread.
    """

    def __init__(self, model, sources, slot, results, plan, *, batch_size, budget, workers, on_result,
                 keep_depth, on_status):
        self.model, self.sources, self.slot, self.results, self.plan = model, sources, slot, results, plan
        self.config = model.config
        self.batch_size, self.limit, self.workers = batch_size, budget, workers
        self.on_result, self.keep_depth, self.on_status = on_result, keep_depth, on_status
        self.held = 0  # pixels taken from the budget
        self.queue = [(k, m) for k, (_, members) in enumerate(plan) for m in members]  # input takes, in order
        self.next_in = 0  # first of `queue` not taken yet
        self.decodes: dict[int, object] = {}  # source index -> future of (picture, message)
        self.dispatched = 0  # batches sent to the device so far
        self.pending: list[_Dispatched] = []  # dispatched batches whose results are not all out, oldest first
        self.compiled: set = set()
        self.pool = self.results_thread = None
        self.lock = threading.Condition()  # guards `held`, `handed` and `failure` (the results thread gives back)
        self.handed = 0  # chunks handed to the results thread and not done yet
        self.failure: BaseException | None = None  # raised by on_result in the results thread
        self.handoff: queue.SimpleQueue = queue.SimpleQueue()

    def fits(self, px: int) -> bool:
        with self.lock:
            return self.held == 0 or self.held + px <= self.limit

    def give_back(self, px: int):
        with self.lock:
            self.held -= px
            self.lock.notify_all()

    def wait_for_results(self, px: int) -> bool:
        """Wait until `px` fits or the results thread has nothing left to give back; whether it fits."""
        with self.lock:
            while not (self.held == 0 or self.held + px <= self.limit) and self.handed and self.failure is None:
                self.lock.wait()
            if self.failure is not None:
                raise self.failure
            return self.held == 0 or self.held + px <= self.limit

    def run(self):
        from concurrent.futures import ThreadPoolExecutor

        if self.workers > 0:
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dpt-jax-decode")
            self.results_thread = threading.Thread(target=self.hand_out, name="dpt-jax-results", daemon=True)
            self.results_thread.start()
        try:
            self.pump()
            for k in range(len(self.plan)):
                batch = self.gather(k)
                self.pending.append(batch)
                self.dispatched = k + 1
                self.pump()  # this batch's depth chunks, then the next batch's decodes
                while len(self.pending) > 1:  # results of the batch before, while the device runs this one
                    self.finish(self.pending.pop(0))
                    self.pump()
            while self.pending:
                self.finish(self.pending.pop(0))
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
            if self.results_thread is not None:
                self.handoff.put(None)  # what was handed over is still handed out, then the thread ends
                self.results_thread.join()
        if self.failure is not None:
            raise self.failure

    def pump(self):
        """Take what fits from the budget, in the one fixed order: depth chunks of dispatched batches
        (their resizes are dispatched now, right behind their batch), then the next inputs (their
        decodes start now), up to the batch after the last dispatched one."""
        while True:
            batch = next((b for b in self.pending if len(b.resized) < len(b.chunks)), None)
            if batch is not None:
                if not self.fits(batch.chunks[len(batch.resized)][3]):
                    return
                self.take_chunk(batch)
                continue
            if self.next_in == len(self.queue):
                return
            k, m = self.queue[self.next_in]
            h, w = self.sources[m].size
            if k > self.dispatched or not self.fits(h * w):
                return
            self.take_input(m)

    def take_input(self, m):
        h, w = self.sources[m].size
        with self.lock:
            self.held += h * w
        self.next_in += 1
        submit = self.pool.submit if self.pool is not None else _Deferred
        self.decodes[m] = submit(decode, self.sources[m])

    def take_chunk(self, batch: _Dispatched):
        start, end, shape, px = batch.chunks[len(batch.resized)]
        with self.lock:
            self.held += px
        batch.resized.append(to_picture(self.config, batch.depth[start:end], shape))  # (end - start, h, w), dispatched

    def gather(self, k) -> _Dispatched:
        """Decode batch k (submitting what the budget did not let `pump` submit), resize it to the
        network size in chunks of at most `limit` picture pixels, and dispatch the model on it."""
        import jax.numpy as jnp

        size_hw, members = self.plan[k]
        inputs, order, failures = [], [], []  # network inputs (n_k, H, W, 3) and the sources they hold
        chunk: dict[tuple, list[tuple[int, np.ndarray]]] = {}  # one resize per (picture size, pixel type)
        chunk_px = 0
        shape_of = {}

        def flush():
            for g in chunk.values():
                inputs.append(to_network(self.config, jnp.asarray(np.stack([p for _, p in g])), size_hw))
                order.extend(m for m, _ in g)
                self.give_back(sum(self.sources[m].size[0] * self.sources[m].size[1] for m, _ in g))
            chunk.clear()

        for m in members:
            h, w = self.sources[m].size
            if chunk_px and chunk_px + h * w > self.limit:
                flush()
                chunk_px = 0
            while m not in self.decodes:
                self.pump()
                if m in self.decodes:
                    break
                if self.pending:
                    self.finish(self.pending.pop(0))  # give back what the batches before hold
                elif not self.wait_for_results(h * w):  # cannot happen (only this chunk is held, and it fits)
                    self.take_input(m)
            picture, message = self.decodes.pop(m).result()
            if message is not None:
                self.give_back(h * w)
                failures.append((m, message))
                continue
            shape_of[m] = picture.shape[:2]
            chunk.setdefault((picture.shape[:2], picture.dtype.str), []).append((m, picture))
            chunk_px += h * w
            del picture
        flush()
        if not order:
            return _Dispatched(None, [], failures, [], [])
        x = jnp.concatenate(inputs)  # (n, H, W, 3)
        inputs.clear()
        depth = self.apply(x, size_hw)  # (b, H, W)
        # Back to each picture's size, in chunks of consecutive pictures of one size within the budget.
        chunks, i = [], 0
        while i < len(order):
            ps = shape_of[order[i]]
            j, px = i + 1, ps[0] * ps[1]
            while j < len(order) and shape_of[order[j]] == ps and px + ps[0] * ps[1] <= self.limit:
                px += ps[0] * ps[1]
                j += 1
            chunks.append((i, j, ps, px))
            i = j
        return _Dispatched(depth, order, failures, chunks, [])

    def apply(self, x, size_hw):
        """The model on a batch (n, H, W, 3), padded up to a compiled batch size; dispatched, not awaited
        (except the first time a program is compiled, to time it)."""
        import jax.numpy as jnp

        n = x.shape[0]
        b = padded_batch(n, self.batch_size, self.model.num_devices)
        if b > n:  # pad so that a short last batch reuses a compiled program
            x = jnp.concatenate([x, jnp.zeros((b - n, *x.shape[1:]), x.dtype)], axis=0)
        if (b, *size_hw) in self.compiled:
            return self.model.apply(x)  # (b, H, W)
        self.compiled.add((b, *size_hw))
        return first_call(lambda: self.model.apply(x), size_hw, b, self.on_status)  # (b, H, W)

    def finish(self, batch: _Dispatched):
        """Hand out a dispatched batch's results: its failures, then each chunk's depth maps, pulled to
        the host (waiting for the device) and given to on_result (by the results thread, if any)."""
        for m, message in batch.failures:
            self.hand(self.emit, m, error=message)
        for c in range(len(batch.chunks)):
            if c == len(batch.resized):  # not taken by pump: wait for the chunks before to be given back
                self.wait_for_results(batch.chunks[c][3])
                self.take_chunk(batch)
            self.hand(self.emit_chunk, batch, c)

    def hand(self, fn, *args, **kw):
        if self.results_thread is None:
            return fn(*args, **kw)
        with self.lock:
            if self.failure is not None:
                raise self.failure
            self.handed += 1
        self.handoff.put((fn, args, kw))

    def hand_out(self):
        """The results thread: runs what `hand` gave it, in order, until None; after an error in
        on_result, only gives the pixels back (the calling thread raises the error)."""
        while (job := self.handoff.get()) is not None:
            fn, args, kw = job
            try:
                if self.failure is None:
                    fn(*args, **kw)
                elif fn == self.emit_chunk:
                    batch, c = args
                    batch.resized[c] = None
                    self.give_back(batch.chunks[c][3])
            except BaseException as e:  # noqa: BLE001 (handed to the calling thread)
                with self.lock:
                    self.failure = e
                if fn == self.emit_chunk:
                    self.give_back(args[0].chunks[args[1]][3])
            finally:
                with self.lock:
                    self.handed -= 1
                    self.lock.notify_all()

    def emit_chunk(self, batch: _Dispatched, c: int):
        start, end, _, px = batch.chunks[c]
        back = np.asarray(batch.resized[c])  # (end - start, h, w)
        batch.resized[c] = None
        for m, d in zip(batch.order[start:end], back):
            self.emit(m, depth=d)
        del back
        self.give_back(px)

    def emit(self, m, *, depth=None, error=None):
        result = self.results[self.slot[m]]
        result.depth, result.error = depth, error
        emit(self.on_result, result, self.keep_depth)
