/* f32cmp.c — compares two raw float32 files: same length, every element
 * within ATOL. usage: f32cmp GOT REF ATOL; exit 0 when they agree. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "f32file.h"

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: f32cmp GOT REF ATOL\n"); return 2; }
    size_t na, nb;
    float *a = read_f32(argv[1], &na), *b = read_f32(argv[2], &nb);
    double atol = atof(argv[3]), worst = 0;
    if (!a || !b) { fprintf(stderr, "f32cmp: cannot read %s\n", a ? argv[2] : argv[1]); return 1; }
    if (na != nb) { fprintf(stderr, "f32cmp: %zu floats vs %zu\n", na, nb); return 1; }
    for (size_t i = 0; i < na; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= worst)) worst = e;
    }
    printf("%zu floats, max |diff| %.3g (atol %g)\n", na, worst, atol);
    free(a);
    free(b);
    return worst <= atol ? 0 : 1;
}
