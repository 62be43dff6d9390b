"""Prove the labs have teeth: the tests must fail the untouched starter files and plausible
wrong solutions.

`make test-labs` first runs `pytest labs --reference --integration` (the tests pass on
minillm's reference), then this script, which

1. checks that each stub in a starter file keeps the exact signature of the reference it stands
   for (a learner's finished file must drop into the engine's place);
2. runs every lab's tests against the starter files (in one pytest session) and checks that each
   task marker has tests and that none of them passes;
3. grades each *mutant* in `MUTANTS` (the reference with one plausible mistake: an off-by-one,
   a forgotten held block, ignored reference counts, a wrong free-list order, `<` for `<=`...)
   with the tests of the task it breaks alone, and checks that at least one of them fails: a
   mistake must be caught by its own task, not only by a later one that builds on it.

A mutant is a list of (text of the reference, its replacement); if the reference changed so that
the text is no longer there exactly once, the script says so and fails: update the mutant.

`python tools/check_labs_fail.py lab04` checks one lab only. Exit status 0 when all hold, 1 otherwise, with a table of tasks and one line per mutant.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LABS = ROOT / "labs"


@dataclass(frozen=True)
class Mutant:
    task: str  # "3.2": the task whose own tests must catch it
    what: str  # the wrong solution, as a learner might write it
    edits: tuple[tuple[str, str], ...]  # (text of the reference, exactly once; its replacement)


def mutant(task: str, what: str, *edits: tuple[str, str]) -> Mutant:
    return Mutant(task, what, edits)


# The wrong solutions of issue 15 and other plausible ones, per lab folder.
MUTANTS: dict[str, list[Mutant]] = {
    "lab00_metrics": [
        mutant("0.1", "TTFT from the first token to the end",
               ("return record.first_token_s - record.arrival_s",
                "return record.end_s - record.first_token_s")),
        mutant("0.1", "TPOT divides by all the tokens, not the gaps between them",
               ("/ (record.output_tokens - 1)", "/ record.output_tokens")),
        mutant("0.2", "percentile at the nearest rank, no interpolation",
               ("return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)",
                "return ordered[round(rank)]")),
        mutant("0.2", "percentile off by one rank: q / 100 * n",
               ("rank = q / 100 * (len(ordered) - 1)", "rank = min(q / 100 * len(ordered), "
                                                       "len(ordered) - 1)")),
        mutant("0.2", "percentile of the unsorted values",
               ("ordered = sorted(values)", "ordered = list(values)")),
        mutant("0.3", "`<` for `<=`: a request exactly at the TTFT limit is not good",
               ("if time_to_first_token(r) <= ttft_limit_s",
                "if time_to_first_token(r) < ttft_limit_s")),
        mutant("0.3", "a one-token request (no TPOT) is never good",
               ("(time_per_output_token(r) is None or time_per_output_token(r) <= tpot_limit_s)",
                "(time_per_output_token(r) is not None and "
                "time_per_output_token(r) <= tpot_limit_s)")),
        mutant("0.3", "goodput per second of the last request's end, not of the run",
               ("duration = max(r.end_s for r in records) - min(r.arrival_s for r in records)",
                "duration = max(r.end_s for r in records)")),
        mutant("0.4", "utilisation of the final cache only (chapter 1's old 91 %)",
               ("stored = sum(r.output_tokens * r.prompt_tokens + r.output_tokens * "
                "(r.output_tokens - 1) // 2\n                 for r in records)\n"
                "    held = sum(r.output_tokens * r.reserved_tokens for r in records)",
                "stored = sum(r.prompt_tokens + r.output_tokens for r in records)\n"
                "    held = sum(r.reserved_tokens for r in records)")),
        mutant("0.4", "off by one: the last sampled token counted as cached",
               ("(r.output_tokens - 1) // 2", "(r.output_tokens + 1) // 2")),
    ],
    "lab01_kv_cache": [
        mutant("1.1", "K only, not K and V",
               ("return 2 * num_layers * num_kv_heads", "return num_layers * num_kv_heads")),
        mutant("1.2", "off by one token", ("return num_tokens * kv_cache_bytes_per_token",
                                           "return (num_tokens + 1) * kv_cache_bytes_per_token")),
        mutant("1.3", "float division, then int()",
               ("return budget_bytes // kv_cache_bytes_per_token(num_layers, num_kv_heads, "
                "head_dim,\n                                                     dtype_bytes)",
                "return int(budget_bytes / kv_cache_bytes_per_token(num_layers, num_kv_heads, "
                "head_dim, dtype_bytes))")),
        mutant("1.3", "float division", ("return budget_bytes // kv_cache_bytes_per_token(",
                                         "return budget_bytes / kv_cache_bytes_per_token(")),
        mutant("1.4", "2048-token requests hard-coded",
               ("dtype_bytes) // tokens_per_request", "dtype_bytes) // 2048")),
        mutant("1.4", "rounded to the nearest request, not down",
               ("return max_cached_tokens(budget_bytes, num_layers, num_kv_heads, head_dim,\n"
                "                             dtype_bytes) // tokens_per_request",
                "return round(max_cached_tokens(budget_bytes, num_layers, num_kv_heads, "
                "head_dim,\n                             dtype_bytes) / tokens_per_request)")),
    ],
    "lab02_contiguous": [
        mutant("2.1", "off by one: zero-length gaps kept as holes",
               ("        if start > cursor:", "        if start >= cursor:")),
        mutant("2.1", "the hole after the last region forgotten",
               ("holes.append((cursor, capacity - cursor))", "pass")),
        mutant("2.1", "regions assumed sorted", ("in sorted(regions):", "in regions:")),
        mutant("2.2", "first fit assumes sorted holes", ("in sorted(holes):", "in holes:")),
        mutant("2.2", "`>` for `>=`: a hole of exactly the size does not fit",
               ("        if length >= size:", "        if length > size:")),
        mutant("2.2", "best fit breaks ties by list order, not by address",
               ("return min(fitting)[1] if fitting", "return min(fitting, key=lambda f: f[0])[1] "
                                                     "if fitting")),
        mutant("2.3", "`<=` for `<`: a hole of exactly the size counted as unusable",
               ("if length < request_size)", "if length <= request_size)")),
        mutant("2.4", "append refuses to fill a region exactly (`>=` for `>`)",
               ("if region.used + num_tokens > region.size:",
                "if region.used + num_tokens >= region.size:")),
        mutant("2.4", "a request may hold two regions",
               ("        if request_id in self.regions:\n            raise ValueError",
                "        if False:\n            raise ValueError")),
        mutant("2.4", "every request placed first fit, whatever the policy",
               ("place = first_fit if self.policy == \"first_fit\" else best_fit",
                "place = first_fit")),
        mutant("2.5", "holes of exactly the waiting size marked external (contradicts 2.3)",
               ("if length < waiting_size:", "if length <= waiting_size:")),
        mutant("2.5", "KeyError for a request missing from final_lengths",
               ("final = min(final_lengths.get(r.request_id, r.size), r.size)",
                "final = min(final_lengths[r.request_id], r.size)")),
        mutant("2.5", "off by one: the first future slot left free",
               ("codes[r.start + r.used:r.start + max(final, r.used)] = RESERVED",
                "codes[r.start + r.used + 1:r.start + max(final, r.used)] = RESERVED")),
    ],
    "lab03_paged_blocks": [
        mutant("3.1", "off by one: n // size + 1", ("return -(-num_tokens // block_size)",
                                                    "return num_tokens // block_size + 1")),
        mutant("3.1", "rounded down", ("return -(-num_tokens // block_size)",
                                       "return num_tokens // block_size")),
        mutant("3.2", "can_allocate forgets the blocks the sequence already holds",
               ("return needed - len(seq.block_table) + self._needs_copy(seq) <= "
                "self.num_free_blocks", "return needed + self._needs_copy(seq) <= "
                                        "self.num_free_blocks")),
        mutant("3.2", "`<` for `<=`: the last free block is never used",
               ("+ self._needs_copy(seq) <= self.num_free_blocks",
                "+ self._needs_copy(seq) < self.num_free_blocks")),
        mutant("3.2", "ref counts ignored: a block taken keeps ref_count 0",
               ("block.hash, block.token_ids, block.ref_count = None, [], 1",
                "block.hash, block.token_ids = None, []")),
        mutant("3.2", "not all or nothing: takes what is free, then reports failure",
               ("        if not self.can_allocate(seq, num_new_tokens):\n"
                "            return False\n",
                "        ok = self.can_allocate(seq, num_new_tokens)\n"),
               ("        while len(seq.block_table) < needed:\n"
                "            seq.block_table.append(self._take_free_block())\n        return True",
                "        while len(seq.block_table) < needed and self.free_block_ids:\n"
                "            seq.block_table.append(self._take_free_block())\n        return ok")),
        mutant("3.3", "off by one: a new block one token early",
               ("            self._copy_on_write(seq)\n        needed = blocks_for("
                "seq.num_computed_tokens + num_new_tokens, self.block_size)",
                "            self._copy_on_write(seq)\n        needed = blocks_for("
                "seq.num_computed_tokens + num_new_tokens + 1, self.block_size)")),
        mutant("3.4", "ref counts ignored: every block goes back, even one still shared",
               ("        if block.ref_count == 0:\n            self.free_block_ids[block_id]",
                "        if True:\n            self.free_block_ids[block_id]")),
        mutant("3.4", "freed blocks pushed to the front of the free list",
               ("self.free_block_ids[block_id] = None",
                "self.free_block_ids[block_id] = None\n"
                "            self.free_block_ids.move_to_end(block_id, last=False)")),
        mutant("3.4", "blocks freed first to last (the prompt's first blocks reused first)",
               ("for block_id in reversed(seq.block_table):\n            self._release",
                "for block_id in seq.block_table:\n            self._release")),
        mutant("3.4", "the block table is not emptied",
               ("self._release(block_id)\n        seq.block_table = []",
                "self._release(block_id)")),
    ],
    "lab04_scheduler": [
        mutant("4.1", "a preempted sequence's blocks are not freed",
               ("            self.block_manager.free(seq)\n            seq.reset_for_recompute()\n"
                "            self.waiting.append(seq)",
                "            seq.reset_for_recompute()\n            self.waiting.append(seq)")),
        mutant("4.1", "recompute keeps the computed tokens (blocks freed, nothing reset)",
               ("            seq.reset_for_recompute()\n            self.waiting.append(seq)",
                "            seq.block_table, seq.status = [], SequenceStatus.WAITING\n"
                "            self.waiting.append(seq)")),
        mutant("4.1", "swap without checking that the CPU pool has room",
               ('if self.config.preemption_mode == "swap" and self.block_manager.can_swap_out(seq):',
                'if self.config.preemption_mode == "swap":')),
        mutant("4.1", "preemptions not counted",
               ("        self.stats.num_preemptions += 1\n", "")),
        mutant("4.2", "preempts the oldest instead of the newest",
               ("victim = max((s for s in self.running if s not in out.seqs), key=self.order)",
                "victim = min((s for s in self.running if s not in out.seqs), key=self.order)")),
        mutant("4.2", "the victim is the last in the running queue, not the last in order",
               ("victim = max((s for s in self.running if s not in out.seqs), key=self.order)",
                "victim = [s for s in self.running if s not in out.seqs][-1]")),
        mutant("4.2", "one victim at most, whether or not the blocks then fit",
               ("        while not self.block_manager.allocate(seq, num_new):",
                "        if not self.block_manager.allocate(seq, num_new):")),
        mutant("4.2", "True even when the sequence preempted itself",
               ("            if victim is seq:\n                return False\n", "")),
        mutant("4.3", "a chunk ignores the tokens already computed",
               ("            num_new = min(seq.num_uncomputed_tokens, budget)\n"
                "            if self._allocate_or_preempt",
                "            num_new = min(seq.num_tokens, budget)\n"
                "            if self._allocate_or_preempt")),
        mutant("4.3", "a prefill under way takes the rest of its prompt, over the budget",
               ("            num_new = min(seq.num_uncomputed_tokens, budget)\n"
                "            if self._allocate_or_preempt",
                "            num_new = seq.num_uncomputed_tokens\n"
                "            if self._allocate_or_preempt")),
        mutant("4.3", "`<` for `==`: a spent budget still schedules 0-token entries",
               ("            if budget == 0:\n                break\n            if seq.status",
                "            if budget < 0:\n                break\n            if seq.status")),
        mutant("4.3", "a victim preempted earlier in the loop is scheduled anyway",
               ("            if seq.status != SequenceStatus.RUNNING:\n"
                "                continue  # preempted as a victim earlier in this loop\n", "")),
        mutant("4.3", "the budget is not spent by the running sequences",
               ("                budget -= num_new\n        return budget",
                "        return budget")),
        mutant("4.4", "max_num_seqs forgotten",
               ("if budget == 0 or len(self.running) >= self.config.max_num_seqs or self.swapped:",
                "if budget == 0 or self.swapped:")),
        mutant("4.4", "`>` for `>=`: one sequence more than max_num_seqs",
               ("len(self.running) >= self.config.max_num_seqs",
                "len(self.running) > self.config.max_num_seqs")),
        mutant("4.4", "a prompt that does not fit is skipped: a later one jumps the queue",
               ("            if num_new is None:\n                break",
                "            if num_new is None:\n                continue")),
        mutant("4.4", "admits while a swapped-out sequence waits to come back",
               ("if budget == 0 or len(self.running) >= self.config.max_num_seqs or self.swapped:",
                "if budget == 0 or len(self.running) >= self.config.max_num_seqs:")),
        mutant("4.4", "an admitted sequence stays in the waiting queue",
               ("            self.waiting.remove(seq)\n            seq.status = SequenceStatus.RUNNING\n"
                "            self.running.append(seq)\n            out.add(seq, num_new)",
                "            seq.status = SequenceStatus.RUNNING\n"
                "            self.running.append(seq)\n            out.add(seq, num_new)")),
        mutant("4.4", "admissions do not spend the budget",
               ("            out.add(seq, num_new)\n            budget -= num_new\n\n"
                "    def _allocate_prompt",
                "            out.add(seq, num_new)\n\n    def _allocate_prompt")),
        mutant("4.5", "new prompts before the running sequences' decodes",
               ("        budget = self._schedule_running(out, budget)\n"
                "        if self.stats.num_preemptions == preemptions:\n"
                "            self._swap_in()  # they run from the next step on\n"
                "            self._schedule_waiting(out, budget)",
                "        self._swap_in()\n"
                "        self._schedule_waiting(out, budget)\n"
                "        self._schedule_running(out, budget - out.num_tokens)")),
        mutant("4.5", "new prompts admitted in a step that preempted",
               ("        if self.stats.num_preemptions == preemptions:\n",
                "        if True:\n")),
        mutant("4.5", "the block moves are not handed to the runner",
               ("        out.moves = self.block_manager.take_moves()\n", "")),
        mutant("4.5", "swapped-out sequences come back after the admissions",
               ("            self._swap_in()  # they run from the next step on\n"
                "            self._schedule_waiting(out, budget)",
                "            self._schedule_waiting(out, budget)\n            self._swap_in()")),
    ],
    "lab05_paged_decode": [
        mutant("5.1", "the logical block used as the physical one (block table ignored)",
               ("block = tl.load(block_table + pos // block_size, mask=in_range, other=0)",
                "block = pos // block_size")),
        mutant("5.1", "the slot is the position, not the position within its block",
               ("(pos % block_size) * stride_c_slot", "pos * stride_c_slot")),
        mutant("5.1", "the KV head's offset forgotten",
               ("* stride_c_slot\n               + head_offset)", "* stride_c_slot)")),
        mutant("5.1", "K past the context read unmasked",
               ("k = tl.load(k_cache_ptr + offsets[:, None] + dims[None, :], "
                "mask=in_range[:, None], other=0.0)",
                "k = tl.load(k_cache_ptr + offsets[:, None] + dims[None, :])")),
        mutant("5.2", "one program per KV head: groups over GROUP_ROWS not sliced",
               ("kv_head = slice_id // slices_per_kv_head", "kv_head = slice_id")),
        mutant("5.2", "GROUP_ROWS hard-coded as 16",
               ("slices_per_kv_head = tl.cdiv(group_size, GROUP_ROWS)",
                "slices_per_kv_head = tl.cdiv(group_size, 16)")),
        mutant("5.2", "`<=` for `<`: one padding row taken for a real head",
               ("first_in_group + rows < group_size", "first_in_group + rows <= group_size")),
        mutant("5.2", "query heads numbered from the KV head, not from its group",
               ("heads = kv_head * group_size + first_in_group + rows",
                "heads = kv_head + first_in_group + rows")),
        mutant("5.3", "the output so far not rescaled when the max grows",
               ("acc_new = acc * alpha[:, None] + tl.dot", "acc_new = acc + tl.dot")),
        mutant("5.3", "the running sum not rescaled when the max grows",
               ("l_new = l_i * alpha + tl.sum(p, axis=1)", "l_new = l_i + tl.sum(p, axis=1)")),
        mutant("5.3", "exp for exp2 (scores are in log2 units)",
               ("p = tl.exp2(scores - m_new[:, None])", "p = tl.exp(scores - m_new[:, None])")),
        mutant("5.3", "the max of this tile only, not of everything seen",
               ("m_new = tl.maximum(m_i, tl.max(scores, axis=1))",
                "m_new = tl.max(scores, axis=1)")),
        mutant("5.4", "partitions weighted by exp2(lse) itself (overflows)",
               ("weight = tl.exp2(lse - new_max)", "weight = tl.exp2(lse)")),
        mutant("5.4", "every partition weighted alike (a plain mean)",
               ("weight = tl.exp2(lse - new_max)", "weight = 1.0")),
        mutant("5.4", "the output so far not rescaled when the max grows",
               ("acc * rescale + weight * part_out", "acc + weight * part_out")),
        mutant("5.4", "the sum of weights not rescaled when the max grows",
               ("weight_sum * rescale + weight", "weight_sum + weight")),
    ],
    "lab06_sampler": [
        mutant("6.1", "`<=` for `<`: a row that reached min_tokens still cannot stop",
               ("if len(out) < p.min_tokens]", "if len(out) <= p.min_tokens]")),
        mutant("6.1", "stop tokens forgotten: only EOS masked",
               ("[*eos_token_ids, *params[row].stop_token_ids]", "[*eos_token_ids]")),
        mutant("6.1", "a row with ignore_eos not held to min_tokens",
               ("if len(out) < p.min_tokens]", "if len(out) < p.min_tokens and not p.ignore_eos]")),
        mutant("6.2", "repetition penalty divides negative logits too (makes them likelier)",
               ("logits = torch.where(logits > 0, logits / factor, logits * factor)",
                "logits = logits / factor")),
        mutant("6.2", "frequency counted over the prompt as well as the output",
               ("return logits - frequency[:, None] * output_counts",
                "return logits - frequency[:, None] * (output_counts + token_counts(prompt_ids, "
                "vocab, logits.device))")),
        mutant("6.2", "repetition over the output only, the prompt forgotten",
               ("seen = (token_counts(prompt_ids, vocab, logits.device) > 0) | (output_counts > 0)",
                "seen = output_counts > 0")),
        mutant("6.2", "presence penalty multiplied by the count",
               ("presence[:, None] * (output_counts > 0)", "presence[:, None] * output_counts")),
        mutant("6.2", "token_counts marks presence (0/1), does not count",
               ("counts.scatter_add_(1, padded.to(device), torch.ones(padded.shape, "
                "device=device))", "counts.scatter_(1, padded.to(device), 1.0)")),
        mutant("6.3", "logits multiplied by the temperature",
               ("return logits / temperature[:, None]", "return logits * temperature[:, None]")),
        mutant("6.4", "top-p keeps one token too few: the token that crosses top_p is dropped",
               ("mass_before = probs.cumsum(dim=-1) - probs",
                "mass_before = probs.cumsum(dim=-1)")),
        mutant("6.4", "top-p keeps one token too many on the boundary (`>` for `>=`)",
               ("reached = mass_before >= top_p[:, None] - TOP_P_TOLERANCE",
                "reached = mass_before > top_p[:, None]")),
        mutant("6.4", "top-p over the whole distribution, not the top-k renormalised",
               ("    sorted_logits = sorted_logits.masked_fill(rank >= k[:, None], "
                "float(\"-inf\"))\n    probs = sorted_logits.softmax(dim=-1)",
                "    probs = sorted_logits.softmax(dim=-1)\n    sorted_logits = "
                "sorted_logits.masked_fill(rank >= k[:, None], float(\"-inf\"))")),
        mutant("6.4", "top-k keeps k + 1 tokens", ("rank >= k[:, None]", "rank > k[:, None]")),
        mutant("6.4", "top_k -1 taken literally (only 0 means all)",
               ("k = torch.where(top_k > 0, top_k, vocab)",
                "k = torch.where(top_k != 0, top_k, vocab)")),
        mutant("6.4", "top_p 1 not special: rounding drops a long tail",
               ("drop = reached & (rank > 0) & (top_p[:, None] < 1)",
                "drop = reached & (rank > 0)")),
        mutant("6.5", "min_p relative to the largest logit, not the largest probability",
               ("threshold = min_p[:, None] * probs.max(dim=-1, keepdim=True).values",
                "threshold = min_p[:, None] * logits.max(dim=-1, keepdim=True).values")),
        mutant("6.5", "min_p as an absolute probability",
               ("threshold = min_p[:, None] * probs.max(dim=-1, keepdim=True).values",
                "threshold = min_p[:, None]")),
        mutant("6.5", "`<=` for `<`: min_p 1 drops even the top token",
               ("probs < threshold", "probs <= threshold")),
        mutant("6.6", "temperature applied after top-k, top-p and min-p",
               ("logits = apply_temperature(logits, temperature).clamp(",
                "logits = logits.clamp("),
               ("    return logits.softmax(dim=-1)",
                "    return apply_temperature(logits, temperature).softmax(dim=-1)")),
        mutant("6.6", "one generator for the whole batch",
               ("_draw(probs[row], generator)", "_draw(probs[row], generators[0])")),
        mutant("6.6", "logprobs read after the penalties",
               ("    chosen = raw_logprobs.gather(",
                "    raw_logprobs = torch.log_softmax(logits, dim=-1)\n"
                "    chosen = raw_logprobs.gather(")),
        mutant("6.6", "greedy rows take the argmax before min_tokens and penalties",
               ("    logits = apply_min_tokens(logits, params, output_ids, eos_token_ids)\n",
                "    greedy_ids = logits.argmax(dim=-1).tolist()\n"
                "    logits = apply_min_tokens(logits, params, output_ids, eos_token_ids)\n"),
               ("    greedy_ids = logits.argmax(dim=-1).tolist()\n    probs",
                "    probs")),
    ],
    "lab07_prefix_cache": [
        mutant("7.1", "the key ignores the parent (a block's tokens alone)",
               ('hashlib.sha256((parent or b"") + array("q", tokens).tobytes())',
                'hashlib.sha256(array("q", tokens).tobytes())')),
        mutant("7.1", "tokens hashed as 4-byte ints", ('array("q", tokens)', 'array("i", tokens)')),
        mutant("7.1", "each new block keyed without its parent's key",
               ("parent = seq.block_hashes[-1] if seq.block_hashes else None", "parent = None")),
        mutant("7.1", "the partly filled last block keyed too",
               ("range(len(seq.block_hashes), seq.num_computed_tokens // self.block_size)",
                "range(len(seq.block_hashes), blocks_for(seq.num_computed_tokens, "
                "self.block_size))")),
        mutant("7.1", "a key cached twice points at the later block",
               ("if key not in self.cached and block.hash is None:",
                "if block.hash is None:")),
        mutant("7.1", "the block's tokens not kept (a hit cannot be checked)",
               ("block.hash, block.token_ids = key, tokens", "block.hash = key")),
        mutant("7.2", "evicting the most recently freed block, not the least",
               ("self.free_block_ids.popitem(last=False)",
                "self.free_block_ids.popitem(last=True)")),
        mutant("7.2", "an evicted block's key left in the cache",
               ("del self.cached[block.hash]  # evict its cached prefix", "pass")),
        mutant("7.2", "a taken block keeps its old key and tokens",
               ("block.hash, block.token_ids, block.ref_count = None, [], 1",
                "block.ref_count = 1")),
        mutant("7.2", "reuse without bumping ref_count",
               ("            del self.free_block_ids[block_id]\n        block.ref_count += 1",
                "            del self.free_block_ids[block_id]")),
        mutant("7.2", "an adopted free block left on the free list",
               ("            del self.free_block_ids[block_id]\n        block.ref_count += 1",
                "            pass\n        block.ref_count += 1")),
        mutant("7.2", "freed cached blocks forgotten: only blocks still held are reused",
               ("if block_id is None or self.blocks[block_id].token_ids != tokens:",
                "if block_id is None or self.blocks[block_id].ref_count == 0 "
                "or self.blocks[block_id].token_ids != tokens:")),
        mutant("7.2", "the whole prompt reused, no token left to compute",
               ("range((seq.num_tokens - 1) // self.block_size)",
                "range(seq.num_tokens // self.block_size)")),
        mutant("7.2", "adopted tokens not counted as computed",
               ("seq.num_computed_tokens = seq.num_cached_tokens = len(seq.block_table)",
                "seq.num_cached_tokens = len(seq.block_table)")),
        mutant("7.3", "copy-on-write writes in place (the shared block kept)",
               ("        seq.block_table[last] = self._take_free_block()\n"
                "        self._release(shared)\n"
                "        self.moves.copies.append((shared, seq.block_table[last]))",
                "        pass")),
        mutant("7.3", "the copy recorded backwards (new block onto the shared one)",
               ("self.moves.copies.append((shared, seq.block_table[last]))",
                "self.moves.copies.append((seq.block_table[last], shared))")),
        mutant("7.3", "the shared block's reference not dropped after the copy",
               ("        self._release(shared)\n", "")),
        mutant("7.3", "fork without bumping ref counts",
               ("        for block_id in parent.block_table:\n"
                "            self.blocks[block_id].ref_count += 1\n", "")),
        mutant("7.3", "fork aliases the parent's block table (one list for two sequences)",
               ("child.block_table = list(parent.block_table)",
                "child.block_table = parent.block_table")),
        mutant("7.3", "fork: the child starts with no computed tokens",
               ("        child.num_computed_tokens = parent.num_computed_tokens\n", "")),
    ],
    "lab08_streaming": [
        mutant("8.1", "each chunk carries the whole text so far, not the new part",
               ("+ c.index, *part,", "+ c.index, c.text, 0,")),
        mutant("8.1", "no `data: [DONE]` at the end", ("    yield SSE_DONE", "    return")),
        mutant("8.2", "choice index from the sample alone (prompts of a batch collide)",
               ("i * request.n + c.index, *part", "c.index, *part")),
        mutant("8.2", "usage counted over the first prompt only",
               ("usage=usage([s.last for s in streams])))", "usage=usage([streams[0].last])))")),
        mutant("8.2", "a usage chunk whether or not include_usage asked for it",
               ("    if request.include_usage:", "    if True:")),
        mutant("8.3", "no abort on disconnect: the engine generates on for no one",
               ("async with serving.tracked(streams):", "async with serving.tracked([]):")),
    ],
    "lab09_capacity": [
        mutant("9.1", "capacity from the mean latency, not the p99",
               ('if r["p99_ttft_ms"] <= ttft_ms and r["p99_tpot_ms"] <= tpot_ms]',
                'if r["mean_ttft_ms"] <= ttft_ms and r["mean_tpot_ms"] <= tpot_ms]')),
        mutant("9.1", "`<` for `<=`: a run exactly at the limit does not meet it",
               ('if r["p99_ttft_ms"] <= ttft_ms and r["p99_tpot_ms"] <= tpot_ms]',
                'if r["p99_ttft_ms"] < ttft_ms and r["p99_tpot_ms"] < tpot_ms]')),
        mutant("9.1", "replicas rounded to the nearest, not up",
               ("return max(1, math.ceil(target_rps / goodput_per_replica))",
                "return max(1, round(target_rps / goodput_per_replica))")),
        mutant("9.1", "replicas rounded down, then one more",
               ("return max(1, math.ceil(target_rps / goodput_per_replica))",
                "return int(target_rps // goodput_per_replica) + 1")),
        mutant("9.2", "HPA: round instead of ceil",
               ("else math.ceil(current * ratio)", "else round(current * ratio)")),
        mutant("9.2", "HPA: the tolerance ignored",
               ("desired = current if abs(ratio - 1) <= tolerance else math.ceil(current * ratio)",
                "desired = math.ceil(current * ratio)")),
        mutant("9.2", "HPA: the tolerance on the way up only (never scales down)",
               ("if abs(ratio - 1) <= tolerance", "if ratio - 1 <= tolerance")),
        mutant("9.2", "HPA: maxReplicas off by one",
               ("return min(max(desired, min_replicas), max_replicas)",
                "return min(max(desired, min_replicas), max_replicas - 1)")),
        mutant("9.2", "HPA: minReplicas off by one",
               ("return min(max(desired, min_replicas), max_replicas)",
                "return min(max(desired, min_replicas + 1), max_replicas)")),
        mutant("9.2", "stabilization window ignored: the newest recommendation at once (oscillates)",
               ("    return min(max(current, up), down)", "    return newest")),
        mutant("9.2", "stabilization window includes its edge (`>=`)",
               ("if t > now - down_window_s])", "if t >= now - down_window_s])")),
        mutant("9.2", "stabilization: the lowest recommendation holds a scale-down",
               ("    down = max([newest] +", "    down = min([newest] +")),
        mutant("9.3", "policy without a scale-down window (oscillates)",
               ("max_replicas=replicas_needed(peak_rps, replica.capacity_rps) + 1)",
                "max_replicas=replicas_needed(peak_rps, replica.capacity_rps) + 1,\n"
                "                     down_window_s=0)")),
        mutant("9.3", "policy targets 100 % of a replica's capacity: no headroom",
               ("    headroom = 0.6", "    headroom = 1.0")),
        mutant("9.3", "policy with maxReplicas below the peak's need",
               ("max_replicas=replicas_needed(peak_rps, replica.capacity_rps) + 1)",
                "max_replicas=replicas_needed(peak_rps, replica.capacity_rps) - 1)")),
        mutant("9.3", "policy that never scales: maxReplicas from the start",
               ("min_replicas=replicas_needed(base_rps, headroom * replica.capacity_rps) + 1,",
                "min_replicas=replicas_needed(peak_rps, replica.capacity_rps) + 1,")),
    ],
}


def lab_modules(only: str = "") -> list[tuple[Path, str, str]]:
    """(test file, STARTER file name, REFERENCE module) for every lab test module (or one lab's:
    `only` is a folder name such as "lab03_paged_blocks" or its prefix "lab03")."""
    found = []
    for test in sorted(LABS.glob((only + "*" if only else "lab*") + "/test_*.py")):
        names = {}
        for node in ast.parse(test.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name) \
                    and node.targets[0].id in ("STARTER", "REFERENCE"):
                names[node.targets[0].id] = ast.literal_eval(node.value)
        if {"STARTER", "REFERENCE"} <= names.keys():
            found.append((test, names["STARTER"], names["REFERENCE"]))
    return found


def is_stub(fn) -> bool:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return "raise NotImplementedError" in source


def signature_problems(starter_path: Path, reference: str) -> list[str]:
    sys.path.insert(0, str(LABS))
    from conftest import load_starter  # labs/conftest.py

    starter, ref = load_starter(starter_path), importlib.import_module(reference)
    problems = []
    for name, obj in vars(starter).items():
        if inspect.isfunction(obj) and obj.__module__ == starter.__name__ and is_stub(obj):
            pairs = [(name, obj, getattr(ref, name, None))]
        elif inspect.isclass(obj) and obj.__module__ == starter.__name__:
            ref_cls = getattr(ref, name, None)
            pairs = [(f"{name}.{m}", f, getattr(ref_cls, m, None))
                     for m, f in vars(obj).items() if inspect.isfunction(f) and is_stub(f)]
        else:
            continue
        for qualname, fn, ref_fn in pairs:
            if ref_fn is None:
                problems.append(f"{starter_path.relative_to(ROOT)}: {qualname} is not in "
                                f"{reference}")
            elif inspect.signature(fn) != inspect.signature(ref_fn):
                problems.append(f"{starter_path.relative_to(ROOT)}: {qualname}"
                                f"{inspect.signature(fn)} != reference "
                                f"{inspect.signature(ref_fn)}")
    return problems


class TaskOutcomes:
    """A pytest plugin that records, per task marker, how each test ended."""

    def __init__(self):
        self.task_of: dict[str, list[str]] = {}
        self.outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.failures: list[str] = []

    def pytest_collection_modifyitems(self, items):
        for item in items:
            self.task_of[item.nodeid] = [m.name for m in item.iter_markers()
                                         if m.name.startswith("task") or m.name == "integration"]

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            if report.outcome == "failed":
                self.failures.append(report.nodeid)
            for task in self.task_of.get(report.nodeid) or ["(no task marker)"]:
                self.outcomes[task][report.outcome] += 1


def run_pytest(args: list[str]) -> TaskOutcomes:
    plugin = TaskOutcomes()
    pytest.main([*args, "-p", "no:terminal", "-p", "no:cacheprovider", "-o", "addopts=",
                 "--hypothesis-profile", "labs-check"], plugins=[plugin])
    return plugin


def mutant_problems(folder: str, mutants: list[Mutant], test: Path, reference: str,
                    workdir: Path) -> list[str]:
    """Grade each mutant of `reference` with its own task's tests; a problem per survivor."""
    source_path = Path(importlib.util.find_spec(reference).origin)
    source = source_path.read_text(encoding="utf-8")
    problems = []
    for i, m in enumerate(mutants):
        text = source
        for old, new in m.edits:
            if text.count(old) != 1:
                problems.append(f"mutant {m.task} '{m.what}' no longer applies: "
                                f"{source_path.relative_to(ROOT)} holds {old!r} "
                                f"{text.count(old)} times, not once; update MUTANTS")
                break
            text = text.replace(old, new)
        else:
            path = workdir / f"{folder}_mutant_{i}.py"
            path.write_text(text, encoding="utf-8")
            try:
                compile(text, str(path), "exec")
            except SyntaxError as e:
                problems.append(f"mutant {m.task} '{m.what}' is not valid Python: {e}")
                continue
            outcome = run_pytest([str(test), "--impl", str(path), "-x",
                                  "-m", "task" + m.task.replace(".", "_")])
            caught = outcome.failures[0].split("::")[-1] if outcome.failures else None
            ran = sum(sum(c.values()) for c in outcome.outcomes.values())
            print(f"  {m.task:4} {'caught by ' + caught if caught else 'NOT CAUGHT':62.62} "
                  f"{m.what}")
            if not caught:
                problems.append(f"mutant {m.task} '{m.what}' passes all {ran} tests of task "
                                f"{m.task}")
    return problems


