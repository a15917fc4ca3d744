/* Latency histogram shared by the load generator and the C peers. */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H
#include <stdint.h>

/* Log-linear buckets (HDR-like): exact below 128, then 64 sub-buckets per power of two,
 * so every recorded value is kept within 1.6%. Values are nanoseconds. */
#define H_SUBBITS 6
#define H_SUB (1 << H_SUBBITS)
#define H_N (2 * H_SUB + 57 * H_SUB)

typedef struct {
    uint64_t c[H_N];
    uint64_t n, max, sum;
} hist_t;

static inline int h_index(uint64_t v) {
    if (v < 2 * H_SUB) return (int)v;
    int mag = 63 - __builtin_clzll(v);
    int shift = mag - H_SUBBITS;
    return 2 * H_SUB + (mag - (H_SUBBITS + 1)) * H_SUB + (int)((v >> shift) - H_SUB);
}

static inline uint64_t h_value(int i) {
    if (i < 2 * H_SUB) return (uint64_t)i;
    int k = i - 2 * H_SUB;
    int mag = k / H_SUB + H_SUBBITS + 1;
    uint64_t sub = (uint64_t)(k % H_SUB + H_SUB);
    int shift = mag - H_SUBBITS;
    return (sub << shift) + ((1ull << shift) >> 1);
}

static inline void h_record(hist_t *h, uint64_t v) {
    h->c[h_index(v)]++;
    h->n++;
    h->sum += v;
    if (v > h->max) h->max = v;
}

static inline void h_merge(hist_t *into, const hist_t *h) {
    for (int i = 0; i < H_N; i++) into->c[i] += h->c[i];
    into->n += h->n;
    into->sum += h->sum;
    if (h->max > into->max) into->max = h->max;
}

static inline double h_pct_us(const hist_t *h, double q) {
    if (h->n == 0) return 0;
    uint64_t target = (uint64_t)(q * (double)h->n + 0.999999);
    if (target < 1) target = 1;
    uint64_t seen = 0;
    for (int i = 0; i < H_N; i++) {
        seen += h->c[i];
        if (seen >= target) {
            uint64_t v = h_value(i);
            if (v > h->max) v = h->max;
            return (double)v / 1000.0;
        }
    }
    return (double)h->max / 1000.0;
}

#endif
