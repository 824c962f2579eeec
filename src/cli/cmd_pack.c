/* cmd_pack.c — moe pack: write (or check) a MoE model's expert pack, the
 * store that expert offloading reads experts from. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe pack -m DIR [-o CACHE_DIR] [--check] [--force] [--threads N]\n"
               "  Rewrites the experts of the MoE model in DIR into one pack file, one contiguous\n"
               "  4 KiB-aligned record per expert, so offloading reads an expert in one read past\n"
               "  the page cache. It goes into the model's cache directory, CACHE_DIR/<name>-<hash>/\n"
               "  experts.pack; a valid pack there is kept, a stale one (the model changed) rebuilt.\n"
               "  -m DIR        the model directory (a MoE model)\n"
               "  -o CACHE_DIR  root of the cache directories (default: $MOE_CACHE_DIR, else\n"
               "                $XDG_CACHE_HOME/moe, else ~/.cache/moe)\n"
               "  --check       read every record back and verify its checksum (the existing pack;\n"
               "                nothing is built): \"ok\", or the first bad record and exit status 1\n"
               "  --force       rebuild even when the pack is up to date\n"
               "  --threads N   threads reading records back for --check (default 1)\n");
}

int cmd_pack(int argc, char **argv) {
    moe_pack_params p;
    moe_pack_params_defaults(&p);
    const char *dir = NULL, *v;
    long long ll;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "-m")) { CLI_VALUE(); dir = v; }
        else if (!strcmp(a, "-o")) { CLI_VALUE(); p.cache_dir = v; }
        else if (!strcmp(a, "--check")) p.check = 1;
        else if (!strcmp(a, "--force")) p.force = 1;
        else if (!strcmp(a, "--threads")) { CLI_VALUE(); if (cli_int(a, v, 1, 1024, &ll)) return 1; p.n_threads = (int)ll; }
        else return cli_fail("pack: unknown option %s (moe pack --help lists them)", a);
    }
    if (!dir) return cli_fail("pack: -m is required (see moe pack --help)");
    cli_progress_state ps = {0};
    p.progress = cli_progress;
    p.progress_ctx = &ps;
    moe_pack_result r;
    double t0 = cli_now();
    moe_status st = moe_pack(dir, &p, &r);
    if (st) return cli_fail_status(st);
    double secs = cli_now() - t0;
    if (r.built && r.why[0]) fprintf(stderr, "moe: %s; %s\n", r.why, strstr(r.why, "no expert pack") ? "built it" : "rebuilt it");
    printf("%s\n", r.path);
    printf("%s: %.2f MB, %lld records (%d MoE layers x %d experts), %s reads",
           r.built ? "written" : "up to date", (double)r.bytes / 1e6, (long long)r.records, r.moe_layers, r.experts,
           r.direct ? "O_DIRECT" : "buffered");
    if (r.built) printf(", in %.1f s", secs);
    else if (!p.check) printf(" (--force rebuilds it)");
    printf("\n");
    if (p.check) printf("check: ok, every record's checksum verified in %.1f s\n", secs);
    return 0;
}
