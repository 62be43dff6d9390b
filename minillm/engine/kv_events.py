"""KV-cache events: the prefix cache's changes, published for a router, in vLLM's wire format.

A router that knows which prompt prefixes each replica holds can send a request to the replica
that skips the most prefill. vLLM's engine tells it: with `--kv-events-config`, each step's
changes to the prefix cache go out on a ZeroMQ PUB socket, and vllm-router's `kv_aware` policy
(or llm-d's precise prefix-cache scorer) subscribes. The block manager records three events:

    BlockStored       full blocks newly keyed in the prefix cache: their keys, their parent's
                      key (the block before the first), their tokens
    BlockRemoved      cached blocks evicted, their memory reused for something else
    AllBlocksCleared  the whole prefix cache forgotten (a reset)

The wire format is vLLM's (`vllm/distributed/kv_events.py`, `ZmqEventPublisher`), in the shape
vllm-router 0.1.17 decodes (its `kv_index` decoder, "the vLLM v0.29 msgspec wire contract"):

* one message per engine step that changed the cache: three frames, `topic`, the sequence
  number (8 bytes, big-endian, from 0), and the msgpack payload;
* the payload is a batch `[ts, events, data_parallel_rank]` (msgspec's `array_like` struct);
* each event is a map tagged by its class name under "type", fields in vLLM's order:
  `{"type": "BlockStored", "block_hashes", "parent_block_hash", "token_ids", "block_size",
  "lora_id", "medium", "lora_name"}`, `{"type": "BlockRemoved", "block_hashes", "medium"}`,
  `{"type": "AllBlocksCleared"}`;
* a block's hash is its prefix-cache key, 32 bytes (minillm's SHA-256 chain, like vLLM's
  `sha256` hashes); `medium` is "GPU", vLLM's name for the engine's own KV cache (as opposed to
  offloaded tiers), whatever the device.

With a `replay_endpoint`, a ROUTER socket answers a subscriber that missed messages: it sends the
starting sequence number (8 bytes, big-endian) and gets every buffered message from there, each
as `topic, seq, payload`, then an end marker with seq -1 and an empty payload.

vllm-router never recomputes these keys: it hashes each stored block's *tokens* itself, files
them in a prefix tree under the parent key, and matches a request by the token ids it gets from
`POST /v1/completions/render`; the keys only chain blocks and name them in BlockRemoved. (Older
vLLM releases sent each event as a positional array; vllm-router 0.1.17 rejects those.)

Events are encoded and sent by a background thread, so a step only appends them to a queue.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from itertools import count

import msgpack
import zmq

logger = logging.getLogger("minillm")

MEDIUM = "GPU"
END_SEQ = (-1).to_bytes(8, "big", signed=True)


# -- the events ----------------------------------------------------------------------------------
@dataclass
class BlockStored:
    block_hashes: list[bytes]  # consecutive blocks of one prompt, in order
    parent_block_hash: bytes | None  # the key of the block before the first; None at the start
    token_ids: list[int]  # their tokens, block_size per block
    block_size: int

    def wire(self) -> dict:
        return {"type": "BlockStored", "block_hashes": self.block_hashes,
                "parent_block_hash": self.parent_block_hash, "token_ids": self.token_ids,
                "block_size": self.block_size, "lora_id": None, "medium": MEDIUM,
                "lora_name": None}


@dataclass
class BlockRemoved:
    block_hashes: list[bytes]

    def wire(self) -> dict:
        return {"type": "BlockRemoved", "block_hashes": self.block_hashes, "medium": MEDIUM}


@dataclass
class AllBlocksCleared:
    def wire(self) -> dict:
        return {"type": "AllBlocksCleared"}


KVCacheEvent = BlockStored | BlockRemoved | AllBlocksCleared


def encode_batch(events: list[KVCacheEvent], ts: float, data_parallel_rank: int = 0) -> bytes:
    return msgpack.packb([ts, [e.wire() for e in events], data_parallel_rank], use_bin_type=True)


# -- the configuration ---------------------------------------------------------------------------
@dataclass
class KVEventsConfig:
    """`--kv-events-config`, a JSON object with vLLM's keys (vllm/config/kv_events.py)."""
    enable_kv_cache_events: bool = False
    publisher: str | None = None  # "zmq" or "null"; default: zmq when enabled
    endpoint: str = "tcp://*:5557"  # a `*` (or `::`, ipc://, inproc://) binds; else connects
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000  # messages kept for replay
    hwm: int = 100_000  # ZeroMQ's high-water mark: beyond it, PUB drops messages
    max_queue_size: int = 100_000
    topic: str = ""

    @classmethod
    def from_json(cls, text: str) -> KVEventsConfig:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"kv_events_config is not JSON: {e}") from None
        if not isinstance(values, dict):
            raise ValueError("kv_events_config must be a JSON object")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"kv_events_config: unknown keys {unknown}; known: {list(known)}")
        config = cls(**values)
        if config.publisher is None:
            config.publisher = "zmq" if config.enable_kv_cache_events else "null"
        if config.publisher not in ("zmq", "null"):
            raise ValueError(f"kv_events_config: publisher must be 'zmq' or 'null', "
                             f"not {config.publisher!r}")
        for name in ("endpoint", "replay_endpoint"):
            value = getattr(config, name)
            if value is not None and not (isinstance(value, str) and "://" in value):
                raise ValueError(f"kv_events_config: {name} must be a ZeroMQ endpoint such as "
                                 f"'tcp://*:5557', not {value!r}")
        for name in ("buffer_steps", "hwm", "max_queue_size"):
            if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
                raise ValueError(f"kv_events_config: {name} must be a positive integer")
        return config