def main(argv: list[str]) -> int:
    only = argv[0] if argv else ""  # `check_labs_fail.py lab04`: one lab only
    labs = lab_modules(only)
    if not labs:
        print("no lab tests found under labs/")
        return 1
    problems = []
    for test, starter, reference in labs:
        problems += signature_problems(test.parent / starter, reference)

    plugin = run_pytest([*sorted({str(test.parent) for test, _, _ in labs}), "--integration"])
    if not plugin.outcomes:
        problems.append("no lab test ran against the starter files")
    print(f"\n{'task':12} {'failed':>7} {'passed':>7}  against the starter files")
    for task in sorted(plugin.outcomes, key=lambda t: (0, [int(x) for x in t[4:].split("_")])
                       if t.startswith("task") else (1, t)):
        counts = plugin.outcomes[task]
        failed = counts["failed"]
        passed = counts["passed"] + counts["skipped"]
        print(f"{task:12} {failed:7d} {passed:7d}")
        if task == "(no task marker)":
            problems.append(f"{failed + passed} lab tests carry no task marker")
        elif passed or not failed:
            problems.append(f"{task}: {passed} test(s) pass (or skip) on the untouched starter")

    print("\nmutants of the reference, each graded by its own task's tests:")
    with tempfile.TemporaryDirectory() as tmp:
        for test, _, reference in labs:
            folder = test.parent.name
            if folder not in MUTANTS:
                problems.append(f"{folder}: no mutants in MUTANTS (every lab needs some)")
                continue
            problems += mutant_problems(folder, MUTANTS[folder], test, reference, Path(tmp))
    if problems:
        print("\nthe labs lack teeth:\n  " + "\n  ".join(problems))
        return 1
    print(f"\nall {len(plugin.outcomes)} tasks fail on the starter files and all "
          f"{sum(len(MUTANTS[t.parent.name]) for t, _, _ in labs)} mutants fail their own task, as they must")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
