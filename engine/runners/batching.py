"""Batching across sessions in one process: concurrent requests share UNet calls, each keeps its own results.

How it works: every request runs its own sampler loop (its own scheduler, latents, word scales, maps, progress) in
its own thread, exactly as it would alone. Its UNet calls go to `Batcher.runner`, a stand-in with the runner's
interface. A worker thread collects the calls that arrive close together (until none came for `window_ms`, at
most 10 windows, or until every request in flight has one waiting), stacks the ones that fit together along the
batch dimension and makes ONE call to the real runner, then hands each request its own rows of noise and maps.

Calls fit together when the latent shape, dtype and map capture agree. A one-row call (no classifier-free
guidance) is never stacked: oneDNN convolves a batch of one with other kernels than a larger batch, so that row
would differ in the last bit. Steps and schedulers may differ: the UNet takes one timestep per batch row. Layout of a stacked call: the rows of each call that are not map rows (the
unconditional half), then every call's map rows (its last `cond_rows` rows, the conditional half), so the
runner's "maps of the last cond_rows rows" covers all requests at once. Word scales become one (B, seq) matrix,
ones where a request has none (x * 1.0 == x, exact).

Bit-identity: a request's image and maps are bit-identical to running it alone when every kernel gives a call's
rows (2 or more: one-row calls are never stacked) the same bits alone and inside a larger stack. Convolutions
(oneDNN) and the attention do. Linear layers run MKL's SGEMM, which needs its strict reproducibility mode
(MKL_CBWR=AUTO,STRICT, set by `engine/__init__` before torch loads) so that rows do not depend on how the work is
split between threads. On AMD (EPYC, Zen 3, AVX2) even strict mode sends GEMMs of 1 and of 2-3 rows to other
kernels than GEMMs of 4 rows and more; the UNet's timestep embedding is a Linear on one row per batch row, so a
2-row call and the same call stacked to 4+ rows differ in the last bit. No MKL or oneDNN setting changes that
(tried: MKL_CBWR=<ISA>,STRICT / COMPATIBLE, MKL_ENABLE_INSTRUCTIONS, MKL_DEBUG_CPU_TYPE, MKL_DYNAMIC, 1 thread,
ONEDNN_MAX_CPU_ISA, torch.backends.mkldnn, flush-denormal); on the Intel Xeons CI first ran on, every row count
gave the same bits. `exact_rows()` probes the GEMM and convolution at start; where rows are not exact (AMD, MKL
strict mode not in effect, a CUDA device, or $ATTUNE_ROWS_EXACT=0, which forces this branch for tests), the
batcher runs each call on its own (serially) unless built with `require_exact=False` ($ATTUNE_BATCH_EXACT=0),
which trades the last bits for throughput (untested on GPUs here).
ONNX Runtime: the noise output is row-exact (MLAS GEMMs and convolutions, from 2 rows up; AMD and Intel alike).
The maps are too when the graph takes the mean over heads as a MatMul (exports that write "maps_row_exact" in their
manifest); older exports used ReduceMean, which adds the heads in another order for one map row than for several
(~1e-7 apart), so their calls run one by one (`exact_rows_of`).
Lanes (ONNX Runtime on a CPU with 2+ cores, `lanes_for`): a group's calls are split into 2 runner calls of about
equal rows that run at once, each call kept whole, on sessions with cores // lanes intra-op threads (the side graphs
too). On the built-in model a 2-thread ORT call uses its second core poorly; two 1-thread calls keep both busy.
MLAS splits outputs, not sums, between threads, so the bits do not depend on the thread count (tested).
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from engine.errors import AttuneError
from engine.protocols import AddedConditioning

BATCHABLE_RUNNERS = ("torch", "onnx")
DEFAULT_WINDOW_MS = 5.0
MAX_WAIT_WINDOWS = 10  # the longest a call waits for others: 10 windows
DEFAULT_MAX_ROWS = 16  # 8 requests with classifier-free guidance
WINDOW_ENV = "ATTUNE_BATCH_MS"  # set (e.g. 5) to batch in every Attune built without batch_window_ms
EXACT_ENV = "ATTUNE_BATCH_EXACT"  # "0": stack even where rows are not bit-exact (GPUs: throughput over last bits)
ROWS_EXACT_ENV = "ATTUNE_ROWS_EXACT"  # "0": treat rows as not bit-exact whatever the probe says (tests the fallback)
LANES_ENV = "ATTUNE_BATCH_LANES"  # calls of one group run in this many runner calls at once (ONNX on the CPU)
MAX_DEFAULT_LANES = 2


def window_from_env() -> float | None:
    """$ATTUNE_BATCH_MS as a float (ms), None when unset/empty; AttuneError when it is not a number >= 0."""
    text = os.environ.get(WINDOW_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise AttuneError(f"{WINDOW_ENV} must be a number of milliseconds, not '{text}'.") from None
    if not value >= 0:
        raise AttuneError(f"{WINDOW_ENV} must be 0 or more milliseconds, got {text}.")
    return value


def rows_exact_forced_off() -> bool:
    """True when $ATTUNE_ROWS_EXACT is "0"; unset, empty or "auto": probe. AttuneError for any other value."""
    text = os.environ.get(ROWS_EXACT_ENV, "").strip().lower()
    if text in ("", "auto"):
        return False
    if text == "0":
        return True
    raise AttuneError(f"{ROWS_EXACT_ENV} must be 0 (treat rows as not bit-exact) or auto, not '{text}'.")


def exact_rows(device: str = "cpu") -> bool:
    """True when a Linear and a convolution give a call's rows (2 or more) the same bits alone as at any place in a
    larger stack (see the module doc). Probes this machine; $ATTUNE_ROWS_EXACT is applied by `exact_rows_of`."""
    import torch

    if not str(device).startswith("cpu"):
        return False  # cuBLAS picks kernels by shape; not checked, so not promised
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(320, 256, generator=gen)
    x = torch.randn(16, 256, generator=gen)
    stacked = torch.nn.functional.linear(x, weight)
    # calls of 2-4 rows at the front and inside the stack; stacks of 5 and 8 rows too
    linear = all(torch.equal(torch.nn.functional.linear(x[start : start + rows], weight),
                             stacked[start : start + rows]) for rows in (2, 3, 4, 5, 8) for start in (0, 6))
    kernel = torch.randn(32, 16, 3, 3, generator=gen)
    images = torch.randn(8, 16, 8, 8, generator=gen)
    convolved = torch.nn.functional.conv2d(images, kernel, padding=1)
    conv = all(torch.equal(torch.nn.functional.conv2d(images[start : start + rows], kernel, padding=1),
                           convolved[start : start + rows]) for rows in (2, 3, 6) for start in (0, 2))
    return linear and conv


def lanes_for(runner) -> int:
    """How many runner calls one group of calls is split into, run at once: $ATTUNE_BATCH_LANES, else 2 for ONNX
    Runtime on a CPU with 2+ cores, 1 otherwise. Why: ORT's intra-op threads speed up one small UNet call little
    (2 threads: ~10% less wall time for ~80% more CPU on the built-in model), while two calls side by side keep
    both cores busy. ORT sessions take concurrent runs; PyTorch calls stay one at a time (its threads are shared)."""
    text = os.environ.get(LANES_ENV, "").strip()
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            raise AttuneError(f"{LANES_ENV} must be a whole number of lanes, not '{text}'.") from None
    if runner.name != "onnx" or not str(runner.device).startswith("cpu"):
        return 1
    from engine.model.ort_sessions import usable_cores

    return max(1, min(MAX_DEFAULT_LANES, usable_cores()))


def share_cores(runner, lanes: int) -> None:
    """Give each lane its share of the cores: an ONNX runner's intra-op threads become cores // lanes (unless
    $ATTUNE_ORT_THREADS sets them). Lanes on a session with more threads than that fight over the cores: measured
    here, two 6-row calls side by side took ~10% more CPU on a 2-thread session than on a 1-thread one."""
    from engine.model.onnx_components import OnnxComponents
    from engine.model.ort_sessions import default_threads
    from engine.runners.onnx import OnnxUNetRunner

    if not isinstance(runner, (OnnxUNetRunner, OnnxComponents)) or os.environ.get("ATTUNE_ORT_THREADS"):
        return  # only ONNX Runtime sessions have intra-op threads to share
    runner.set_threads(max(1, default_threads() // lanes))


def split_into_lanes(group: list, lanes: int) -> list[list]:
    """The group's calls in at most `lanes` parts of about equal rows, each call whole and in its order."""
    lanes = max(1, min(int(lanes), len(group)))
    total = sum(c.rows for c in group)
    parts: list[list] = [[]]
    done = 0
    for call in group:
        # start the next part once this one holds its share of the rows (and calls are left for the rest)
        if parts[-1] and len(parts) < lanes and done >= total * len(parts) / lanes:
            parts.append([])
        parts[-1].append(call)
        done += call.rows
    return parts


