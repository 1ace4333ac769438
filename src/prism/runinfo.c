/* runinfo.c — base-model identity in prism.json. */
#include "prism/runinfo.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "prism/store.h"
#include "util/error.h"

json_t *runinfo_model_identity(const prism_model *m) {
    char path[4200], hex[32];
    uint64_t h;
    snprintf(path, sizeof path, "%s/config.json", m->dir);
    if (hash_file(path, &h)) return NULL;
    snprintf(hex, sizeof hex, "%016" PRIx64, h);
    return json_pack("{s:s, s:s, s:s, s:i, s:i, s:i}", "dir", m->dir, "architecture", m->cfg.arch_name, "config_hash",
                     hex, "n_layers", m->cfg.n_layers, "hidden", m->cfg.hidden, "vocab", m->cfg.vocab);
}

prism_status runinfo_check_model(const char *run_dir, const prism_model *m) {
    char path[4200];
    snprintf(path, sizeof path, "%s/prism.json", run_dir);
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j) {
        FILE *f = fopen(path, "r");
        if (!f) return prism_error(PRISM_E_IO, "%s: missing — %s is not a finished PRISM run (run prism bootstrap)", path, run_dir);
        fclose(f);
        return prism_error(PRISM_E_FORMAT, "%s: malformed JSON at line %d: %s", path, e.line, e.text);
    }
    json_t *id = runinfo_model_identity(m);
    const char *want = json_string_value(json_object_get(json_object_get(j, "base_model"), "config_hash"));
    const char *have = id ? json_string_value(json_object_get(id, "config_hash")) : NULL;
    prism_status st = PRISM_OK;
    if (!id) st = PRISM_E_IO;
    else if (!want) st = prism_error(PRISM_E_FORMAT, "%s: no base_model.config_hash", path);
    else if (strcmp(want, have) != 0)
        st = prism_error(PRISM_E_ARG, "%s: this run was bootstrapped from a different base model (config.json hash %s, %s has %s)",
                         path, want, m->dir, have);
    json_decref(id);
    json_decref(j);
    return st;
}
