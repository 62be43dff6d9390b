"""Lab 4 tests. `make grade LAB=lab04` grades all tasks, `make grade LAB=lab04 TASK=4.3` one.

Each test builds a scheduler with minillm's `BlockManager` and `Sequence`s by hand (a few blocks
of 4 tokens, so memory runs out quickly), then checks the step's plan: which sequences run, in
which order, with how many tokens (`A:1` is a decode of A, `C:6` a prefill chunk of 6 of C's
tokens). Tasks 4.1-4.4 are graded one method at a time; 4.5 (`schedule`) also runs whole
random workloads step by step against minillm's scheduler and checks the invariants (never over
the budget or `max_num_seqs`, decodes never starved, every block accounted for).
`make grade LAB=lab04 INTEGRATION=1` also runs `LLM.generate` on the bundled model with your
`Scheduler` (the engine's `scheduler_cls` hook) and requires minillm's tokens and preemptions.
"""
from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.config import EngineConfig
from minillm.engine import scheduler as reference
from minillm.engine.block_manager import BlockManager
from minillm.engine.sequence import Sequence, SequenceStatus
from minillm.sampling_params import SamplingParams

STARTER = "scheduler.py"
REFERENCE = "minillm.engine.scheduler"

TASK_METHODS = ["preempt", "_allocate_or_preempt", "_schedule_running", "_schedule_waiting",
                "schedule"]
BLOCK = 4  # tokens per block: small, so a few tokens fill a block
TOKEN = 5  # what the "model" samples in these tests (never an end token)


@pytest.fixture
def Scheduler(impl):
    """The scheduler class under test; each task's method must be its own, not minillm's."""
    cls = impl.Scheduler
    for name in TASK_METHODS:
        method = next((vars(c)[name] for c in cls.__mro__ if name in vars(c)), None)
        assert method is not None and method.__module__ == impl.__name__, \
            f"Scheduler.{name} is missing from your file: it would fall back to minillm's own"
        assert "super()" not in inspect.getsource(method), \
            f"Scheduler.{name} calls minillm's own version (super()): write it yourself"
    return cls


def make(Scheduler, num_blocks=64, budget=64, max_num_seqs=8, policy="fcfs", mode="recompute",
         num_cpu_blocks=0):
    config = EngineConfig(max_num_batched_tokens=budget, max_num_seqs=max_num_seqs,
                          scheduling_policy=policy, preemption_mode=mode)
    blocks = BlockManager(num_blocks, BLOCK, enable_prefix_caching=False,
                          num_cpu_blocks=num_cpu_blocks)
    return Scheduler(config, blocks, eos_token_ids=[0], max_model_len=10_000)


def new_seq(name: str, prompt_len: int, arrival: float, max_tokens: int = 1000,
            priority: int = 0) -> Sequence:
    return Sequence(list(range(1, prompt_len + 1)), BLOCK,
                    SamplingParams(max_tokens=max_tokens, ignore_eos=True), request_id=name,
                    priority=priority, arrival_time=arrival)


def put_running(sched, seq: Sequence, computed: int, decoding: bool = True) -> Sequence:
    """Make `seq` a running sequence with `computed` tokens in the cache; a decoding one also
    has its next token sampled (one token left to compute)."""
    assert sched.block_manager.allocate(seq, computed), \
        f"setup: {seq.request_id}'s {computed} computed tokens do not fit in the " \
        f"{sched.block_manager.num_free_blocks} free blocks"
    seq.num_computed_tokens = computed
    while decoding and seq.num_tokens <= computed:
        seq.append_token(TOKEN)
    seq.status = SequenceStatus.RUNNING
    sched.running.append(seq)
    return seq


def plan(out) -> list[str]:
    return [f"{seq.request_id}:{n}" for seq, n in zip(out.seqs, out.num_new_tokens)]


def queues(sched) -> str:
    names = {q: [s.request_id for s in getattr(sched, q)] for q in ("running", "waiting",
                                                                    "swapped")}
    return f"running {names['running']}, waiting {names['waiting']}, swapped {names['swapped']}"


def held_blocks(sched) -> int:
    return sum(len(s.block_table) for s in sched.running)


def step(sched):
    """One engine step without a model: plan, then book it with a sampled TOKEN per sequence."""
    out = sched.schedule()
    sched.update_from_output(out, [TOKEN] * len(out.sampled_seqs))
    return out


