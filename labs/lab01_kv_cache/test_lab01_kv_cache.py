"""Lab 1 tests. `make grade LAB=lab01` grades all tasks, `make grade LAB=lab01 TASK=1.2` one.

Expected values come from the real cache tensor, from published model configs, or from exact
integer arithmetic in the test; random shapes and budgets are drawn fresh each run (`rng`) and
by hypothesis, so no single number can be hard-coded.
"""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

STARTER = "kv_cache.py"
REFERENCE = "minillm.memory.sizing"

LLAMA3_8B = dict(num_layers=32, num_kv_heads=8, head_dim=128)  # GQA: 32 query heads, 8 KV heads
LLAMA2_13B = dict(num_layers=40, num_kv_heads=40, head_dim=128)  # MHA


def tiny_model(num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8):
    """A minillm model with random weights, small enough to build in milliseconds."""
    from minillm.model import LlamaForCausalLM, ModelConfig

    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=32,
                      hidden_size=num_heads * head_dim, intermediate_size=16,
                      num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
                      head_dim=head_dim, rms_norm_eps=1e-5, max_position_embeddings=64,
                      tie_word_embeddings=True, qkv_bias=False, o_bias=False, mlp_bias=False,
                      qk_norm=False, rope={"rope_type": "default", "rope_theta": 10000.0})
    return LlamaForCausalLM(cfg)


def shape_args(layers, kv_heads, head_dim, dtype_bytes):
    return dict(num_layers=layers, num_kv_heads=kv_heads, head_dim=head_dim,
                dtype_bytes=dtype_bytes)


shapes = st.tuples(st.integers(1, 128), st.integers(1, 64), st.sampled_from([32, 64, 80, 128, 256]),
                   st.sampled_from([1, 2, 4]))


# -- 1.1 ----------------------------------------------------------------------------------------
@pytest.mark.task1_1
@pytest.mark.parametrize("model,want", [(LLAMA3_8B, 131072), (LLAMA2_13B, 819200)])
def test_per_token_known_models(impl, model, want):
    # fp16 Llama-3-8B: 2 x 32 x 8 x 128 x 2 bytes = 128 KiB per token; the PagedAttention
    # paper's 13B model: about 800 KB per token
    got = impl.kv_cache_bytes_per_token(**model, dtype_bytes=2)
    assert got == want, f"kv_cache_bytes_per_token({model}, dtype_bytes=2) returned {got}, " \
                        f"expected {want}"


@pytest.mark.task1_1
@pytest.mark.parametrize("layers,heads,kv_heads,head_dim,dtype", [
    (1, 1, 1, 4, torch.float32), (3, 4, 2, 8, torch.float32), (2, 6, 1, 16, torch.float16),
    (4, 4, 4, 8, torch.bfloat16)])
def test_per_token_matches_the_real_cache_tensor(impl, layers, heads, kv_heads, head_dim, dtype):
    from minillm.naive import ContiguousKVCache

    model = tiny_model(layers, heads, kv_heads, head_dim).to(dtype)
    cache = ContiguousKVCache(model, max_len=1)  # room for exactly one token
    real = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
    dtype_bytes = torch.tensor([], dtype=dtype).element_size()
    got = impl.kv_cache_bytes_per_token(layers, kv_heads, head_dim, dtype_bytes)
    assert got == real, f"kv_cache_bytes_per_token({layers}, {kv_heads}, {head_dim}, " \
                        f"{dtype_bytes}) returned {got}; the real K and V tensors of a " \
                        f"{layers}-layer model with {kv_heads} KV heads hold {real} bytes a token"


@pytest.mark.task1_1
def test_per_token_random_real_caches(impl, rng):
    from minillm.naive import ContiguousKVCache

    for _ in range(4):
        kv_heads = rng.randint(1, 4)
        layers, heads = rng.randint(1, 5), kv_heads * rng.randint(1, 3)
        head_dim = 4 * rng.randint(1, 4)
        cache = ContiguousKVCache(tiny_model(layers, heads, kv_heads, head_dim), max_len=1)
        real = 2 * cache.k.numel() * cache.k.element_size()
        got = impl.kv_cache_bytes_per_token(layers, kv_heads, head_dim, 4)
        assert got == real, f"kv_cache_bytes_per_token({layers}, {kv_heads}, {head_dim}, 4) " \
                            f"returned {got}, the real cache holds {real} bytes a token"


# -- 1.2 ----------------------------------------------------------------------------------------
@pytest.mark.task1_2
def test_bytes_match_a_real_cache(impl):
    from minillm.naive import ContiguousKVCache

    cache = ContiguousKVCache(tiny_model(), max_len=50)
    real = 2 * cache.k.numel() * cache.k.element_size()
    got = impl.kv_cache_bytes(3, 2, 8, 50, 4)
    assert got == real, f"kv_cache_bytes(3, 2, 8, 50, 4) returned {got}, the real cache of 50 " \
                        f"tokens holds {real} bytes"
    # A 4K-token conversation with Llama-3-8B in fp16 needs half a GiB
    got = impl.kv_cache_bytes(**LLAMA3_8B, num_tokens=4096, dtype_bytes=2)
    assert got == 2 ** 29, f"kv_cache_bytes(Llama-3-8B, 4096 tokens, fp16) returned {got}, " \
                           f"expected {2 ** 29}"


