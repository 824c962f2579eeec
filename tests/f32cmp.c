/* f32cmp.c — compares two raw float32 files: same length, every element
 * within ATOL. usage: f32cmp GOT REF ATOL; exit 0 when they agree. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static float *load(const char *p, long *n) {
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *v = malloc((size_t)len + 4);
    *n = (long)fread(v, 4, (size_t)len / 4, f);
    fclose(f);
    return v;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: f32cmp GOT REF ATOL\n"); return 2; }
    long na, nb;
    float *a = load(argv[1], &na), *b = load(argv[2], &nb);
    double atol = atof(argv[3]), worst = 0;
    if (!a || !b) { fprintf(stderr, "f32cmp: cannot read %s\n", a ? argv[2] : argv[1]); return 1; }
    if (na != nb) { fprintf(stderr, "f32cmp: %ld floats vs %ld\n", na, nb); return 1; }
    for (long i = 0; i < na; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= worst)) worst = e;
    }
    printf("%ld floats, max |diff| %.3g (atol %g)\n", na, worst, atol);
    free(a);
    free(b);
    return worst <= atol ? 0 : 1;
}
