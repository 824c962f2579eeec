/* xprofile_api.c — moe_profile_write (moe.h): the model's routing counts as
 * a profile file, for `moe profile`. */
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "../model/model.h"
#include "xprofile.h"

moe_status moe_profile_write(const moe_model *m, const char *path, int64_t tokens, const char *text_name) {
    const model_config *mc = &m->cfg;
    const moe_config *c = &mc->pub;
    if (c->n_experts < 1 || c->n_moe_layers < 1)
        return moe_err(MOE_EINVAL, "%s: a %s model has no MoE layer: nothing to profile", path, c->model_type);
    xp_profile *p;
    moe_status st = xp_new(c->model_type, c->n_layers, c->n_experts, c->n_experts_per_tok, mc->layer_moe, &p);
    if (st) return st;
    p->tokens = tokens;
    if (text_name && !(p->text = strdup(text_name))) st = moe_err(MOE_ENOMEM, "out of memory");
    for (int l = 0; l < c->n_layers && !st; l++)
        if (xp_counts(p, l)) st = moe_model_expert_counts(m, l, xp_counts(p, l));
    /* counts that do not add up are the caller's mistake here, not a bad file */
    if (!st && (st = xp_validate(p, path)) == MOE_EFORMAT) st = MOE_EINVAL;
    if (!st) st = xp_write(path, p);
    xp_free(p);
    return st;
}
