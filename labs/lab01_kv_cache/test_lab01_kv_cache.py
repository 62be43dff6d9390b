"""Lab 1 tests. `make grade LAB=lab01` grades all tasks, `make grade LAB=lab01 TASK=1.2` one."""
import pytest
import torch

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


@pytest.mark.task1_1
def test_per_token_known_models(impl):
    # fp16 Llama-3-8B: 2 x 32 x 8 x 128 x 2 bytes = 128 KiB per token
    assert impl.kv_cache_bytes_per_token(**LLAMA3_8B, dtype_bytes=2) == 131072
    # The PagedAttention paper's figure for a 13B model: about 800 KB per token
    assert impl.kv_cache_bytes_per_token(**LLAMA2_13B, dtype_bytes=2) == 819200


@pytest.mark.task1_1
@pytest.mark.parametrize("layers,heads,kv_heads,head_dim,dtype", [
    (1, 1, 1, 4, torch.float32), (3, 4, 2, 8, torch.float32), (2, 6, 1, 16, torch.float16),
    (4, 4, 4, 8, torch.bfloat16)])
def test_per_token_matches_the_real_cache_tensor(impl, layers, heads, kv_heads, head_dim, dtype):
    from minillm.naive import ContiguousKVCache

    model = tiny_model(layers, heads, kv_heads, head_dim).to(dtype)
    cache = ContiguousKVCache(model, max_len=1)  # room for exactly one token
    real = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
    got = impl.kv_cache_bytes_per_token(layers, kv_heads, head_dim,
                                        torch.tensor([], dtype=dtype).element_size())
    assert got == real


@pytest.mark.task1_2
@pytest.mark.parametrize("num_tokens", [0, 1, 17, 4096])
def test_bytes_for_tokens(impl, num_tokens):
    assert impl.kv_cache_bytes(**LLAMA3_8B, num_tokens=num_tokens, dtype_bytes=2) \
        == num_tokens * 131072


@pytest.mark.task1_2
def test_bytes_match_a_real_cache(impl):
    from minillm.naive import ContiguousKVCache

    model = tiny_model()
    cache = ContiguousKVCache(model, max_len=50)
    real = 2 * cache.k.numel() * cache.k.element_size()
    assert impl.kv_cache_bytes(3, 2, 8, 50, 4) == real
    # A 4K-token conversation with Llama-3-8B in fp16 needs half a GiB
    assert impl.kv_cache_bytes(**LLAMA3_8B, num_tokens=4096, dtype_bytes=2) == 2 ** 29


@pytest.mark.task1_3
def test_tokens_in_budget(impl):
    per_token = 131072
    assert impl.max_cached_tokens(40 * 2 ** 30, **LLAMA3_8B, dtype_bytes=2) == 327680
    assert impl.max_cached_tokens(per_token * 10 + per_token - 1, **LLAMA3_8B,
                                  dtype_bytes=2) == 10  # rounded down
    assert impl.max_cached_tokens(per_token - 1, **LLAMA3_8B, dtype_bytes=2) == 0
    assert isinstance(impl.max_cached_tokens(2 ** 30, **LLAMA3_8B, dtype_bytes=2), int)


@pytest.mark.task1_4
def test_requests_in_budget(impl):
    # 40 GiB of KV for Llama-3-8B: 327680 tokens, i.e. 160 requests of 2048 tokens
    assert impl.max_concurrent_requests(40 * 2 ** 30, 2048, **LLAMA3_8B, dtype_bytes=2) == 160
    # 13B, 800 KB a token, 2048-token reservations, 12 GiB: the paper's "few requests"
    assert impl.max_concurrent_requests(12 * 2 ** 30, 2048, **LLAMA2_13B, dtype_bytes=2) == 7
    # a budget for 2.9 requests holds 2 of them
    assert impl.max_concurrent_requests(131072 * 2048 * 29 // 10, 2048, **LLAMA3_8B,
                                        dtype_bytes=2) == 2
