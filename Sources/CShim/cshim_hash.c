/* A 128-bit hash over several fields for the publish dedupe window: XXH3 (Debian's
 * libxxhash-dev, compiled in from its header, so nothing is linked at run time), streamed
 * through one state per thread. */
#define XXH_INLINE_ALL
#include <xxhash.h>
#include "cshim.h"

static __thread XXH3_state_t hash_state;

void cshim_hash_begin(uint64_t seed) { XXH3_128bits_reset_withSeed(&hash_state, seed); }

void cshim_hash_add(const void *data, size_t len) {
    uint64_t n = (uint64_t)len;
    XXH3_128bits_update(&hash_state, &n, sizeof n);
    if (len > 0) XXH3_128bits_update(&hash_state, data, len);
}

void cshim_hash_add_u64(uint64_t value) { XXH3_128bits_update(&hash_state, &value, sizeof value); }

void cshim_hash_end(uint64_t *lo, uint64_t *hi) {
    XXH128_hash_t h = XXH3_128bits_digest(&hash_state);
    *lo = h.low64;
    *hi = h.high64;
}
