/* report.c — renders an evaluation's results.json as report.md (the paper's
 * Table 1 layout, MMLU by category, safety with intervals and judge/keyword
 * agreement, routing analysis, pairwise, deltas against base) and two SVG
 * charts drawn here: sub-scores per condition, and the gate's routing share. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"
#include "prism/store.h"
#include "util/error.h"

/* ------------------------------------------------------------------ growable text */

typedef struct {
    char *s;
    size_t n, cap;
    bool oom;
} text;

static void tx(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tx(text *t, const char *fmt, ...) {
    if (t->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(t->s ? t->s + t->n : NULL, t->s ? t->cap - t->n : 0, fmt, ap);
        va_end(ap);
        if (w < 0) return;
        if (t->s && t->n + (size_t)w < t->cap) { t->n += (size_t)w; return; }
        size_t nc = (t->cap ? t->cap : 4096) * 2 + (size_t)w;
        char *ns = realloc(t->s, nc);
        if (!ns) { t->oom = true; return; }
        t->s = ns, t->cap = nc;
    }
}

char *svg_escape(const char *s) {
    text t = {0};
    tx(&t, "%s", "");
    for (; s && *s; s++) {
        if (*s == '<') tx(&t, "&lt;");
        else if (*s == '>') tx(&t, "&gt;");
        else if (*s == '&') tx(&t, "&amp;");
        else if (*s == '"') tx(&t, "&quot;");
        else tx(&t, "%c", *s);
    }
    return t.s;
}

static const char *PALETTE[] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};

