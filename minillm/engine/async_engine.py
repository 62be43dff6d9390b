"""`AsyncEngine`: the `LLMEngine` driven by one background thread, fed and read by asyncio code.

The engine is synchronous and not thread-safe, so exactly one thread ever calls it: the engine
thread below. Request handlers (coroutines on the event loop) never touch the engine; they put
commands on a queue and read outputs from a `RequestStream`:

    handler ──add/abort──► command queue ──► engine thread: apply commands, step(), step(), ...
    handler ◄── RequestStream ◄── one call_soon_threadsafe per step ◄──┘

The thread steps while any request is unfinished and sleeps on the queue when none is, so the
model runs while the event loop serves HTTP (PyTorch releases the GIL inside its kernels).
Handing all of a step's outputs to the event loop in one callback keeps the cross-thread cost per
step, not per token. A stream keeps only the newest output: outputs are cumulative, so a handler
that falls behind skips straight to the latest text instead of replaying every token.

Failures stay with their requests: a request the engine refuses fails alone (`add_request`
raises), and the server validates every value before a request gets here, so that a step never
raises because of one request. If a step still raises (a bug), it fails the requests it was
running — the engine cannot say which one caused it — aborts them to free their blocks, logs it
as an error, and the loop goes on with the others.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import queue
import threading
import time
from dataclasses import dataclass

from minillm.engine.llm_engine import LLMEngine
from minillm.outputs import RequestOutput
from minillm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class RequestAborted(Exception):
    """The request was aborted (client gone, server shutting down) before it finished."""


class RequestStream:
    """What one request's handler reads: `async for output in stream` yields the newest
    cumulative `RequestOutput` each time the request progresses, the finished one last.

    `interval` (vLLM's --stream-interval) wakes the reader only once every `interval` new
    tokens (the first token and the end always): fewer, larger chunks cost the server and its
    clients less per token. A non-streaming reader passes None: it only wants the end.
    Lives on the event loop: only the loop's thread calls its methods.
    """

    def __init__(self, request_id: str, interval: int | None = 1, num_seqs: int = 1):
        self.request_id, self.interval, self.num_seqs = request_id, interval, num_seqs
        self.accepted: asyncio.Future = asyncio.get_running_loop().create_future()
        self.started = False  # has produced an output (so it is no longer waiting)
        self.finished = False
        self.last: RequestOutput | None = None  # the newest output returned to the reader
        self._latest: RequestOutput | None = None  # the newest output not read yet
        self._error: BaseException | None = None
        self._tokens_read = 0  # of the first sample, when the reader last read
        self._ready = asyncio.Event()  # set when the reader should look again

    def put(self, output: RequestOutput) -> None:
        self._latest = output
        new_tokens = len(output.outputs[0].token_ids) - self._tokens_read
        if output.finished or (self.interval is not None
                               and (not self.started or new_tokens >= self.interval)):
            self._ready.set()
        self.started = True

    def fail(self, error: BaseException) -> None:
        if not self.accepted.done():
            self.accepted.set_exception(error)
        self._error = error
        self._ready.set()

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        await self._ready.wait()
        if self._latest is None:  # woken by fail(); an output not read yet goes out first
            self.finished = True
            raise self._error
        if self._error is None:  # else stay awake: the error is the next thing to read
            self._ready.clear()
        self.last, self._latest = self._latest, None
        self._tokens_read = len(self.last.outputs[0].token_ids)
        self.finished = self.last.finished
        return self.last


@dataclass
class _Call:
    function: object  # called with the LLMEngine, on the engine thread
    result: asyncio.Future


@dataclass
class _Add:
    stream: RequestStream
    prompt: str | dict
    params: SamplingParams
    priority: int
    arrival_time: float


class AsyncEngine:
    """Owns an `LLMEngine` on a background thread. Create and use it inside a running event loop.

    >>> engine = AsyncEngine(LLMEngine(EngineConfig()))
    >>> engine.start()
    >>> stream = await engine.add_request("r1", "Once upon a time", SamplingParams())
    >>> async for output in stream: print(output.outputs[0].text)
    """

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.streams: dict[str, RequestStream] = {}  # unfinished requests, read on the loop only
        self.error: BaseException | None = None  # why the engine thread died, if it did
        self.refusal: str | None = None  # set by abort_all: why new requests are refused
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._was_idle = True

    # -- the event-loop side -------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Abort what is left, then end the engine thread."""
        self.abort_all("the server is shutting down")
        self._commands.put(None)
        self._thread.join(timeout)

    def abort_all(self, reason: str) -> None:
        """Abort every request (its stream raises `RequestAborted(reason)`) and refuse new ones
        the same way: the server is shutting down."""
        self.refusal = reason
        for request_id in list(self.streams):
            self.abort(request_id, RequestAborted(reason))

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def num_waiting(self) -> int:
        """Sequences (a request asks for `n`) accepted that have produced no output yet (queued
        or in their prefill)."""
        return sum(stream.num_seqs for stream in self.streams.values() if not stream.started)

    async def add_request(self, request_id: str, prompt: str | dict, params: SamplingParams,
                          priority: int = 0, arrival_time: float | None = None,
                          stream_interval: int | None = 1) -> RequestStream:
        """Queue a request; raises ValueError if the engine refuses it (nothing is left behind).
        `stream_interval`: see `RequestStream`."""
        if not self.is_alive:
            raise RuntimeError(f"the engine loop is not running: {self.error!r}")
        if self.refusal is not None:
            raise RequestAborted(self.refusal)
        if request_id in self.streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        stream = RequestStream(request_id, stream_interval, params.num_samples)  # best_of runs
        self.streams[request_id] = stream
        self._commands.put(_Add(stream, prompt, params, priority,
                                arrival_time or time.monotonic()))
        try:
            await stream.accepted
        except BaseException:
            self.abort(request_id)  # also when the handler is cancelled while waiting
            raise
        return stream

    async def call(self, function):
        """`function(engine)` run on the engine thread between two steps (the engine is not
        thread-safe: this is how the server reads it, e.g. `snapshot`); returns its result."""
        if not self.is_alive:
            raise RuntimeError(f"the engine loop is not running: {self.error!r}")
        result = self._loop.create_future()
        self._commands.put(_Call(function, result))
        return await result

    def abort(self, request_id: str, error: BaseException | None = None) -> None:
        """Stop a request and free its KV blocks; its stream, if still read, raises `error`."""
        stream = self.streams.pop(request_id, None)
        if stream is None:
            return  # finished or aborted already
        stream.fail(error or RequestAborted(f"request {request_id} was aborted"))
        self._commands.put(request_id)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self.streams.get(output.request_id)
            if stream is None:
                continue  # aborted while the step ran
            stream.put(output)
            if output.finished:
                del self.streams[output.request_id]

    def _accept(self, stream: RequestStream, error: BaseException | None) -> None:
        if stream.accepted.done():
            return  # aborted (and so failed) before the engine thread got to it
        if error is None:
            stream.accepted.set_result(None)
        else:
            self.streams.pop(stream.request_id, None)
            stream.fail(error)

    def _fail(self, request_ids: list[str] | None, error: BaseException) -> None:
        """Fail these requests (all of them if None) with `error`."""
        for request_id in list(self.streams) if request_ids is None else request_ids:
            stream = self.streams.pop(request_id, None)
            if stream is not None:
                stream.fail(error)

    # -- the engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._apply_commands(block=self._idle()):
                self._step()
        except BaseException as e:  # a bug in the loop itself: fail everyone, /health says 503
            logger.exception("the engine loop died")
            self.error = e
            self._call(self._fail, None, e)

    def _idle(self) -> bool:
        """True when no request is left; on the way from busy to idle, freed memory goes back."""
        idle = not self.engine.has_unfinished_requests()
        if idle and not self._was_idle:
            return_free_memory_to_os()
        self._was_idle = idle
        return idle

    def _apply_commands(self, block: bool) -> bool:
        """Add and abort what the handlers asked for. Returns False when told to stop."""
        try:
            command = self._commands.get(block=block)
            while True:
                if command is None:
                    return False
                self._apply(command)
                command = self._commands.get_nowait()
        except queue.Empty:
            return True

    def _apply(self, command: _Add | _Call | str) -> None:
        if isinstance(command, str):
            self.engine.abort_request(command)
            return
        if isinstance(command, _Call):
            try:
                self._call(_resolve, command.result, command.function(self.engine), None)
            except Exception as e:
                self._call(_resolve, command.result, None, e)
            return
        if command.stream.accepted.done():  # aborted while queued: never reaches the engine
            return
        try:
            self.engine.add_request(command.stream.request_id, command.prompt, command.params,
                                    command.priority, command.arrival_time)
            self._call(self._accept, command.stream, None)
        except ValueError as e:
            self._call(self._accept, command.stream, e)

    def _step(self) -> None:
        """One engine step (idle steps refresh the statistics); outputs go to the loop at once."""
        try:
            outputs = self.engine.step()
        except Exception as e:  # the last resort: the server should have refused the culprit
            running = list(dict.fromkeys(s.request_id for s in self.engine.scheduler.running))
            logger.exception("engine step failed: failing all %d running requests %s (the "
                             "engine cannot tell which one caused it)", len(running), running)
            for request_id in running:
                self.engine.abort_request(request_id)
            self._call(self._fail, running, e)
            return
        if outputs:
            self._call(self._deliver, outputs)

    def _call(self, callback, *args) -> None:
        """Run `callback(*args)` on the event loop (thread-safe)."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)


def _load_libc():
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def return_free_memory_to_os() -> None:
    """glibc keeps the heap pages a busy step freed (tokenizer buffers, tensors, oneDNN
    scratch), so a server's RSS would stay at its peak and creep up with fragmentation;
    `malloc_trim(0)` hands whole free pages back. Called when the engine goes idle, where its
    few milliseconds cost no request anything. A no-op off glibc (musl, macOS)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _resolve(future: asyncio.Future, result, error: BaseException | None) -> None:
    if not future.done():  # not cancelled meanwhile
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
