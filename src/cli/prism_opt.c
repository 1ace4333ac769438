/* prism_opt.c — routed inference options shared by generate, chat and logits. */
#include "cli/prism_opt.h"

#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

bool cli_prism_opt(cli_prism *o, int argc, char **argv, int *i) {
    if (!strcmp(argv[*i], "--prism")) {
        o->run_dir = cli_value(argc, argv, i);
    } else if (!strcmp(argv[*i], "--route")) {
        const char *v = cli_value(argc, argv, i);
        int r = prism_route_mode_parse(v);
        if (r < 0) cli_usage_error("--route: expected base, adapter or auto, got \"%s\"", v);
        o->route = (prism_route_mode)r;
        o->route_given = true;
    } else {
        return false;
    }
    return true;
}

prism_router *cli_prism_load(cli_prism *o, const prism_model *m, bool have_adapter) {
    if (!o->run_dir) {
        if (o->route_given) cli_usage_error("--route needs --prism RUN_DIR");
        return NULL;
    }
    if (have_adapter) cli_usage_error("--prism and --adapter cannot be combined (the run directory brings its adapter)");
    if (prism_router_load(m, o->run_dir, &o->router)) cli_die("loading the PRISM run");
    return o->router;
}

void cli_prism_print(const prism_generation *g, int index, int n) {
    char prefix[32] = "";
    if (n > 1) snprintf(prefix, sizeof prefix, "[%d] ", index + 1);
    if (g->gate_prob >= 0)
        fprintf(stderr, "%sroute: %s gate=%.4f\n", prefix, g->routed_adapter ? "adapter" : "base", g->gate_prob);
    else
        fprintf(stderr, "%sroute: %s (held from the first turn)\n", prefix, g->routed_adapter ? "adapter" : "base");
}

void cli_prism_free(cli_prism *o) {
    prism_router_free(o->router);
    o->router = NULL;
}
