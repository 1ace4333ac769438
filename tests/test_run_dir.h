/* test_run_dir.h — builds a PRISM run directory for routing tests without
 * running bootstrap: a real adapter on layers 1..L-1 with non-zero B (so
 * routes are distinguishable), a random gate with the given threshold, and a
 * prism.json naming the base model. Include after test.h. */
#ifndef PRISM_TEST_RUN_DIR_H
#define PRISM_TEST_RUN_DIR_H

#include <jansson.h>

#include "lora/lora.h"
#include "prism/gate.h"
#include "prism/runinfo.h"
#include "prism/store.h"

static void make_test_run(prism_model *m, const char *dir, float threshold) {
    char path[512];
    store_mkdir_p(dir);
    prism_lora_params lp = prism_lora_default_params();
    lp.r = 4;
    lp.seed = 11;
    prism_adapter *a = NULL;
    CHECK(prism_adapter_new(m, lp, &a) == PRISM_OK, "adapter_new: %s", prism_last_error());
    uint64_t s = 99;
    for (int64_t i = 0; a && i < (int64_t)a->n_layers * LORA_N_TARGETS; i++) {
        lora_module *mod = &a->mod[i];
        for (int64_t k = 0; k < mod->out * mod->r; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            mod->B[k] = ((float)(s >> 40) / (float)(1 << 24) - 0.5f) * 0.2f;
        }
    }
    snprintf(path, sizeof path, "%s/adapter", dir);
    CHECK(prism_adapter_save(a, path, "F32") == PRISM_OK, "save adapter: %s", prism_last_error());
    prism_adapter_free(a);
    gate_mlp *g = gate_mlp_new(m->cfg.hidden, 5);
    gate_set_threshold(g, threshold);
    snprintf(path, sizeof path, "%s/gate.safetensors", dir);
    CHECK(gate_save(g, path, NULL) == PRISM_OK, "save gate: %s", prism_last_error());
    gate_mlp_free(g);
    json_t *j = json_pack("{s:o}", "base_model", runinfo_model_identity(m));
    snprintf(path, sizeof path, "%s/prism.json", dir);
    write_json_atomic(path, j);
    json_decref(j);
}

#endif