def create_publisher(config_json: str | None) -> ZmqEventPublisher | None:
    """The publisher `--kv-events-config` asks for, or None (events off: nothing is recorded)."""
    if config_json is None:
        return None
    config = KVEventsConfig.from_json(config_json)
    if not config.enable_kv_cache_events or config.publisher == "null":
        return None
    return ZmqEventPublisher(config)


# -- the publisher -------------------------------------------------------------------------------
def binds(endpoint: str) -> bool:
    """vLLM's rule: a stable endpoint (wildcard host, ipc, inproc) binds, any other connects."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class ZmqEventPublisher:
    """PUB socket (and optional ROUTER for replay), both used only by one background thread:
    ZeroMQ sockets are not thread-safe."""

    def __init__(self, config: KVEventsConfig):
        self.config, self.topic = config, config.topic.encode()
        self._queue: queue.Queue[list[KVCacheEvent] | None] = queue.Queue(config.max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._seq = count()
        context = zmq.Context.instance()
        self._pub = context.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        (self._pub.bind if binds(config.endpoint) else self._pub.connect)(config.endpoint)
        self._replay = None
        if config.replay_endpoint:
            self._replay = context.socket(zmq.ROUTER)
            self._replay.bind(config.replay_endpoint)
        self._thread = threading.Thread(target=self._run, name="kv-events", daemon=True)
        self._thread.start()

    def publish(self, events: list[KVCacheEvent]) -> None:
        """After a step: its events, if any. Never blocks the engine; a full queue drops them
        (and says so) as a full PUB socket would."""
        if not events:
            return
        try:
            self._queue.put_nowait(events)
        except queue.Full:
            logger.warning("KV events: queue full, %d events dropped", len(events))

    def close(self, timeout: float = 1.0) -> None:
        """Send what is queued, then close the sockets."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            if self._replay is not None and self._replay.poll(0):
                self._serve_replay()
            try:
                events = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if events is None:
                break
            seq, payload = next(self._seq), encode_batch(events, time.time())
            self._pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
            self._buffer.append((seq, payload))
        for socket in (self._pub, self._replay):
            if socket is not None:
                socket.close(linger=0)

    def _serve_replay(self) -> None:
        """A request is [identity, "", start seq]; the answer streams the buffered messages."""
        frames = self._replay.recv_multipart()
        if len(frames) != 3:
            logger.warning("KV events: a replay request of %d frames ignored", len(frames))
            return
        identity, _, start = frames
        start_seq = int.from_bytes(start, "big")
        for seq, payload in self._buffer:
            if seq >= start_seq:
                self._replay.send_multipart([identity, b"", self.topic, seq.to_bytes(8, "big"),
                                             payload])
        self._replay.send_multipart([identity, b"", self.topic, END_SEQ, b""])
