/* Shared helpers of the C ABI tests: CHECK counts and reports, WAIT_FOR polls a
 * condition with a deadline. */
#ifndef STREAMOTTER_TEST_CHECK_H
#define STREAMOTTER_TEST_CHECK_H
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <streamotter.h>

static int failures = 0, checks = 0;
#define CHECK(cond)                                                                   \
    do {                                                                              \
        checks++;                                                                     \
        if (!(cond)) {                                                                \
            failures++;                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__,    \
                    __LINE__, #cond, sot_last_error());                               \
        }                                                                             \
    } while (0)

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define WAIT_FOR(cond, seconds)                                                       \
    do {                                                                              \
        double deadline_ = now_s() + (seconds);                                       \
        while (!(cond) && now_s() < deadline_) usleep(2000);                          \
    } while (0)

/* The closing line the test runners read: "N passed, N failed". */
static inline int report(void) {
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
#endif
