/* adapter_opt.c — loading LoRA adapters for generate / chat / logits. */
#include "cli/adapter_opt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

bool cli_adapter_opt(cli_adapters *o, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    if (!strcmp(a, "--adapter")) {
        if (o->n == CLI_MAX_ADAPTERS) cli_usage_error("--adapter: at most %d adapters", CLI_MAX_ADAPTERS);
        o->dirs[o->n++] = cli_value(argc, argv, i);
    } else if (!strcmp(a, "--use")) {
        o->use = cli_value(argc, argv, i);
    } else return false;
    return true;
}

const prism_adapter *cli_adapters_load(cli_adapters *o, const prism_model *m) {
    if (o->use && !o->n) cli_usage_error("--use %s: no --adapter DIR was given", o->use);
    const prism_adapter *sel = NULL;
    for (int k = 0; k < o->n; k++) {
        char what[4200];
        snprintf(what, sizeof what, "loading adapter %s", o->dirs[k]);
        if (prism_adapter_load(m, o->dirs[k], &o->loaded[k])) cli_die(what);
        if (o->use ? !strcmp(prism_adapter_name(o->loaded[k]), o->use) && !sel : k == 0) sel = o->loaded[k];
    }
    if (o->use && !sel) {
        fprintf(stderr, "prism: --use %s: no adapter has that name; loaded:", o->use);
        for (int k = 0; k < o->n; k++) fprintf(stderr, " %s (%s)", prism_adapter_name(o->loaded[k]), o->dirs[k]);
        fputc('\n', stderr);
        exit(2);
    }
    return sel;
}

void cli_adapters_apply(prism_ctx *c, const prism_adapter *a, int n_seq) {
    for (int s = 0; s < n_seq && a; s++)
        if (prism_ctx_seq_set_adapter(c, s, a)) cli_die("applying the adapter");
}

void cli_adapters_free(cli_adapters *o) {
    for (int k = 0; k < o->n; k++) prism_adapter_free(o->loaded[k]);
    memset(o, 0, sizeof *o);
}
