/* Paged decode attention for the CPU: one new query per sequence, K/V read in place through the
 * block table. The same algorithm as the Triton decode kernel (kernels/paged_decode.py), written
 * as plain loops; the compiler vectorises the loops over the head dimension.
 *
 * Built by minillm/attention/cpu_backend.py at first use, once per (head dim, block size, cache
 * dtype): HEAD_DIM and BLOCK_SIZE are compile-time constants so the inner loops have fixed trip
 * counts, and CACHE_BF16 selects a bfloat16 cache. Queries and outputs are float32.
 *
 * Why a compiled kernel at all: in torch, attention over a paged cache has to copy every
 * sequence's blocks into one padded batch before it can call a matmul, and on a CPU that copy
 * costs more than the attention itself. Here each block is read once, where it lies.
 *
 * Layouts (all contiguous):
 *   q, out        [num_seqs, num_heads, HEAD_DIM]              float32
 *   k/v_cache     [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]
 *   block_tables  [num_seqs, max_blocks]                       int32
 *   seq_lens      [num_seqs]                                   int32, each >= 1
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef CACHE_BF16
typedef uint16_t cache_t;
/* bfloat16 is the top half of a float32: shift it back into place. */
static inline float load(cache_t x) {
    uint32_t bits = (uint32_t)x << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
#else
typedef float cache_t;
static inline float load(cache_t x) { return x; }
#endif

/* Blocks ahead whose K and V are requested while this one is computed on: the blocks of one
 * sequence lie anywhere in the cache, so the hardware cannot guess where the next one is, and
 * one block of lead time is not enough to hide the memory latency (two is ~30% faster). */
#define PREFETCH_DISTANCE 2

static inline void prefetch_block(const cache_t *p, int64_t count) {
    for (int64_t i = 0; i < count; i += 64 / sizeof(cache_t)) __builtin_prefetch(p + i);
}

void paged_decode(const float *q, const cache_t *k_cache, const cache_t *v_cache,
                  const int32_t *block_tables, int64_t max_blocks, const int32_t *seq_lens,
                  float *out, int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads,
                  float scale)
{
    const int64_t group = num_heads / num_kv_heads;  /* query heads per KV head (GQA) */
    const int64_t token_stride = num_kv_heads * HEAD_DIM, block_stride = BLOCK_SIZE * token_stride;

    /* Sequences are independent: one per thread at a time, the longest ones spread by `dynamic`. */
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t s = 0; s < num_seqs; s++) {
        const int64_t len = seq_lens[s], num_blocks = (len + BLOCK_SIZE - 1) / BLOCK_SIZE;
        const int32_t *table = block_tables + s * max_blocks;
        /* Online softmax, block by block, for every head: running max, running sum of
         * exp(score - max), and the running exp-weighted sum of V. Finite start values: no
         * infinities anywhere, whatever the compiler assumes. */
        float run_max[num_heads], run_sum[num_heads], acc[num_heads][HEAD_DIM];
        for (int64_t h = 0; h < num_heads; h++) { run_max[h] = -FLT_MAX; run_sum[h] = 0.f; }
        memset(acc, 0, sizeof acc);

        for (int64_t b = 0; b < num_blocks; b++) {
            const cache_t *k_block = k_cache + table[b] * block_stride;
            const cache_t *v_block = v_cache + table[b] * block_stride;
            for (int64_t ahead = b + 1; ahead <= b + PREFETCH_DISTANCE && ahead < num_blocks; ahead++) {
                prefetch_block(k_cache + table[ahead] * block_stride, block_stride);
                prefetch_block(v_cache + table[ahead] * block_stride, block_stride);
            }
            const int64_t valid = len - b * BLOCK_SIZE < BLOCK_SIZE ? len - b * BLOCK_SIZE : BLOCK_SIZE;
            for (int64_t h = 0; h < num_heads; h++) {
                const float *q_head = q + (s * num_heads + h) * HEAD_DIM;
                const int64_t kv = (h / group) * HEAD_DIM;
                float p[BLOCK_SIZE], block_max = run_max[h];
                for (int64_t t = 0; t < BLOCK_SIZE; t++) {
                    float dot = 0.f;
                    for (int64_t d = 0; d < HEAD_DIM; d++)
                        dot += q_head[d] * load(k_block[t * token_stride + kv + d]);
                    p[t] = t < valid ? dot * scale : -FLT_MAX;  /* slots past the end: weight 0 */
                    block_max = p[t] > block_max ? p[t] : block_max;
                }
                /* Rescale what was summed under the old max to the new one. */
                const float rescale = expf(run_max[h] - block_max);
                float block_sum = 0.f;
                #pragma omp simd  /* BLOCK_SIZE exps at once (the C library's vector expf) */
                for (int64_t t = 0; t < BLOCK_SIZE; t++) p[t] = expf(p[t] - block_max);
                for (int64_t t = 0; t < BLOCK_SIZE; t++) block_sum += p[t];
                run_sum[h] = run_sum[h] * rescale + block_sum;
                run_max[h] = block_max;
                float o[HEAD_DIM];
                for (int64_t d = 0; d < HEAD_DIM; d++) o[d] = acc[h][d] * rescale;
                for (int64_t t = 0; t < valid; t++)
                    for (int64_t d = 0; d < HEAD_DIM; d++)
                        o[d] += p[t] * load(v_block[t * token_stride + kv + d]);
                memcpy(acc[h], o, sizeof o);
            }
        }
        for (int64_t h = 0; h < num_heads; h++)
            for (int64_t d = 0; d < HEAD_DIM; d++)
                out[(s * num_heads + h) * HEAD_DIM + d] = acc[h][d] / run_sum[h];
    }
}