# -- 4.1 preempt ----------------------------------------------------------------------------------
@pytest.mark.task4_1
def test_preempt_by_recompute_frees_the_blocks(Scheduler):
    sched = make(Scheduler, num_blocks=16)
    a = put_running(sched, new_seq("A", 10, 0.0), 10)
    b = put_running(sched, new_seq("B", 13, 1.0), 13)
    free_before = sched.block_manager.num_free_blocks
    sched.preempt(b)
    assert b not in sched.running and b in sched.waiting, \
        f"preempting B (recompute): B should move from running to waiting; {queues(sched)}"
    assert b.status == SequenceStatus.WAITING, f"a preempted B has status {b.status}, not WAITING"
    assert b.block_table == [] and sched.block_manager.num_free_blocks == free_before + 4, \
        f"B held 4 blocks (13 computed tokens); after preempting it {free_before} + 4 blocks " \
        f"should be free, {sched.block_manager.num_free_blocks} are (B's table: {b.block_table})"
    assert b.num_computed_tokens == 0, \
        f"B lost its cache: every token must be computed again, but num_computed_tokens is " \
        f"{b.num_computed_tokens} (use seq.reset_for_recompute())"
    assert sched.stats.num_preemptions == 1, \
        f"stats.num_preemptions is {sched.stats.num_preemptions} after one preemption"
    assert a in sched.running and len(a.block_table) == 3, "A was not preempted: leave it alone"


@pytest.mark.task4_1
def test_preempt_by_swap_keeps_the_computed_tokens(Scheduler):
    sched = make(Scheduler, num_blocks=16, mode="swap", num_cpu_blocks=8)
    put_running(sched, new_seq("A", 6, 0.0), 6)
    b = put_running(sched, new_seq("B", 9, 1.0), 9)
    device_table = list(b.block_table)
    sched.preempt(b)
    assert b in sched.swapped and b not in sched.running and b.status == SequenceStatus.SWAPPED, \
        f"preempting B with preemption_mode='swap' and room in the CPU pool: B should be " \
        f"SWAPPED, in `swapped`; its status is {b.status}, {queues(sched)}"
    assert b.num_computed_tokens == 9, \
        f"a swapped-out B keeps its 9 computed tokens (on the CPU), not {b.num_computed_tokens}"
    moves = sched.block_manager.take_moves().swap_out
    assert [device for device, _ in moves] == device_table, \
        f"B's device blocks {device_table} should be recorded to swap out, got {moves} " \
        "(use block_manager.swap_out)"
    assert sched.stats.num_preemptions == 1, \
        f"stats.num_preemptions is {sched.stats.num_preemptions} after one preemption (swap)"


@pytest.mark.task4_1
def test_swap_falls_back_to_recompute_when_the_cpu_pool_is_full(Scheduler):
    sched = make(Scheduler, num_blocks=16, mode="swap", num_cpu_blocks=2)
    b = put_running(sched, new_seq("B", 12, 1.0), 12)  # 3 blocks: more than the CPU pool's 2
    sched.preempt(b)
    assert b in sched.waiting and b.status == SequenceStatus.WAITING and b.block_table == [], \
        f"B holds 3 blocks and the CPU pool has 2: it cannot swap out (check " \
        f"block_manager.can_swap_out) and must be recomputed; status {b.status}, {queues(sched)}"
    assert sched.block_manager.num_free_blocks == 16, \
        f"B is recomputed: all 16 blocks should be free again, " \
        f"{sched.block_manager.num_free_blocks} are (B's table: {b.block_table})"


@pytest.mark.task4_1
def test_preempting_any_running_sequence_keeps_the_books(Scheduler, rng):
    for _ in range(20):
        sched = make(Scheduler, num_blocks=64)
        seqs = [put_running(sched, new_seq(f"S{i}", rng.randint(1, 30), float(i)), 0,
                            decoding=False) for i in range(rng.randint(1, 6))]
        for seq in seqs:  # some tokens computed, some not
            computed = rng.randint(0, seq.num_tokens)
            assert sched.block_manager.allocate(seq, computed), \
                f"setup: {seq.request_id}'s {computed} computed tokens do not fit in the " \
                f"{sched.block_manager.num_free_blocks} free blocks"
            seq.num_computed_tokens = computed
        victims = rng.sample(seqs, rng.randint(1, len(seqs)))
        for victim in victims:
            sched.preempt(victim)
        survivors = [s.request_id for s in seqs if s not in victims]
        assert [s.request_id for s in sched.running] == survivors, \
            f"preempted {[v.request_id for v in victims]} of {[s.request_id for s in seqs]}: " \
            f"running should be {survivors}; {queues(sched)}"
        assert sched.block_manager.num_free_blocks == 64 - held_blocks(sched), \
            f"after preempting {[v.request_id for v in victims]}: {held_blocks(sched)} blocks " \
            f"held by running sequences, so {64 - held_blocks(sched)} should be free, not " \
            f"{sched.block_manager.num_free_blocks}"
        assert sched.stats.num_preemptions == len(victims), \
            f"preempted {[v.request_id for v in victims]}: stats.num_preemptions is " \
            f"{sched.stats.num_preemptions}, expected {len(victims)}"


