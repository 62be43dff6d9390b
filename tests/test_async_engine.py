"""AsyncEngine: the engine thread keeps going when one request fails, and frees what it held."""
from __future__ import annotations

import asyncio

import pytest

from minillm.config import EngineConfig
from minillm.engine.async_engine import AsyncEngine, RequestAborted, RequestStream
from minillm.engine.llm_engine import LLMEngine
from minillm.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6)


@pytest.fixture
def engine(llama_checkpoint):
    return LLMEngine(EngineConfig(model=str(llama_checkpoint), max_model_len=128))


async def final(stream):
    async for output in stream:
        pass
    return output


def test_streams_match_the_engine(engine):
    async def main():
        loop = AsyncEngine(engine)
        loop.start()
        streams = [await loop.add_request(str(i), f"prompt {i}", GREEDY) for i in range(4)]
        outputs = await asyncio.gather(*(final(s) for s in streams))
        loop.stop()
        return outputs

    outputs = asyncio.run(main())
    assert all(o.finished and len(o.outputs[0].token_ids) == 6 for o in outputs)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_a_refused_request_fails_alone(engine):
    async def main():
        loop = AsyncEngine(engine)
        loop.start()
        good = await loop.add_request("good", "hello", GREEDY)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            await loop.add_request("bad", {"prompt_token_ids": [10**6]}, GREEDY)
        output = await final(good)
        loop.stop()
        return output

    assert asyncio.run(main()).outputs[0].finish_reason == "length"


def test_a_failing_step_fails_its_requests_and_the_loop_goes_on(engine, monkeypatch):
    run = engine.runner.run
    calls = []

    def fail_once(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return run(*args)

    monkeypatch.setattr(engine.runner, "run", fail_once)

    async def main():
        loop = AsyncEngine(engine)
        loop.start()
        victim = await loop.add_request("victim", "hello", GREEDY)
        with pytest.raises(RuntimeError, match="injected"):
            await final(victim)
        later = await final(await loop.add_request("later", "hello", GREEDY))
        loop.stop()
        return later

    later = asyncio.run(main())
    assert later.outputs[0].finish_reason == "length"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_abort_frees_blocks_and_ends_the_stream(engine):
    async def main():
        loop = AsyncEngine(engine)
        loop.start()
        stream = await loop.add_request("r", "hello", SamplingParams(max_tokens=100,
                                                                      ignore_eos=True))
        await stream.__anext__()
        loop.abort("r")
        with pytest.raises(RequestAborted):
            await final(stream)
        loop.stop()  # joins the engine thread, which applies the abort first

    asyncio.run(main())
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_stream_interval_batches_tokens(engine):
    async def main():
        loop = AsyncEngine(engine)
        loop.start()
        params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
        stream = await loop.add_request("r", "hello", params, stream_interval=4)
        # wait until the engine is done, so every token is there to batch
        seen = [len(o.outputs[0].token_ids) async for o in stream]
        whole = await final(await loop.add_request("w", "hello", params, stream_interval=None))
        loop.stop()
        return seen, whole

    seen, whole = asyncio.run(main())
    assert seen[0] == 1 and seen[-1] == 10  # the first token at once, the end always
    assert all(b - a >= 4 for a, b in zip(seen, seen[1:-1]))
    assert whole.finished


def test_waiting_is_counted_in_sequences(engine):
    """A request for n samples waits as n sequences, until its first output."""
    async def main():
        loop = AsyncEngine(engine)
        loop.streams = {"a": RequestStream("a", num_seqs=1), "b": RequestStream("b", num_seqs=3)}
        before = loop.num_waiting
        loop.streams["b"].started = True
        return before, loop.num_waiting

    assert asyncio.run(main()) == (4, 1)


def test_abort_all_ends_every_stream_and_refuses_new_requests(engine):
    async def main():
        loop = AsyncEngine(engine)
        loop.start()
        params = SamplingParams(max_tokens=100, ignore_eos=True)
        streams = [await loop.add_request(str(i), "hello", params) for i in range(3)]
        await streams[0].__anext__()
        loop.abort_all("shutting down")
        for stream in streams:
            with pytest.raises(RequestAborted, match="shutting down"):
                await final(stream)
        with pytest.raises(RequestAborted, match="shutting down"):
            await loop.add_request("late", "hello", params)
        loop.stop()

    asyncio.run(main())
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