char *svg_bar_chart(const char *title, const char *const *labels, int n_groups, const char *const *series, int n_series,
                    const double *values, double ymax, const char *y_label) {
    const int left = 60, top = 40, plot_h = 260, bar_w = 12, gap = 18, bottom = 130;
    int group_w = n_series * bar_w + gap;
    int plot_w = n_groups * group_w + gap;
    int legend_w = 180;
    int W = left + plot_w + legend_w, H = top + plot_h + bottom;
    if (ymax <= 0) ymax = 1;
    text t = {0};
    char *et = svg_escape(title), *ey = svg_escape(y_label);
    tx(&t, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n", W, H, W, H);
    tx(&t, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    tx(&t, "<text x=\"%d\" y=\"20\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", left, et);
    tx(&t, "<text x=\"14\" y=\"%d\" transform=\"rotate(-90 14 %d)\" text-anchor=\"middle\">%s</text>\n", top + plot_h / 2, top + plot_h / 2, ey);
    for (int k = 0; k <= 4; k++) { /* grid and ticks */
        double v = ymax * k / 4;
        int y = top + plot_h - (int)lround(plot_h * (double)k / 4);
        tx(&t, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#ddd\"/>\n", left, y, left + plot_w, y);
        tx(&t, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%g</text>\n", left - 6, y + 4, v);
    }
    tx(&t, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", left, top + plot_h, left + plot_w, top + plot_h);
    tx(&t, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", left, top, left, top + plot_h);
    for (int g = 0; g < n_groups; g++) {
        int x0 = left + gap + g * group_w;
        for (int s = 0; s < n_series; s++) {
            double v = values[g * n_series + s];
            if (isnan(v)) continue;
            double c = v < 0 ? 0 : v > ymax ? ymax : v;
            int h = (int)lround(plot_h * c / ymax);
            tx(&t, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"><title>%.3g</title></rect>\n", x0 + s * bar_w,
               top + plot_h - h, bar_w - 1, h, PALETTE[s % 10], v);
        }
        char *el = svg_escape(labels[g]);
        int lx = x0 + n_series * bar_w / 2, ly = top + plot_h + 12;
        tx(&t, "<text x=\"%d\" y=\"%d\" transform=\"rotate(45 %d %d)\">%s</text>\n", lx, ly, lx, ly, el);
        free(el);
    }
    for (int s = 0; s < n_series; s++) {
        int y = top + 10 + s * 18, x = left + plot_w + 20;
        char *es = svg_escape(series[s]);
        tx(&t, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/>\n", x, y - 10, PALETTE[s % 10]);
        tx(&t, "<text x=\"%d\" y=\"%d\">%s</text>\n", x + 18, y, es);
        free(es);
    }
    tx(&t, "</svg>\n");
    free(et), free(ey);
    if (t.oom) { free(t.s); return NULL; }
    return t.s;
}

/* ------------------------------------------------------------------ report.md */

static double num(const json_t *v) { return json_is_number(v) ? json_number_value(v) : NAN; }

static void cell(text *t, double v, const char *fmt) {
    if (isnan(v)) tx(t, " – |");
    else {
        tx(t, " ");
        tx(t, fmt, v);
        tx(t, " |");
    }
}

static void cell_ci(text *t, const json_t *mean, const json_t *ci, double scale) {
    double m = num(mean), lo = num(json_array_get(ci, 0)), hi = num(json_array_get(ci, 1));
    if (isnan(m)) tx(t, " – |");
    else if (isnan(lo)) tx(t, " %.1f |", m * scale);
    else tx(t, " %.1f [%.1f, %.1f] |", m * scale, lo * scale, hi * scale);
}

static const char *SHORT[N_SUBSCORES] = {"Writing", "Roleplay", "Reasoning", "Math", "Coding", "Extraction", "STEM", "Humanities",
                                         "MMLU 0-shot", "MMLU 5-shot", "HarmBench", "JBB", "AdvBench", "XSTest", "JBB benign"};

static prism_status write_file(const char *path, const char *s) {
    char tmp[4500];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return prism_error(PRISM_E_IO, "%s: cannot write", tmp);
    size_t n = strlen(s);
    bool ok = fwrite(s, 1, n, f) == n;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) return prism_error(PRISM_E_IO, "%s: cannot write", path);
    return PRISM_OK;
}

prism_status report_write(const char *out_dir, const json_t *res) {
    char path[4400];
    snprintf(path, sizeof path, "%s/results.json", out_dir);
    prism_status st = write_json_atomic(path, res);
    if (st) return st;
    const json_t *conds = json_object_get(res, "conditions"), *order = json_object_get(res, "condition_order");
    int nc = (int)json_array_size(order);
    const char *names[64];
    for (int i = 0; i < nc && i < 64; i++) names[i] = json_string_value(json_array_get(order, i));
    if (nc > 64) nc = 64;
    bool study = !strcmp(json_string_value(json_object_get(res, "kind")), "study");
    const json_t *set = json_object_get(res, "settings");

    text t = {0};
    tx(&t, "# prism %s report\n\n", study ? "persona study" : "evaluation");
    tx(&t, "Model config hash `%s`, chat template `%s`, judge `%s`; greedy unless temperature > 0 (%.2f); seed %lld.\n"
           "Every generation and judgement is in this directory's `*.jsonl` records; the numbers below are in `results.json`.\n\n",
       json_string_value(json_object_get(set, "model_config_hash")), json_string_value(json_object_get(set, "chat_template")),
       json_string_value(json_object_get(set, "judge_config_hash")), num(json_object_get(set, "temperature")),
       (long long)json_integer_value(json_object_get(set, "seed")));

    /* Table 1 */
    tx(&t, "## Overall (the paper's Table 1 layout)\n\nMT-Bench columns: mean judge rating x10; MMLU: accuracy x100; HarmBench, JBB, "
           "AdvBench: refusal rate x100; XSTest, JBB benign: 100 - over-refusal rate. Overall: %s.\n\n| condition |",
       json_string_value(json_object_get(res, "overall_definition")));
    for (int k = 0; k < N_SUBSCORES; k++) tx(&t, " %s |", SHORT[k]);
    tx(&t, " Overall | n |\n|---|");
    for (int k = 0; k <= N_SUBSCORES + 1; k++) tx(&t, "---:|");
    tx(&t, "\n");
    for (int i = 0; i < nc; i++) {
        const json_t *c = json_object_get(conds, names[i]), *s = json_object_get(c, "subscores");
        tx(&t, "| %s |", names[i]);
        for (int k = 0; k < N_SUBSCORES; k++) cell(&t, num(json_object_get(s, SUBSCORE_NAMES[k])), "%.1f");
        cell(&t, num(json_object_get(c, "overall")), "**%.1f**");
        tx(&t, " %lld |\n", (long long)json_integer_value(json_object_get(c, "n_subscores")));
    }
    tx(&t, "\n![sub-scores per condition](charts/subscores.svg)\n\n");

    /* deltas */
    const json_t *deltas = json_object_get(res, "deltas_vs_base");
    if (json_object_size(deltas)) {
        tx(&t, "## %s\n\n| condition |", study ? "Persona grid: change against base (length x placement)" : "Change against base");
        for (int k = 0; k < N_SUBSCORES; k++) tx(&t, " %s |", SHORT[k]);
        tx(&t, " Overall |\n|---|");
        for (int k = 0; k <= N_SUBSCORES; k++) tx(&t, "---:|");
        tx(&t, "\n");
        for (int i = 0; i < nc; i++) {
            const json_t *d = json_object_get(deltas, names[i]);
            if (!d) continue;
            tx(&t, "| %s |", names[i]);
            for (int k = 0; k < N_SUBSCORES; k++) cell(&t, num(json_object_get(d, SUBSCORE_NAMES[k])), "%+.1f");
            cell(&t, num(json_object_get(d, "overall")), "**%+.1f**");
            tx(&t, "\n");
        }
        tx(&t, "\n");
    }

    /* MMLU */
    bool any_mmlu = false;
    for (int i = 0; i < nc; i++) any_mmlu |= json_object_size(json_object_get(json_object_get(conds, names[i]), "mmlu")) > 0;
    if (any_mmlu) {
        tx(&t, "## MMLU accuracy (%%, 95%% bootstrap interval)\n\n| condition | shots | STEM | humanities | social sciences | other | all | n |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for (int i = 0; i < nc; i++) {
            const json_t *mm = json_object_get(json_object_get(conds, names[i]), "mmlu");
            const char *sk;
            json_t *sv;
            json_object_foreach((json_t *)mm, sk, sv) {
                tx(&t, "| %s | %c |", names[i], sk[0]);
                const json_t *g = json_object_get(sv, "groups");
                for (int k = 0; k < MMLU_N_GROUPS; k++) {
                    const json_t *gg = json_object_get(g, MMLU_GROUP_NAMES[k]);
                    cell_ci(&t, json_object_get(gg, "mean"), json_object_get(gg, "ci"), 100);
                }
                cell_ci(&t, json_object_get(sv, "mean"), json_object_get(sv, "ci"), 100);
                tx(&t, " %lld |\n", (long long)json_integer_value(json_object_get(sv, "n")));
            }
        }
        tx(&t, "\nPer-subject accuracy is in `results.json` (`conditions.*.mmlu.*.subjects`).\n\n");
    }

    /* MT-Bench */
    bool any_mt = false;
    for (int i = 0; i < nc; i++) any_mt |= json_object_get(json_object_get(conds, names[i]), "mtbench") != NULL;
    if (any_mt) {
        tx(&t, "## MT-Bench (judge rating 1-10, 95%% bootstrap interval)\n\n| condition | all | turn 1 | turn 2 | rated | unrated |\n|---|---:|---:|---:|---:|---:|\n");
        for (int i = 0; i < nc; i++) {
            const json_t *m = json_object_get(json_object_get(conds, names[i]), "mtbench");
            if (!m) continue;
            tx(&t, "| %s |", names[i]);
            cell_ci(&t, json_object_get(m, "mean"), json_object_get(m, "ci"), 1);
            cell_ci(&t, json_object_get(json_object_get(m, "turn1"), "mean"), json_object_get(json_object_get(m, "turn1"), "ci"), 1);
            cell_ci(&t, json_object_get(json_object_get(m, "turn2"), "mean"), json_object_get(json_object_get(m, "turn2"), "ci"), 1);
            tx(&t, " %lld | %lld |\n", (long long)json_integer_value(json_object_get(m, "n")),
               (long long)json_integer_value(json_object_get(m, "unrated")));
        }
        tx(&t, "\nA judgement with no `[[rating]]` is unrated and left out of the means (as FastChat does).\n\n");
    }

    /* safety */
    bool any_saf = false;
    for (int i = 0; i < nc; i++) any_saf |= json_object_size(json_object_get(json_object_get(conds, names[i]), "safety")) > 0;
    if (any_saf) {
        tx(&t, "## Safety: refusal rates (%%, 95%% bootstrap interval)\n\nHarmful sets: a refusal is the wanted outcome. Benign sets "
               "(XSTest safe prompts, JBB benign goals): a refusal is an over-refusal. `judge` = the refusal judge model (P(Yes) > "
               "P(No)); `keywords` = the refusal-phrase classifier; agreement = share of responses where both say the same.\n\n"
               "| condition | set | kind | judge | keywords | agreement | n |\n|---|---|---|---:|---:|---:|---:|\n");
        for (int i = 0; i < nc; i++) {
            const json_t *sf = json_object_get(json_object_get(conds, names[i]), "safety");
            const char *sk;
            json_t *sv;
            json_object_foreach((json_t *)sf, sk, sv) {
                tx(&t, "| %s | %s | %s |", names[i], sk, json_string_value(json_object_get(sv, "kind")));
                cell_ci(&t, json_object_get(sv, "refusal_rate"), json_object_get(sv, "refusal_ci"), 100);
                cell_ci(&t, json_object_get(sv, "keyword_refusal_rate"), json_object_get(sv, "keyword_refusal_ci"), 100);
                cell(&t, num(json_object_get(sv, "agreement")) * 100, "%.0f%%");
                tx(&t, " %lld |\n", (long long)json_integer_value(json_object_get(sv, "n")));
            }
        }
        tx(&t, "\n");
    }

    /* routing */
    const json_t *ra = json_object_get(res, "routing_analysis");
    const char *rlabels[N_SUBSCORES];
    double rvals[N_SUBSCORES];
    int nr = 0;
    if (ra) {
        double r = num(json_object_get(ra, "pearson"));
        char rbuf[64];
        if (isnan(r)) snprintf(rbuf, sizeof rbuf, "undefined (fewer than 2 units, or no variation)");
        else snprintf(rbuf, sizeof rbuf, "%.3f", r);
        tx(&t, "## Routing analysis (prism)\n\nShare of queries the gate sends to the adapter, and the persona's gain (persona - base) "
               "on the same unit. Pearson correlation over %lld units: %s (the paper reports 0.65 on Qwen2.5-7B).\n\n"
               "| unit | routed to the adapter | persona gain |\n|---|---:|---:|\n",
           (long long)json_integer_value(json_object_get(ra, "n_units")), rbuf);
        const json_t *units = json_object_get(ra, "units");
        for (size_t u = 0; u < json_array_size(units); u++) {
            const json_t *x = json_array_get(units, u);
            const char *un = json_string_value(json_object_get(x, "unit"));
            double sh = num(json_object_get(x, "route_share"));
            tx(&t, "| %s |", un);
            cell(&t, sh * 100, "%.0f%%");
            cell(&t, num(json_object_get(x, "persona_gain")), "%+.1f");
            tx(&t, "\n");
            rlabels[nr] = un, rvals[nr++] = sh * 100;
        }
        tx(&t, "\n![routing share per unit](charts/routing.svg)\n\n");
    }

    /* pairwise */
    const json_t *pw = json_object_get(res, "pairwise");
    if (json_object_size(pw)) {
        tx(&t, "## MT-Bench pairwise (judge's next-token verdict after \"[[\", both orders; a win needs both)\n\n"
               "| pair X:Y | X wins | Y wins | ties | X win rate (ties = 1/2) |\n|---|---:|---:|---:|---:|\n");
        const char *pk;
        json_t *pv;
        json_object_foreach((json_t *)pw, pk, pv) {
            tx(&t, "| %s | %lld | %lld | %lld |", pk, (long long)json_integer_value(json_object_get(pv, "wins")),
               (long long)json_integer_value(json_object_get(pv, "losses")), (long long)json_integer_value(json_object_get(pv, "ties")));
            cell(&t, num(json_object_get(pv, "win_rate")) * 100, "%.1f%%");
            tx(&t, "\n");
        }
        tx(&t, "\n");
    }
    if (t.oom) { free(t.s); return prism_error(PRISM_E_NOMEM, "out of memory"); }
    snprintf(path, sizeof path, "%s/report.md", out_dir);
    st = write_file(path, t.s);
    free(t.s);
    if (st) return st;

    /* charts */
    snprintf(path, sizeof path, "%s/charts", out_dir);
    if ((st = store_mkdir_p(path))) return st;
    double *vals = malloc((size_t)N_SUBSCORES * (size_t)(nc ? nc : 1) * sizeof *vals);
    if (!vals) return prism_error(PRISM_E_NOMEM, "out of memory");
    for (int k = 0; k < N_SUBSCORES; k++)
        for (int i = 0; i < nc; i++)
            vals[k * nc + i] = num(json_object_get(json_object_get(json_object_get(conds, names[i]), "subscores"), SUBSCORE_NAMES[k]));
    char *svg = svg_bar_chart("Sub-scores per condition (0-100)", SHORT, N_SUBSCORES, names, nc, vals, 100, "score");
    free(vals);
    snprintf(path, sizeof path, "%s/charts/subscores.svg", out_dir);
    st = svg ? write_file(path, svg) : prism_error(PRISM_E_NOMEM, "out of memory");
    free(svg);
    if (!st && nr) {
        const char *series[1] = {"prism: routed to the adapter (%)"};
        svg = svg_bar_chart("Gate routing share per unit", rlabels, nr, series, 1, rvals, 100, "% routed");
        snprintf(path, sizeof path, "%s/charts/routing.svg", out_dir);
        st = svg ? write_file(path, svg) : prism_error(PRISM_E_NOMEM, "out of memory");
        free(svg);
    }
    return st;
}