# -- 4.2 allocate or preempt ----------------------------------------------------------------------
def full_house(Scheduler, policy="fcfs", priorities=(0, 0, 0)):
    """A, B, C decoding, each with a full last block, and no free block: each decode needs one."""
    sched = make(Scheduler, num_blocks=6, policy=policy)
    seqs = [put_running(sched, new_seq(name, 8, float(i), priority=p), 8)
            for i, (name, p) in enumerate(zip("ABC", priorities))]
    assert sched.block_manager.num_free_blocks == 0, \
        f"setup: A, B, C (8 tokens each) should hold all 6 blocks, " \
        f"{sched.block_manager.num_free_blocks} are free"
    return sched, seqs


@pytest.mark.task4_2
def test_the_newest_sequence_is_preempted(Scheduler):
    sched, (a, b, c) = full_house(Scheduler)
    out = reference.SchedulerOutput()
    assert sched._allocate_or_preempt(a, 1, out) is True, \
        "A (oldest) needs one block and C can give two: A should get it (True)"
    assert c in sched.waiting and a in sched.running and b in sched.running, \
        f"A, B, C running (A oldest), no free block, A needs one: C (the newest) is the " \
        f"victim; {queues(sched)}"
    assert len(a.block_table) == 3, f"A should now hold 3 blocks, holds {a.block_table}"


@pytest.mark.task4_2
def test_a_sequence_can_be_its_own_victim(Scheduler):
    sched = make(Scheduler, num_blocks=5)
    a = put_running(sched, new_seq("A", 7, 0.0), 7)  # room for one more token in its block
    b = put_running(sched, new_seq("B", 7, 1.0), 7)
    c = put_running(sched, new_seq("C", 4, 2.0), 4)  # its block is full
    assert sched.block_manager.num_free_blocks == 0, \
        f"setup: A (7 tokens), B (7), C (4) should hold all 5 blocks, " \
        f"{sched.block_manager.num_free_blocks} are free"
    out = reference.SchedulerOutput()
    out.add(a, 1)  # A and B are already in this step's batch
    out.add(b, 1)
    assert sched._allocate_or_preempt(c, 1, out) is False, \
        "C needs a block, none is free, A and B are already in this step's batch: C must " \
        "preempt itself and return False"
    assert c in sched.waiting and a in sched.running and b in sched.running, \
        f"only C may go: A and B are in this step's batch; {queues(sched)}"


@pytest.mark.task4_2
def test_priority_policy_preempts_the_lowest_priority(Scheduler):
    # B is the newest, but C has the lowest priority (largest value): C goes.
    sched, (a, b, c) = full_house(Scheduler, policy="priority", priorities=(0, 0, 5))
    c.arrival_time = -1.0  # C arrived first, yet priority decides
    assert sched._allocate_or_preempt(a, 1, reference.SchedulerOutput()), \
        "priority policy: A needs one block and C (priority 5) can give two: A should get it " \
        "(True)"
    assert c in sched.waiting and b in sched.running, \
        f"priority policy: A=0, B=0, C=5 (C arrived first): C has the lowest priority and is " \
        f"the victim (use self.order); {queues(sched)}"


@pytest.mark.task4_2
def test_preempts_as_many_as_needed(Scheduler):
    sched = make(Scheduler, num_blocks=6)
    a = put_running(sched, new_seq("A", 16, 0.0), 8, decoding=False)  # prefill under way
    b = put_running(sched, new_seq("B", 4, 1.0), 4)  # 1 block each
    c = put_running(sched, new_seq("C", 4, 2.0), 4)
    # someone else holds 2
    assert sched.block_manager.allocate(new_seq("X", 8, 9.0), 8), \
        f"setup: X's 8 tokens should take the last 2 free blocks, " \
        f"{sched.block_manager.num_free_blocks} are free"
    assert sched.block_manager.num_free_blocks == 0, \
        f"setup: A, B, C and X should hold all 6 blocks, " \
        f"{sched.block_manager.num_free_blocks} are free"
    assert sched._allocate_or_preempt(a, 8, reference.SchedulerOutput()) is True, \
        "A needs 2 more blocks; C and B hold one each: preempt both, then A fits (True)"
    assert [s.request_id for s in sched.waiting] == ["C", "B"], \
        f"A needs 2 blocks, C (newest) and B hold one each: both preempted, C first; " \
        f"{queues(sched)}"
    assert len(a.block_table) == 4 and sched.stats.num_preemptions == 2, \
        f"A (16 tokens) should hold 4 blocks after 2 preemptions: A holds {a.block_table}, " \
        f"stats.num_preemptions is {sched.stats.num_preemptions}"


