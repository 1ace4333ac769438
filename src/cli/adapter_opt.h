/* adapter_opt.h — `--adapter DIR` (repeatable) and `--use NAME` for the
 * commands that run the model (generate, chat, logits). Every adapter given
 * is loaded and checked against the model; one of them — the one named by
 * --use (an adapter's name is its directory's base name), else the first —
 * applies to every sequence. */
#ifndef PRISM_CLI_ADAPTER_OPT_H
#define PRISM_CLI_ADAPTER_OPT_H

#include <stdbool.h>

#include "prism.h"

enum { CLI_MAX_ADAPTERS = 16 };

typedef struct {
    const char *dirs[CLI_MAX_ADAPTERS];
    int n;
    const char *use;
    prism_adapter *loaded[CLI_MAX_ADAPTERS];
} cli_adapters;

/* Consumes --adapter DIR / --use NAME at argv[*i]; true if it was one. */
bool cli_adapter_opt(cli_adapters *o, int argc, char **argv, int *i);
/* Loads every adapter (exits with a message on failure); returns the one
 * that applies, NULL when none was given. */
const prism_adapter *cli_adapters_load(cli_adapters *o, const prism_model *m);
/* Routes sequences 0..n_seq-1 of c through a (exits on failure). */
void cli_adapters_apply(prism_ctx *c, const prism_adapter *a, int n_seq);
void cli_adapters_free(cli_adapters *o);

#endif