@pytest.mark.task1_2
@given(shape=shapes, num_tokens=st.integers(0, 10 ** 6))
def test_bytes_for_tokens_any_shape(impl, shape, num_tokens):
    layers, kv_heads, head_dim, dtype_bytes = shape
    want = num_tokens * 2 * layers * kv_heads * head_dim * dtype_bytes
    got = impl.kv_cache_bytes(layers, kv_heads, head_dim, num_tokens, dtype_bytes)
    assert got == want, f"kv_cache_bytes({layers}, {kv_heads}, {head_dim}, {num_tokens}, " \
                        f"{dtype_bytes}) returned {got}, expected {want}"


# -- 1.3 ----------------------------------------------------------------------------------------
@pytest.mark.task1_3
def test_tokens_in_budget(impl):
    per_token = 131072
    for budget, want in ((40 * 2 ** 30, 327680), (per_token * 11 - 1, 10), (per_token - 1, 0),
                         (per_token, 1)):
        got = impl.max_cached_tokens(budget, **LLAMA3_8B, dtype_bytes=2)
        assert got == want and type(got) is int, \
            f"max_cached_tokens({budget}, Llama-3-8B, fp16) returned {got!r}, expected the " \
            f"int {want} (a token is whole or absent: round down)"


@pytest.mark.task1_3
def test_tokens_in_huge_budgets_are_exact(impl):
    """Floats hold 53 bits: a petabyte budget one byte short of a whole token must round down."""
    per_token = 131072
    for tokens in (2 ** 40, 3 ** 25, 10 ** 12 + 7):
        budget = tokens * per_token - 1
        got = impl.max_cached_tokens(budget, **LLAMA3_8B, dtype_bytes=2)
        assert got == tokens - 1 and type(got) is int, \
            f"max_cached_tokens({budget}, Llama-3-8B, fp16) returned {got!r}, expected the int " \
            f"{tokens - 1} (use integer division: float division loses the last bytes)"


@pytest.mark.task1_3
@given(shape=shapes, budget=st.integers(0, 2 ** 62))
def test_tokens_in_any_budget(impl, shape, budget):
    layers, kv_heads, head_dim, dtype_bytes = shape
    want = budget // (2 * layers * kv_heads * head_dim * dtype_bytes)
    got = impl.max_cached_tokens(budget, layers, kv_heads, head_dim, dtype_bytes)
    assert got == want and type(got) is int, \
        f"max_cached_tokens({budget}, {layers}, {kv_heads}, {head_dim}, {dtype_bytes}) " \
        f"returned {got!r}, expected the int {want}"


# -- 1.4 ----------------------------------------------------------------------------------------
@pytest.mark.task1_4
def test_requests_in_budget(impl):
    cases = [  # 40 GiB of KV for Llama-3-8B: 327680 tokens, i.e. 160 requests of 2048 tokens
        (40 * 2 ** 30, 2048, LLAMA3_8B, 160),
        # 13B, 800 KB a token, 2048-token reservations, 12 GiB: the paper's "few requests"
        (12 * 2 ** 30, 2048, LLAMA2_13B, 7),
        # a budget for 2.9 requests holds 2 of them
        (131072 * 2048 * 29 // 10, 2048, LLAMA3_8B, 2),
        # other request lengths: 40 GiB holds 80 requests of 4096 tokens, 320 of 1000
        (40 * 2 ** 30, 4096, LLAMA3_8B, 80), (40 * 2 ** 30, 1000, LLAMA3_8B, 327)]
    for budget, tokens, model, want in cases:
        got = impl.max_concurrent_requests(budget, tokens, **model, dtype_bytes=2)
        assert got == want, f"max_concurrent_requests({budget}, {tokens}, {model}, " \
                            f"dtype_bytes=2) returned {got!r}, expected {want}"


@pytest.mark.task1_4
def test_requests_random(impl, rng):
    for _ in range(200):
        layers, kv_heads = rng.randint(1, 80), rng.randint(1, 64)
        head_dim, dtype_bytes = rng.choice([64, 128]), rng.choice([1, 2, 4])
        per_token = 2 * layers * kv_heads * head_dim * dtype_bytes
        tokens, want = rng.randint(1, 40_000), rng.randint(0, 500)
        budget = want * tokens * per_token + rng.randint(0, tokens * per_token - 1)
        got = impl.max_concurrent_requests(budget, tokens, layers, kv_heads, head_dim,
                                           dtype_bytes)
        assert got == want and type(got) is int, \
            f"max_concurrent_requests({budget}, {tokens}, {layers}, {kv_heads}, {head_dim}, " \
            f"{dtype_bytes}) returned {got!r}, expected the int {want} (a request counts " \
            f"only if all of its {tokens} tokens fit)"
