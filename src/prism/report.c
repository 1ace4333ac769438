/* report.c — `prism report RUN_DIR`: per-domain queries, persona win rate,
 * gate accuracy and routing rate, from the run's records (no model needed:
 * the gate is applied to the stored layer-0 features). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"
#include "prism/bootstrap.h"
#include "prism/gate.h"
#include "util/error.h"

prism_status prism_report(const char *run_dir) {
    char path[4400];
    json_error_t e;
    snprintf(path, sizeof path, "%s/prism.json", run_dir);
    json_t *sum = json_load_file(path, 0, &e);
    if (!sum) return prism_error(PRISM_E_IO, "%s: %s (not a PRISM run directory?)", path, e.text);
    json_t *domains = json_object_get(json_object_get(json_object_get(sum, "settings"), "personas"), "domains");
    json_t *per = json_object_get(sum, "domains");
    const json_t *base = json_object_get(sum, "base_model");
    printf("PRISM run %s\nbase model: %s (%s), status: %s\n\n", run_dir, json_string_value(json_object_get(base, "dir")),
           json_string_value(json_object_get(base, "architecture")), json_string_value(json_object_get(sum, "status")));

    /* gate decisions on the training queries */
    st_set *fs = NULL;
    gate_mlp *g = NULL;
    float *X = NULL, *lab = NULL, *dom = NULL;
    int64_t n = 0, H = 0;
    snprintf(path, sizeof path, "%s/gate_features.safetensors", run_dir);
    if (st_open(path, &fs) == PRISM_OK) {
        const st_tensor *tx = st_find(fs, "features"), *ty = st_find(fs, "labels"), *td = st_find(fs, "domain");
        if (tx && ty && td && tx->ndim == 2) {
            n = tx->shape[0], H = tx->shape[1];
            X = malloc((size_t)(n * H + 1) * sizeof(float));
            lab = malloc((size_t)(n + 1) * sizeof(float));
            dom = malloc((size_t)(n + 1) * sizeof(float));
            st_read_f32(fs, tx, X), st_read_f32(fs, ty, lab), st_read_f32(fs, td, dom);
        }
        st_close(fs);
        snprintf(path, sizeof path, "%s/gate.safetensors", run_dir);
        if (n && gate_load(path, (int32_t)H, &g) != PRISM_OK) g = NULL;
    }
    printf("%-16s %8s %6s %9s %9s %8s\n", "domain", "queries", "wins", "win rate", "gate acc", "routed");
    int64_t tq = 0, tw = 0, tc = 0, tr = 0, tg = 0;
    size_t nd = json_array_size(domains);
    for (size_t d = 0; d <= nd; d++) {
        const char *name = d < nd ? json_string_value(json_array_get(domains, d)) : "all";
        int64_t q = 0, w = 0, correct = 0, routed = 0, gated = 0;
        if (d < nd) {
            const json_t *c = json_object_get(per, name);
            q = json_integer_value(json_object_get(c, "queries"));
            w = json_integer_value(json_object_get(c, "wins"));
            for (int64_t i = 0; g && i < n; i++) {
                if ((size_t)dom[i] != d) continue;
                float prob;
                bool r = gate_mlp_route(g, X + i * H, &prob);
                routed += r, correct += r == (lab[i] == 1.0f), gated++;
            }
            tq += q, tw += w, tc += correct, tr += routed, tg += gated;
        } else {
            printf("%-16s %8s %6s %9s %9s %8s\n", "----------------", "--------", "------", "---------", "---------", "--------");
            q = tq, w = tw, correct = tc, routed = tr, gated = tg;
        }
        char wr[16] = "-", ga[16] = "-", rr[16] = "-";
        if (q) snprintf(wr, sizeof wr, "%.1f%%", 100.0 * (double)w / (double)q);
        if (gated) snprintf(ga, sizeof ga, "%.1f%%", 100.0 * (double)correct / (double)gated),
                   snprintf(rr, sizeof rr, "%.1f%%", 100.0 * (double)routed / (double)gated);
        printf("%-16s %8lld %6lld %9s %9s %8s\n", name, (long long)q, (long long)w, wr, ga, rr);
    }
    const json_t *gr = json_object_get(sum, "gate");
    if (gr) {
        printf("\ngate: threshold %.3f", json_number_value(json_object_get(gr, "threshold")));
        const json_t *ha = json_object_get(gr, "holdout_accuracy");
        if (json_is_number(ha))
            printf(", held-out accuracy %.3f (%lld held out), train accuracy %.3f", json_number_value(ha),
                   (long long)json_integer_value(json_object_get(gr, "n_holdout")),
                   json_number_value(json_object_get(gr, "train_accuracy")));
        const json_t *dg = json_object_get(gr, "degenerate");
        if (dg) printf(" (%s)", json_string_value(dg));
        printf("\n");
    }
    const json_t *ds = json_object_get(sum, "distill");
    if (ds) {
        printf("distillation: %lld examples", (long long)json_integer_value(json_object_get(ds, "examples")));
        if (json_object_get(ds, "steps"))
            printf(", %lld steps, final loss %.4f", (long long)json_integer_value(json_object_get(ds, "steps")),
                   json_number_value(json_object_get(ds, "final_loss")));
        if (json_object_get(ds, "skipped")) printf(" (%s)", json_string_value(json_object_get(ds, "skipped")));
        printf("\n");
    }
    const json_t *tm = json_object_get(sum, "timings");
    if (json_object_size(tm)) {
        printf("timings:");
        const char *k;
        const json_t *v;
        json_object_foreach((json_t *)tm, k, v) printf(" %s %.1fs", k, json_number_value(v));
        printf("\n");
    }
    free(X), free(lab), free(dom);
    gate_mlp_free(g);
    json_decref(sum);
    return PRISM_OK;
}
