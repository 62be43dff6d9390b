"""Invariants of the block manager and the scheduler under random operation sequences
(hypothesis): reference counts conserved, every block either free or owned, cached keys pointing
at their blocks, CPU blocks conserved, queues disjoint, the token budget and max_num_seqs never
exceeded, and nothing held once every sequence has finished."""
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm.config import EngineConfig
from minillm.engine.block_manager import BlockManager
from minillm.engine.scheduler import Scheduler
from minillm.engine.sequence import Sequence, SequenceStatus
from minillm.sampling_params import SamplingParams

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_blocks(bm: BlockManager, seqs: list[Sequence], in_flight_cpu: int = 0) -> None:
    """`seqs`: every sequence not finished. Device blocks are named by the tables of those not
    swapped out, CPU blocks by those swapped out."""
    on_device = [s for s in seqs if s.status != SequenceStatus.SWAPPED]
    owners = Counter(b for s in on_device for b in s.block_table)
    for block in bm.blocks:
        assert block.ref_count == owners[block.block_id], (block, owners[block.block_id])
        assert (block.ref_count == 0) == (block.block_id in bm.free_block_ids), block
    for key, block_id in bm.cached.items():
        assert bm.blocks[block_id].hash == key
    held_cpu = [b for s in seqs if s.status == SequenceStatus.SWAPPED for b in s.block_table]
    assert len(set(held_cpu)) == len(held_cpu)
    assert not set(held_cpu) & set(bm.free_cpu_blocks)
    assert len(held_cpu) + len(bm.free_cpu_blocks) + in_flight_cpu == bm.num_cpu_blocks


ops = st.lists(st.tuples(st.sampled_from(["admit", "decode", "fork", "free", "swap_out",
                                          "swap_in"]),
                         st.integers(0, 10**6)), min_size=1, max_size=60)


@SETTINGS
@given(ops=ops, num_blocks=st.integers(4, 24), block_size=st.sampled_from([2, 4, 8]),
       caching=st.booleans())
def test_block_manager_invariants(ops, num_blocks, block_size, caching):
    bm = BlockManager(num_blocks, block_size, caching, num_cpu_blocks=8)
    live: list[Sequence] = []  # on the device: RUNNING; swapped out: SWAPPED
    for op, r in ops:
        running = [s for s in live if s.status == SequenceStatus.RUNNING]
        swapped = [s for s in live if s.status == SequenceStatus.SWAPPED]
        if op == "admit":
            # Shared prefixes (few distinct tokens) so the prefix cache gets hits.
            seq = Sequence([(r >> i) % 3 for i in range(1 + r % 20)], block_size)
            bm.reuse_cached_prefix(seq)
            if bm.allocate(seq, seq.num_uncomputed_tokens):
                seq.num_computed_tokens = seq.num_tokens
                bm.cache_full_blocks(seq)
                seq.status = SequenceStatus.RUNNING
                live.append(seq)
            else:
                bm.free(seq)
        elif op == "decode" and running:
            seq = running[r % len(running)]
            seq.append_token(r % 3)
            if bm.allocate(seq, 1):
                seq.num_computed_tokens += 1
                bm.cache_full_blocks(seq)
            else:
                seq.token_ids.pop()
        elif op == "fork" and running:
            parent, child = running[r % len(running)], Sequence([], block_size)
            child.token_ids = list(parent.token_ids)
            bm.fork(parent, child)
            child.status = SequenceStatus.RUNNING
            live.append(child)
        elif op == "free" and live:
            seq = live.pop(r % len(live))
            (bm.free_swapped if seq.status == SequenceStatus.SWAPPED else bm.free)(seq)
        elif op == "swap_out" and running:
            seq = running[r % len(running)]
            if bm.can_swap_out(seq):
                bm.swap_out(seq)
                seq.status = SequenceStatus.SWAPPED
        elif op == "swap_in" and swapped:
            seq = swapped[r % len(swapped)]
            if bm.can_swap_in(seq):
                bm.swap_in(seq)
                seq.status = SequenceStatus.RUNNING
                in_flight = len(seq.block_table)  # CPU blocks not back until the copy ran
                check_blocks(bm, live, in_flight)
                bm.release_cpu_blocks(bm.take_moves().swap_in)
        check_blocks(bm, live)
    for seq in live:
        (bm.free_swapped if seq.status == SequenceStatus.SWAPPED else bm.free)(seq)
    assert bm.num_free_blocks == num_blocks and len(bm.free_cpu_blocks) == 8


requests = st.lists(st.tuples(st.integers(1, 30), st.integers(1, 3), st.integers(1, 12),
                              st.integers(0, 2)), min_size=1, max_size=8)


@SETTINGS
@given(requests=requests, num_blocks=st.integers(4, 16), max_num_seqs=st.integers(1, 6),
       budget=st.integers(1, 40), swap=st.booleans(), caching=st.booleans(),
       policy=st.sampled_from(["fcfs", "priority"]))
def test_scheduler_invariants(requests, num_blocks, max_num_seqs, budget, swap, caching, policy):
    block_size, max_model_len = 4, 4 * 4
    config = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                          preemption_mode="swap" if swap else "recompute",
                          scheduling_policy=policy)
    bm = BlockManager(num_blocks, block_size, caching, num_cpu_blocks=6)
    scheduler = Scheduler(config, bm, eos_token_ids=[], max_model_len=max_model_len)
    all_seqs = []
    for i, (prompt_len, n, max_tokens, priority) in enumerate(requests):
        params = SamplingParams(n=n, max_tokens=max_tokens, ignore_eos=True)
        prompt = [(i * 7 + t) % 5 for t in range(min(prompt_len, max_model_len - 1))]
        seqs = [Sequence(prompt, block_size, params, str(i), k, priority, float(i))
                for k in range(n)]
        seqs[0].forks = seqs[1:]
        scheduler.add(seqs[0])
        all_seqs += seqs
    for step in range(400):
        if not scheduler.has_unfinished():
            break
        out = scheduler.schedule()
        assert out.num_tokens <= budget
        assert len(scheduler.running) <= max_num_seqs
        queues = scheduler.waiting + scheduler.running + scheduler.swapped
        assert len(queues) == len(set(map(id, queues)))  # disjoint
        for queue, status in ((scheduler.waiting, SequenceStatus.WAITING),
                              (scheduler.running, SequenceStatus.RUNNING),
                              (scheduler.swapped, SequenceStatus.SWAPPED)):
            assert all(s.status == status for s in queue)
        check_blocks(bm, queues, in_flight_cpu=len(out.moves.swap_in))
        scheduler.update_from_output(out, [step % 5] * len(out.sampled_seqs))
        check_blocks(bm, scheduler.waiting + scheduler.running + scheduler.swapped)
    assert not scheduler.has_unfinished(), "the scheduler stopped making progress"
    for seq in all_seqs:
        assert seq.is_finished and seq.finish_reason == "length"
        assert len(seq.output_token_ids) == min(seq.params.max_tokens,
                                                max_model_len - seq.num_prompt_tokens)
    assert bm.num_free_blocks == num_blocks and len(bm.free_cpu_blocks) == 6
