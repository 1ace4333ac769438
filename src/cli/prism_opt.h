/* prism_opt.h — `--prism RUN_DIR` and `--route base|adapter|auto` for the
 * commands that run the model (generate, chat, logits). */
#ifndef PRISM_CLI_PRISM_OPT_H
#define PRISM_CLI_PRISM_OPT_H

#include <stdbool.h>

#include "prism.h"

typedef struct {
    const char *run_dir;
    prism_route_mode route;
    bool route_given;
    prism_router *router;
} cli_prism;

/* Consumes --prism RUN_DIR / --route MODE at argv[*i]; true if it was one. */
bool cli_prism_opt(cli_prism *o, int argc, char **argv, int *i);
/* Loads the router when --prism was given (exits with a message on failure);
 * NULL otherwise. --route without --prism is a usage error. */
prism_router *cli_prism_load(cli_prism *o, const prism_model *m, bool have_adapter);
/* "route: base|adapter gate=P" on stderr (prefix "[i] " when several prompts). */
void cli_prism_print(const prism_generation *g, int index, int n);
void cli_prism_free(cli_prism *o);

#endif