@pytest.mark.task4_2
def test_random_victims_are_always_the_newest(Scheduler, rng):
    for _ in range(30):
        n = rng.randint(2, 7)
        prompts = [rng.choice([4, 8, 12]) for _ in range(n)]
        sched = make(Scheduler, num_blocks=sum(prompts) // BLOCK + rng.randint(0, 2))
        seqs = [put_running(sched, new_seq(f"S{i}", prompt, float(i)), prompt)
                for i, prompt in enumerate(prompts)]
        rng.shuffle(sched.running)  # the queue's order is not the scheduling order
        held = {s.request_id: len(s.block_table) for s in seqs}
        free = sched.block_manager.num_free_blocks
        seq = rng.choice(seqs)
        need = rng.randint(1, 4) * BLOCK  # its block is full: one new block per BLOCK tokens
        ok = sched._allocate_or_preempt(seq, need, reference.SchedulerOutput())
        # Newest first until the blocks fit, or until the sequence itself is the victim.
        missing, expect, expect_ok = need // BLOCK - free, [], True
        for victim in sorted(seqs, key=lambda s: -s.arrival_time):
            if missing <= 0:
                break
            expect.append(victim.request_id)
            if victim is seq:
                expect_ok = False
                break
            missing -= held[victim.request_id]
        gone = [s.request_id for s in sched.waiting]
        assert gone == expect and ok == expect_ok, \
            f"{held} (blocks held, all decoding, arrived in this order), {free} free blocks; " \
            f"{seq.request_id} needs {need // BLOCK} more: preempt the newest first until it " \
            f"fits -> preempted {expect}, returns {expect_ok}; you preempted {gone}, " \
            f"returned {ok}"


# -- 4.3 the running sequences ----------------------------------------------------------------------
@pytest.mark.task4_3
def test_decodes_and_a_prefill_under_way(Scheduler):
    sched = make(Scheduler, num_blocks=32)
    put_running(sched, new_seq("B", 5, 1.0), 5)
    put_running(sched, new_seq("C", 20, 2.0), 12, decoding=False)  # 8 prompt tokens to go
    put_running(sched, new_seq("A", 7, 0.0), 7)
    out = reference.SchedulerOutput()
    left = sched._schedule_running(out, 64)
    assert plan(out) == ["A:1", "B:1", "C:8"], \
        f"A, B decoding, C with 12 of its 20 prompt tokens computed, budget 64: expected " \
        f"['A:1', 'B:1', 'C:8'] (oldest first; C computes only what it has not), got {plan(out)}"
    assert left == 64 - 10, f"10 tokens scheduled from a budget of 64: return 54, not {left}"
    assert [s.request_id for s in out.sampled_seqs] == ["A", "B", "C"], \
        f"A, B decode and C's chunk finishes its prompt: all three sample a token, expected " \
        f"['A', 'B', 'C'], got {[s.request_id for s in out.sampled_seqs]}"


@pytest.mark.task4_3
def test_the_budget_chunks_a_prefill_and_stops(Scheduler):
    sched = make(Scheduler, num_blocks=32)
    put_running(sched, new_seq("A", 7, 0.0), 7)
    put_running(sched, new_seq("B", 30, 1.0), 4, decoding=False)
    put_running(sched, new_seq("C", 5, 2.0), 5)
    out = reference.SchedulerOutput()
    left = sched._schedule_running(out, 8)
    assert plan(out) == ["A:1", "B:7"] and left == 0, \
        f"budget 8: A decodes (1), B's prompt gets a chunk of 7 of its 26 tokens left, and C " \
        f"waits for the next step (no 0-token entry): expected ['A:1', 'B:7'] and 0 left, " \
        f"got {plan(out)} and {left} left"
    assert out.sampled_seqs == [out.seqs[0]], \
        "a chunk that does not finish B's prompt samples no token for B"


@pytest.mark.task4_3
def test_a_victim_preempted_in_the_loop_is_skipped(Scheduler):
    sched, (a, b, c) = full_house(Scheduler)
    out = reference.SchedulerOutput()
    left = sched._schedule_running(out, 64)
    assert plan(out) == ["A:1", "B:1"] and left == 62, \
        f"A, B, C decoding, each needs a block, none free: A's decode preempts C, which frees 2 " \
        f"(B's decode takes one); C is then skipped. Expected ['A:1', 'B:1'], 62 left; got " \
        f"{plan(out)}, {left} left; {queues(sched)}"
    assert sched.block_manager.num_free_blocks == 0 and c.block_table == [], \
        f"C's 2 blocks are freed and A, B take one each: expected 0 free and C's table [], " \
        f"got {sched.block_manager.num_free_blocks} free and {c.block_table}"


@pytest.mark.task4_3
@given(lengths=st.lists(st.tuples(st.integers(1, 40), st.integers(0, 40), st.booleans()),
                        min_size=1, max_size=8),
       budget=st.integers(1, 80))
def test_running_never_over_budget(Scheduler, lengths, budget):
    sched = make(Scheduler, num_blocks=200)
    for i, (prompt, computed, decoding) in enumerate(lengths):
        put_running(sched, new_seq(f"S{i}", prompt, float(i)), min(computed, prompt),
                    decoding=decoding or computed >= prompt)
    want = []
    left = budget
    for seq in sorted(sched.running, key=lambda s: s.arrival_time):
        if left == 0:
            break
        n = min(seq.num_uncomputed_tokens, left)
        want.append(f"{seq.request_id}:{n}")
        left -= n
    out = reference.SchedulerOutput()
    got_left = sched._schedule_running(out, budget)
    assert plan(out) == want and got_left == left, \
        f"running {[(s.request_id, s.num_computed_tokens, s.num_tokens) for s in sched.running]}" \
        f" (name, computed, tokens), budget {budget}: expected {want} and {left} left, got " \
        f"{plan(out)} and {got_left} left"


# -- 4.4 admitting waiting sequences -----------------------------------------------------------------
def waiting(sched, *specs):
    seqs = [new_seq(name, prompt, arrival) for name, prompt, arrival in specs]
    for seq in reversed(seqs):  # the queue's order is not the arrival order
        sched.add(seq)
    return seqs


@pytest.mark.task4_4
def test_admits_in_arrival_order_within_the_budget(Scheduler):
    sched = make(Scheduler, num_blocks=32)
    waiting(sched, ("A", 6, 0.0), ("B", 5, 1.0), ("C", 9, 2.0), ("D", 3, 3.0))
    out = reference.SchedulerOutput()
    sched._schedule_waiting(out, 16)
    assert plan(out) == ["A:6", "B:5", "C:5"], \
        f"waiting A(6 tokens), B(5), C(9), D(3), budget 16: A and B come in whole, C with a " \
        f"chunk of 5, D waits: expected ['A:6', 'B:5', 'C:5'], got {plan(out)}"
    assert [s.request_id for s in sched.running] == ["A", "B", "C"] and \
        [s.request_id for s in sched.waiting] == ["D"], f"after admitting: {queues(sched)}"
    assert all(s.status == SequenceStatus.RUNNING for s in sched.running), \
        f"admitted sequences have status RUNNING: {[s.status for s in sched.running]}"


@pytest.mark.task4_4
@pytest.mark.parametrize("running,max_num_seqs", [(0, 1), (2, 3), (3, 3), (1, 4), (4, 4)])
def test_max_num_seqs(Scheduler, running, max_num_seqs):
    sched = make(Scheduler, num_blocks=64, max_num_seqs=max_num_seqs)
    for i in range(running):
        put_running(sched, new_seq(f"R{i}", 4, float(i)), 4)
    waiting(sched, ("A", 4, 10.0), ("B", 4, 11.0), ("C", 4, 12.0))
    out = reference.SchedulerOutput()
    sched._schedule_waiting(out, 64)
    seats = min(3, max_num_seqs - running)
    want = ["A:4", "B:4", "C:4"][:seats]
    assert plan(out) == want, \
        f"{running} running, max_num_seqs={max_num_seqs}, A, B, C waiting: {seats} may come in " \
        f"-> {want}; got {plan(out)}"
    assert len(sched.running) <= max_num_seqs, \
        f"{running} running, max_num_seqs={max_num_seqs}: {len(sched.running)} running after " \
        f"admitting; {queues(sched)}"


@pytest.mark.task4_4
def test_no_queue_jumping_when_blocks_are_short(Scheduler):
    sched = make(Scheduler, num_blocks=4)
    waiting(sched, ("A", 20, 0.0), ("B", 4, 1.0))
    out = reference.SchedulerOutput()
    sched._schedule_waiting(out, 64)
    assert plan(out) == [] and sorted(s.request_id for s in sched.waiting) == ["A", "B"], \
        f"4 free blocks; A (first) needs 5, B needs 1: A cannot come in, and B must not jump " \
        f"the queue (first come, first served): expected [], got {plan(out)}; {queues(sched)}"
    assert sched.block_manager.num_free_blocks == 4, \
        f"neither A nor B comes in: all 4 blocks stay free, " \
        f"{sched.block_manager.num_free_blocks} are"


@pytest.mark.task4_4
def test_nothing_admitted_while_a_sequence_is_swapped_out(Scheduler):
    sched = make(Scheduler, num_blocks=32, mode="swap", num_cpu_blocks=8)
    s = put_running(sched, new_seq("S", 8, 0.0), 8)
    sched.running.remove(s)  # preempted by swapping (task 4.1's job)
    sched.block_manager.swap_out(s)
    s.status = SequenceStatus.SWAPPED
    sched.swapped.append(s)
    waiting(sched, ("A", 4, 1.0))
    out = reference.SchedulerOutput()
    sched._schedule_waiting(out, 64)
    assert plan(out) == [], \
        f"S is swapped out and waits to come back: admit nobody before it; got {plan(out)}"


@pytest.mark.task4_4
def test_random_admissions(Scheduler, rng):
    for _ in range(40):
        num_blocks, budget, seats = rng.randint(2, 30), rng.randint(1, 40), rng.randint(1, 6)
        sched = make(Scheduler, num_blocks=num_blocks, budget=budget, max_num_seqs=seats)
        specs = [(f"W{i}", rng.randint(1, 24), float(i)) for i in range(rng.randint(1, 7))]
        waiting(sched, *specs)
        want, left, free, running = [], budget, num_blocks, 0
        for name, prompt, _ in specs:
            n = min(prompt, left)
            need = -(-n // BLOCK)
            if left == 0 or running >= seats or need > free:
                break
            want.append(f"{name}:{n}")
            left, free, running = left - n, free - need, running + 1
        out = reference.SchedulerOutput()
        sched._schedule_waiting(out, budget)
        assert plan(out) == want, \
            f"waiting {[(n, p) for n, p, _ in specs]} (name, prompt tokens), budget {budget}, " \
            f"max_num_seqs {seats}, {num_blocks} free blocks of {BLOCK}: expected {want}, got " \
            f"{plan(out)}"
        assert sched.block_manager.num_free_blocks == num_blocks - held_blocks(sched), \
            f"waiting {[(n, p) for n, p, _ in specs]}: {held_blocks(sched)} blocks held by " \
            f"running sequences, so {num_blocks - held_blocks(sched)} of {num_blocks} should be " \
            f"free, not {sched.block_manager.num_free_blocks}"


# -- 4.5 the whole step -----------------------------------------------------------------------------
@pytest.mark.task4_5
def test_decodes_go_before_new_prompts(Scheduler):
    sched = make(Scheduler, num_blocks=32, budget=8)
    put_running(sched, new_seq("A", 5, 0.0), 5)
    put_running(sched, new_seq("B", 6, 1.0), 6)
    waiting(sched, ("C", 10, 2.0))
    out = sched.schedule()
    assert plan(out) == ["A:1", "B:1", "C:6"], \
        f"A, B decoding, C (10 tokens) waiting, budget 8: the decodes first, then a 6-token " \
        f"chunk of C: expected ['A:1', 'B:1', 'C:6'], got {plan(out)}"


@pytest.mark.task4_5
def test_continuous_batching_the_seed_example(Scheduler):
    """Chapter 5's example: A, B, C running; A finishes; D joins at once."""
    sched = make(Scheduler, num_blocks=32, budget=16, max_num_seqs=3)
    a, b, c = (new_seq(n, 4, t, max_tokens=m) for n, t, m in (("A", 0.0, 2), ("B", 1.0, 4),
                                                              ("C", 2.0, 4)))
    for seq in (a, b, c):
        sched.add(seq)
    d = new_seq("D", 6, 3.0, max_tokens=2)
    sched.add(d)
    plans = [plan(step(sched)) for _ in range(5)]
    want = [["A:4", "B:4", "C:4"],  # three prompts fill the seats; D waits for one
            ["A:1", "B:1", "C:1"],  # A's second token ends it
            ["B:1", "C:1", "D:6"],  # D takes A's seat in the very next step
            ["B:1", "C:1", "D:1"],
            []]
    assert plans == want, \
        f"max_num_seqs 3, A (2 tokens out), B, C (4), then D (2): expected steps {want}, got " \
        f"{plans}"


@pytest.mark.task4_5
def test_a_step_that_preempts_admits_nobody(Scheduler):
    sched = make(Scheduler, num_blocks=7, policy="priority")
    for name, arrival, priority in (("A", 0.0, 0), ("B", 1.0, 0), ("C", 2.0, 1)):
        put_running(sched, new_seq(name, 8, arrival, priority=priority), 8)
    sched.add(new_seq("W", 1, 9.0, priority=0))
    out = sched.schedule()
    assert plan(out) == ["A:1", "B:1"] and [s.request_id for s in sched.waiting] == ["W", "C"], \
        f"A, B, C (priorities 0, 0, 1) hold 6 of 7 blocks and need one more each: A takes the " \
        f"free one, C is preempted for B, and one block is left. W (priority 0, 1 token) would " \
        f"fit it but must not come in this step: memory is tight. Expected ['A:1', 'B:1'], got " \
        f"{plan(out)}; {queues(sched)}"


def b_swapped_out_and_a_finished(Scheduler):
    """A and B hold all 4 blocks; A's decode needs one more, so B is swapped out (step 1); then A
    finishes: 4 blocks free, B waiting on the CPU to come back."""
    sched = make(Scheduler, num_blocks=4, mode="swap", num_cpu_blocks=8)
    a = put_running(sched, new_seq("A", 8, 0.0), 8)
    b = put_running(sched, new_seq("B", 8, 1.0), 8)
    out1 = sched.schedule()
    assert plan(out1) == ["A:1"] and sched.swapped == [b], \
        f"step 1: A, B hold all 4 blocks, A needs one more: B swapped out, A runs. Got " \
        f"{plan(out1)}; {queues(sched)}"
    assert out1.moves.swap_out, "the step's swaps go to the runner: out.moves = take_moves()"
    sched.update_from_output(out1, [TOKEN])
    sched.finish(a, "stop")
    return sched, b


@pytest.mark.task4_5
def test_swapped_sequences_come_back_before_new_ones(Scheduler):
    sched, b = b_swapped_out_and_a_finished(Scheduler)
    waiting(sched, ("W", 12, 2.0))
    out2 = sched.schedule()
    assert sched.running == [b] and plan(out2) == [] and out2.moves.swap_in, \
        f"step 2: A finished, 4 blocks free; B comes back first (2 blocks, swapped in: " \
        f"recorded in out.moves), so W (3 blocks) cannot come in. Got {plan(out2)}, moves " \
        f"{out2.moves}; {queues(sched)}"


@pytest.mark.task4_5
def test_new_ones_come_in_beside_a_sequence_swapped_back(Scheduler):
    sched, b = b_swapped_out_and_a_finished(Scheduler)
    waiting(sched, ("W", 4, 2.0))
    out2 = sched.schedule()
    assert b in sched.running and plan(out2) == ["W:4"], \
        f"step 2: A finished, 4 blocks free; B comes back (2 blocks) before the waiting ones " \
        f"are looked at, so nothing is swapped out any more and W (4 tokens, 1 block) comes in " \
        f"in the same step. Expected ['W:4'], got {plan(out2)}; {queues(sched)}"

def run_workload(Scheduler, workload, num_blocks, budget, seats, mode, policy, max_steps=400):
    """Run a workload to the end; every step's plan, the preemptions, and invariant checks."""
    sched = make(Scheduler, num_blocks=num_blocks, budget=budget, max_num_seqs=seats,
                 mode=mode, num_cpu_blocks=num_blocks if mode == "swap" else 0, policy=policy)
    pending = [(arrive_step, new_seq(f"R{i}", prompt, float(i), max_tokens=out, priority=prio))
               for i, (arrive_step, prompt, out, prio) in enumerate(workload)]
    plans = []
    for number in range(max_steps):
        for arrive_step, seq in pending:
            if arrive_step == number:
                sched.add(seq)
        if not sched.has_unfinished() and number > max(a for a, _ in pending):
            break
        decoding = [s for s in sched.running if s.num_uncomputed_tokens == 1]
        preemptions = sched.stats.num_preemptions
        out = step(sched)
        where = f"step {number} of workload {workload} (blocks {num_blocks}, budget {budget}, " \
                f"max_num_seqs {seats}, {mode}, {policy}): plan {plan(out)}"
        assert out.num_tokens <= budget, f"{where}: {out.num_tokens} tokens, over the budget"
        assert all(n > 0 for n in out.num_new_tokens), f"{where}: a 0-token entry"
        assert len(set(map(id, out.seqs))) == len(out.seqs), f"{where}: a sequence twice"
        assert len(sched.running) <= seats, f"{where}: {len(sched.running)} running"
        starved = [s.request_id for s in decoding if s not in out.seqs]
        if starved and sched.stats.num_preemptions == preemptions:
            admitted = [s.request_id for s in out.seqs if s not in decoding
                        and s.num_computed_tokens == out.num_new_tokens[out.seqs.index(s)]]
            assert out.num_tokens == budget and not admitted, \
                f"{where}: decodes {starved} left out while the budget was not spent or new " \
                f"prompts {admitted} came in"
        held = sum(len(s.block_table) for s in sched.running)
        assert held == num_blocks - sched.block_manager.num_free_blocks, \
            f"{where}: running sequences hold {held} blocks, the manager counts " \
            f"{num_blocks - sched.block_manager.num_free_blocks} in use"
        plans.append(plan(out))
    assert not sched.has_unfinished(), f"workload {workload}: unfinished after {max_steps} steps"
    return plans, sched.stats.num_preemptions


def random_workload(rng):
    workload = [(rng.randint(0, 6), rng.randint(1, 24), rng.randint(1, 10), rng.randint(0, 2))
                for _ in range(rng.randint(1, 8))]
    # Enough blocks for any one sequence to run alone, few enough to preempt often.
    most = max(-(-(p + o) // BLOCK) for _, p, o, _ in workload)
    return workload, rng.randint(most, most * 3)


@pytest.mark.task4_5
def test_random_workloads_step_by_step_as_minillm(Scheduler, rng):
    for _ in range(25):
        workload, num_blocks = random_workload(rng)
        budget, seats = rng.randint(1, 40), rng.randint(1, 6)
        mode, policy = rng.choice(["recompute", "swap"]), rng.choice(["fcfs", "priority"])
        args = (workload, num_blocks, budget, seats, mode, policy)
        want, want_preempted = run_workload(reference.Scheduler, *args)
        got, preempted = run_workload(Scheduler, *args)
        first = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), len(want))
        assert got == want and preempted == want_preempted, \
            f"workload {workload} (arrival step, prompt, output tokens, priority), {num_blocks} " \
            f"blocks, budget {budget}, max_num_seqs {seats}, {mode}, {policy}: step {first} " \
            f"planned {got[first:first + 1]}, minillm plans {want[first:first + 1]}; " \
            f"{preempted} preemptions, minillm {want_preempted}"


@pytest.mark.task4_5
@given(workload=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 20), st.integers(1, 8),
                                   st.integers(0, 2)), min_size=1, max_size=6),
       budget=st.integers(1, 32), seats=st.integers(1, 5), spare=st.integers(0, 8),
       mode=st.sampled_from(["recompute", "swap"]))