def exact_rows_of(runner) -> bool:
    """Whether stacking this runner's calls keeps every row's bits (see the module doc)."""
    if rows_exact_forced_off():
        return False
    if runner.name == "onnx":
        return bool(getattr(runner, "row_exact", False))
    return exact_rows(runner.device)


@dataclass(eq=False)  # calls are compared by identity (their arrays have no truth value)
class _Call:
    sample: object
    timestep: object
    embeddings: object
    key_scale: object
    value_scale: object
    map_rows: int  # rows at the end of this call whose maps are wanted (0 = no maps)
    added: AddedConditioning | None = None  # SDXL's pooled embedding and size ids, one row per sample row
    arrived: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple | None = None
    error: BaseException | None = None

    @property
    def rows(self) -> int:
        return int(self.sample.shape[0])

    def key(self) -> tuple:
        s, e = self.sample, self.embeddings
        return (tuple(s.shape[1:]), s.dtype, str(s.device), tuple(e.shape[1:]), e.dtype, self.map_rows > 0,
                self.added is not None)

    @property
    def stackable(self) -> bool:
        return self.rows >= 2  # see the module doc: a batch of one runs other convolution kernels


class _RunnerStandIn:
    """What a request's sampler loop sees as its runner: same interface, calls go through the batcher."""

    def __init__(self, batcher: "Batcher") -> None:
        self._batcher = batcher
        self.name = batcher.inner.name
        self.device = batcher.inner.device
        self.in_channels = batcher.inner.in_channels

    def __call__(self, sample, timestep, encoder_hidden_states, *, key_scale=None, value_scale=None,
                 capture_maps=False, cond_rows=0, added: AddedConditioning | None = None):
        rows = int(cond_rows) if capture_maps else 0
        return self._batcher.submit(_Call(sample, timestep, encoder_hidden_states, key_scale, value_scale, rows,
                                          added))

    def release_memory(self) -> None:  # the engine releases the real runner's memory
        pass

    def close(self) -> None:  # the engine closes the real runner
        pass


