/* runinfo.h — the identity of the base model a PRISM run was bootstrapped
 * from, recorded in RUN_DIR/prism.json ("base_model"), and its check. */
#ifndef PRISM_PRISM_RUNINFO_H
#define PRISM_PRISM_RUNINFO_H

#include <jansson.h>

#include "model/model.h"

/* {"dir", "architecture", "config_hash" (FNV-1a 64 of config.json, hex),
 *  "n_layers", "hidden", "vocab"}; NULL on error (message set). */
json_t *runinfo_model_identity(const prism_model *m);

/* Fails unless RUN_DIR/prism.json exists and its base_model.config_hash
 * equals m's. */
prism_status runinfo_check_model(const char *run_dir, const prism_model *m);

#endif