def test_invariants_hold_on_any_workload(Scheduler, workload, budget, seats, spare, mode):
    most = max(-(-(p + o) // BLOCK) for _, p, o, _ in workload)
    run_workload(Scheduler, workload, most + spare, budget, seats, mode, "fcfs")


# -- integration: your scheduler runs the engine -----------------------------------------------------
@pytest.mark.integration
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_engine_with_your_scheduler_generates_the_same_tokens(Scheduler, mode):
    from minillm import LLM

    prompts = ["Once upon a time", "The little dog ran to the park and", "A",
               "In the morning the sun", "She said that the", "Tom and his friend"]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    # Few blocks, a small budget and three seats: chunked prefills, waiting and preemptions.
    settings = dict(max_model_len=48, block_size=8, num_gpu_blocks_override=8,
                    max_num_batched_tokens=12, max_num_seqs=3, preemption_mode=mode,
                    enable_prefix_caching=False)

    def run(scheduler_cls):
        llm = LLM(scheduler_cls=scheduler_cls, **settings)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        return ([o.outputs[0].token_ids for o in outputs],
                llm.engine.scheduler.stats.num_preemptions)

    got, preemptions = run(Scheduler)
    want, want_preemptions = run(reference.Scheduler)
    assert want_preemptions > 0, "setup: this KV budget should force preemptions"
    for prompt, ids, want_ids in zip(prompts, got, want):
        assert ids == want_ids, \
            f"{prompt!r} ({mode}): tokens {ids} with your scheduler, {want_ids} with minillm's"
    assert preemptions == want_preemptions, \
        f"{mode}: {preemptions} preemptions with your scheduler, {want_preemptions} with minillm's"