class Batcher:
    """Owns the calls to one runner for every request in flight. Thread-safe; `run(fn)` wraps one request."""

    def __init__(self, runner, *, window_ms: float = DEFAULT_WINDOW_MS, max_rows: int = DEFAULT_MAX_ROWS,
                 require_exact: bool | None = None, lanes: int | None = None) -> None:
        if runner.name not in BATCHABLE_RUNNERS:
            raise AttuneError(f"The {runner.name} runner cannot be batched (only {', '.join(BATCHABLE_RUNNERS)}).")
        self.inner = runner
        self.window_s = max(0.0, float(window_ms)) / 1000.0
        self.max_rows = max(1, int(max_rows))
        if require_exact is None:
            require_exact = os.environ.get(EXACT_ENV, "1").strip() != "0"
        self.exact = exact_rows_of(runner)
        # Not row-exact: one call at a time, so results stay those of a solo run.
        self.stacking = self.exact or not require_exact
        # Lanes: a group's calls split into runner calls that run at once (see lanes_for). Each call keeps its rows
        # together, so its bits are those of any stack it is in.
        self.lanes = (lanes_for(runner) if lanes is None else max(1, int(lanes))) if self.stacking else 1
        if self.lanes > 1:
            share_cores(runner, self.lanes)
        self._lane_pool = None
        self.runner = _RunnerStandIn(self)
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._active = 0  # requests inside run()
        self._closed = False
        self.stats = {"unet_calls": 0, "stacked_calls": 0, "rows": 0, "max_requests": 0, "groups": 0}
        self._worker = threading.Thread(target=self._loop, name="attune-batcher", daemon=True)
        self._worker.start()

    # ---- requests -------------------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return self._active

    def run(self, fn):
        """fn() is one request (generate or inpaint); while it runs, the worker waits for its UNet calls."""
        with self._cond:
            if self._closed:
                raise AttuneError("The engine is closed.")
            self._active += 1
        try:
            return fn()
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()  # the worker may be waiting for this request's next call

    def run_elsewhere(self, fn):
        """fn() inside run() whose UNet calls go to another runner: the worker stops waiting for this request."""
        with self._cond:
            self._active -= 1
            self._cond.notify_all()
        try:
            return fn()
        finally:
            with self._cond:
                self._active += 1

    @contextmanager
    def request(self):
        """One request (generate or inpaint) runs inside: while it runs, the worker waits for its UNet calls."""
        with self._cond:
            if self._closed:
                raise AttuneError("The engine is closed.")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()  # the worker may be waiting for this request's next call

    @contextmanager
    def elsewhere(self):
        """Inside request(): UNet calls that go to another runner; the worker stops waiting for this request."""
        with self._cond:
            self._active -= 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._active += 1

    def submit(self, call: _Call):
        with self._cond:
            if self._closed:
                raise AttuneError("The engine is closed.")
            self._pending.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout=5)
        if self._lane_pool is not None:
            self._lane_pool.shutdown(wait=False)

    # ---- worker ---------------------------------------------------------------------------------------------
    def _take(self) -> list[_Call] | None:
        """Wait for calls, then the window, then pick the group of the oldest call (up to max_rows rows)."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                for call in self._pending:
                    call.error = AttuneError("The engine was closed during this image.")
                    call.done.set()
                self._pending.clear()
                return None
            # The window restarts with each new call (requests come back from their scheduler steps a few ms
            # apart), up to MAX_WAIT_WINDOWS windows after the first; no wait once every request has a call here.
            latest = self._pending[0].arrived + MAX_WAIT_WINDOWS * self.window_s
            while self.stacking and len(self._pending) < self._active and not self._closed:
                left = min(self._pending[-1].arrived + self.window_s, latest) - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            first = self._pending[0]
            group, rows = [first], first.rows
            if self.stacking and first.stackable:
                key = first.key()
                for call in self._pending[1:]:
                    if call.stackable and call.key() == key and rows + call.rows <= self.max_rows:
                        group.append(call)
                        rows += call.rows
            for call in group:
                self._pending.remove(call)
            return group

    def _loop(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            try:
                results = self._run_group(group)
            except BaseException as error:  # every request of the call sees the failure; the worker goes on
                for call in group:
                    call.error = error
                    call.done.set()
                continue
            for call, result in zip(group, results):
                call.result = result
                call.done.set()

    def _run_group(self, group: list[_Call]) -> list[tuple]:
        """One group (the calls taken together; max_requests counts them) in up to `lanes` runner calls at once."""
        self.stats["groups"] += 1
        self.stats["rows"] += sum(c.rows for c in group)
        self.stats["max_requests"] = max(self.stats["max_requests"], len(group))
        parts = split_into_lanes(group, self.lanes)
        if len(parts) == 1:
            return self._run_part(group)
        if self._lane_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._lane_pool = ThreadPoolExecutor(max_workers=self.lanes - 1, thread_name_prefix="attune-lane")
        others = [self._lane_pool.submit(self._run_part, part) for part in parts[1:]]
        results = self._run_part(parts[0])
        for future in others:  # a failure in any part fails the whole group (see _loop)
            results += future.result()
        return results

    def _run_part(self, part: list[_Call]) -> list[tuple]:
        with self._cond:  # stats from several lanes
            self.stats["unet_calls"] += 1
            self.stats["stacked_calls"] += len(part) > 1
        if len(part) == 1:
            c = part[0]
            return [self.inner(c.sample, c.timestep, c.embeddings, key_scale=c.key_scale,
                               value_scale=c.value_scale, capture_maps=c.map_rows > 0, cond_rows=c.map_rows,
                               added=c.added)]
        return stacked_call(self.inner, part)


def _row_timesteps(call: _Call) -> np.ndarray:
    t = np.asarray(call.timestep, dtype=np.float32).reshape(-1)
    return np.broadcast_to(t, (call.rows,)) if t.size == 1 else t


def stacked_call(runner, group: list[_Call]) -> list[tuple]:
    """One runner call for several requests' calls; returns each call's (noise, maps) rows (numpy, as the sampler's)."""
    order: list[tuple[int, int]] = []  # (call number, row) in stacked order
    for n, c in enumerate(group):
        order += [(n, r) for r in range(c.rows - c.map_rows)]
    for n, c in enumerate(group):
        order += [(n, r) for r in range(c.rows - c.map_rows, c.rows)]

    def stack(get):
        return np.concatenate([np.asarray(get(group[n]))[r : r + 1] for n, r in order])

    def stack_scale(attr):
        if all(getattr(c, attr) is None for c in group):
            return None
        parts = []
        for n, r in order:
            s = getattr(group[n], attr)
            if s is None:
                ref = group[n].embeddings
                parts.append(np.ones((1, ref.shape[1]), dtype=ref.dtype))
            else:
                parts.append(np.asarray(s)[r : r + 1])
        return np.concatenate(parts)

    map_rows = sum(c.map_rows for c in group)
    added = None
    if group[0].added is not None:  # one model: every call has it (the calls' key says so)
        added = AddedConditioning(stack(lambda c: c.added.text_embeds), stack(lambda c: c.added.time_ids))
    noise, maps = runner(stack(lambda c: c.sample), stack(_row_timesteps), stack(lambda c: c.embeddings),
                         key_scale=stack_scale("key_scale"), value_scale=stack_scale("value_scale"),
                         capture_maps=map_rows > 0, cond_rows=map_rows, added=added)
    position = {nr: i for i, nr in enumerate(order)}
    first_map_row = len(order) - map_rows
    results = []
    for n, c in enumerate(group):
        rows = [position[(n, r)] for r in range(c.rows)]
        own_noise = noise[rows]
        own_maps = {}
        if c.map_rows:
            m_rows = [position[(n, r)] - first_map_row for r in range(c.rows - c.map_rows, c.rows)]
            own_maps = {name: value[m_rows] for name, value in maps.items()}
        results.append((own_noise, own_maps))
    return results

