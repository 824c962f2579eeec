/* test.h — a minimal assertion kit for the C unit tests. Each CHECK failure
 * prints where and why and counts; a test program returns the count != 0. */
#ifndef MOE_TEST_H
#define MOE_TEST_H

#include <stdio.h>
#include <string.h>

static int g_failures, g_checks;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        g_checks++;                                                        \
        if (!(cond)) {                                                     \
            g_failures++;                                                  \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

#define TEST_DONE()                                                                          \
    do {                                                                                     \
        printf("%d checks, %d failed\n", g_checks, g_failures);                              \
        return g_failures != 0 || g_checks == 0;                                             \
    } while (0)

#endif
