/* test_eval_e2e.c — `prism eval` and `prism study` end to end on the
 * embedded stories260K model, through the real CLI:
 *   - a PRISM run bootstrapped in the test, then every suite under every mode
 *     (with pairwise judging): results.json checked against a schema (keys and
 *     types), report.md holding its tables, and well-formed, non-empty SVGs;
 *   - the usage errors a user meets first (a mode needing --prism, unknown
 *     suite) are clear;
 *   - an eval SIGKILLed at random moments and rerun until it finishes yields
 *     the same results.json as an uninterrupted run, with no duplicate records;
 *   - prism study writes the length x placement grid. */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

#define PRISM "./build/prism"
#define MODEL "models/stories260K"

/* ---------------------------------------------------------------- schema */

typedef enum { T_OBJ, T_ARR, T_STR, T_INT, T_NUM_OR_NULL, T_BOOL } jtype;

static int has(const json_t *o, const char *path, jtype t) {
    const json_t *v = o;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *save = NULL, *k = strtok_r(buf, "/", &save); k; k = strtok_r(NULL, "/", &save)) v = json_object_get(v, k);
    int ok = v && (t == T_OBJ ? json_is_object(v) : t == T_ARR ? json_is_array(v) : t == T_STR ? json_is_string(v)
                 : t == T_INT ? json_is_integer(v) : t == T_BOOL ? json_is_boolean(v) : (json_is_number(v) || json_is_null(v)));
    if (!ok) fprintf(stderr, "schema: %s missing or of the wrong type\n", path);
    return ok;
}

static const char *SUBS[15] = {"mtbench.writing", "mtbench.roleplay", "mtbench.reasoning", "mtbench.math", "mtbench.coding",
                               "mtbench.extraction", "mtbench.stem", "mtbench.humanities", "mmlu.0shot", "mmlu.5shot",
                               "harmbench.refusal", "jbb.refusal", "advbench.refusal", "xstest.compliance", "jbb_benign.compliance"};

static void check_schema(const json_t *r) {
    int ok = has(r, "version", T_INT) && has(r, "kind", T_STR) && has(r, "settings", T_OBJ) && has(r, "conditions", T_OBJ) &&
             has(r, "condition_order", T_ARR) && has(r, "subscore_names", T_ARR) && has(r, "overall_definition", T_STR) &&
             has(r, "deltas_vs_base", T_OBJ) && has(r, "routing_analysis/units", T_ARR) &&
             has(r, "routing_analysis/pearson", T_NUM_OR_NULL) && has(r, "pairwise/prism:base/win_rate", T_NUM_OR_NULL) &&
             has(r, "settings/model_config_hash", T_STR);
    CHECK(ok, "top-level schema");
    CHECK(json_array_size(json_object_get(r, "subscore_names")) == 15, "15 sub-scores named");
    const char *modes[] = {"base", "persona", "adapter", "prism"};
    for (int m = 0; m < 4; m++) {
        char p[256];
        int c = 1;
#define H(suffix, t) (snprintf(p, sizeof p, "conditions/%s/%s", modes[m], suffix), c &= has(r, p, t))
        H("overall", T_NUM_OR_NULL), H("n_subscores", T_INT), H("subscores", T_OBJ), H("route", T_STR), H("persona", T_BOOL);
        for (int k = 0; k < 15; k++) {
            char s[128];
            snprintf(s, sizeof s, "subscores/%s", SUBS[k]);
            H(s, T_NUM_OR_NULL);
        }
        H("mmlu/0shot/mean", T_NUM_OR_NULL), H("mmlu/0shot/ci", T_ARR), H("mmlu/0shot/n", T_INT), H("mmlu/5shot/groups/stem/mean", T_NUM_OR_NULL);
        H("mmlu/0shot/subjects/anatomy/accuracy", T_NUM_OR_NULL);
        H("mtbench/mean", T_NUM_OR_NULL), H("mtbench/unrated", T_INT), H("mtbench/categories/writing/n", T_INT), H("mtbench/turn2/ci", T_ARR);
        const char *sets[] = {"harmbench", "jbb", "advbench", "xstest", "jbb_benign"};
        for (int s = 0; s < 5; s++) {
            char q[128];
            snprintf(q, sizeof q, "safety/%s/refusal_rate", sets[s]), H(q, T_NUM_OR_NULL);
            snprintf(q, sizeof q, "safety/%s/refusal_ci", sets[s]), H(q, T_ARR);
            snprintf(q, sizeof q, "safety/%s/keyword_refusal_rate", sets[s]), H(q, T_NUM_OR_NULL);
            snprintf(q, sizeof q, "safety/%s/agreement", sets[s]), H(q, T_NUM_OR_NULL);
            snprintf(q, sizeof q, "safety/%s/n", sets[s]), H(q, T_INT);
        }
        if (m >= 2) H("routing/mtbench/categories/math", T_NUM_OR_NULL), H("routing/harmbench/share", T_NUM_OR_NULL), H("routing/mmlu.0shot/share", T_NUM_OR_NULL);
#undef H
        CHECK(c, "schema of condition %s", modes[m]);
        const json_t *cj = json_object_get(json_object_get(r, "conditions"), modes[m]);
        CHECK(json_integer_value(json_object_get(cj, "n_subscores")) >= 7, "%s: MMLU and safety sub-scores present", modes[m]);
        CHECK(json_integer_value(json_object_get(json_object_get(json_object_get(cj, "mmlu"), "0shot"), "n")) == 57 * 5,
              "%s: five MMLU items per subject with --limit 5", modes[m]);
    }
    /* adapter mode runs every query on the adapter */
    const json_t *ad = json_object_get(json_object_get(json_object_get(r, "conditions"), "adapter"), "routing");
    CHECK(json_number_value(json_object_get(json_object_get(ad, "harmbench"), "share")) == 1.0, "adapter mode: all routed");
}

/* A minimal XML well-formedness check: tags nest and close, attributes are quoted. */
static int svg_ok(const char *s) {
    if (!s || strncmp(s, "<svg", 4) != 0) return 0;
    char stack[64][32];
    int depth = 0, elems = 0;
    for (const char *p = s; (p = strchr(p, '<'));) {
        const char *e = strchr(p, '>');
        if (!e) return 0;
        int quotes = 0;
        for (const char *q = p; q < e; q++) quotes += *q == '"';
        if (quotes % 2) return 0;
        if (p[1] == '/') {
            char name[32] = {0};
            sscanf(p + 2, "%31[a-zA-Z]", name);
            if (depth == 0 || strcmp(stack[depth - 1], name) != 0) return 0;
            depth--;
        } else if (e[-1] != '/') {
            if (depth == 64) return 0;
            sscanf(p + 1, "%31[a-zA-Z]", stack[depth]);
            depth++;
            elems++;
        } else {
            elems++;
        }
        p = e + 1;
    }
    return depth == 0 && elems > 5;
}

/* ---------------------------------------------------------------- kill and resume */

static int spawn_kill(const char *cmd, int delay_ms) {
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    struct timespec ts = {delay_ms / 1000, (long)(delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static int count_keys_unique(const char *path, int *lines) {
    char *s = test_slurp(path, NULL);
    if (!s) return 0;
    json_t *seen = json_object();
    int dup = 0;
    *lines = 0;
    for (char *l = strtok(s, "\n"); l; l = strtok(NULL, "\n")) {
        json_t *o = json_loads(l, 0, NULL);
        const char *k = json_string_value(json_object_get(o, "key"));
        if (k && json_object_get(seen, k)) dup++;
        if (k) json_object_set_new(seen, k, json_true());
        json_decref(o);
        (*lines)++;
    }
    json_decref(seen);
    free(s);
    return dup == 0;
}

int main(void) {
    char dir[] = "/tmp/prism-eval-XXXXXX", cmd[8192], p[1024], *out = NULL;
    if (!mkdtemp(dir)) return 2;

    snprintf(cmd, sizeof cmd, PRISM " bootstrap --model " MODEL " --out %s/run --domains math,writing,safety_monitor,helpful"
             " --queries-per-domain 2 --max-answer-tokens 16 --epochs 1 --chat-template llama2 --persona-length min --quiet", dir);
    CHECK(test_run(cmd, &out) == 0, "bootstrap: %s", out);
    free(out);

    /* usage errors */
    snprintf(cmd, sizeof cmd, PRISM " eval --model " MODEL " --chat-template llama2 --mode base,prism --out %s/e0", dir);
    CHECK(test_run(cmd, &out) == 1 && strstr(out, "--mode prism needs --prism RUN_DIR"), "prism mode without a run: %s", out);
    free(out);
    snprintf(cmd, sizeof cmd, PRISM " eval --model " MODEL " --chat-template llama2 --mode base --suite mmlu,gsm8k --out %s/e0", dir);
    CHECK(test_run(cmd, &out) == 1 && strstr(out, "unknown suite \"gsm8k\""), "unknown suite: %s", out);
    free(out);

    /* every suite under every mode */
    snprintf(cmd, sizeof cmd, PRISM " eval --model " MODEL " --prism %s/run --chat-template llama2 --limit 5 --out %s/ev"
             " --max-tokens 8 --judge-max-tokens 4 --pairwise prism:base --no-sync --quiet", dir, dir);
    double t0 = (double)time(NULL);
    CHECK(test_run(cmd, &out) == 0, "eval: %s", out);
    free(out);
    printf("     full eval (%d s)\n", (int)((double)time(NULL) - t0));
    snprintf(p, sizeof p, "%s/ev/results.json", dir);
    json_t *res = json_load_file(p, 0, NULL);
    CHECK(res != NULL, "results.json parses");
    if (res) check_schema(res);
    json_decref(res);
    snprintf(p, sizeof p, "%s/ev/report.md", dir);
    char *md = test_slurp(p, NULL);
    CHECK(md && strstr(md, "Table 1") && strstr(md, "| prism |") && strstr(md, "## MMLU accuracy") && strstr(md, "## Safety") &&
              strstr(md, "## Routing analysis") && strstr(md, "## MT-Bench pairwise") && strstr(md, "charts/subscores.svg"),
          "report.md has its sections");
    free(md);
    const char *svgs[] = {"subscores.svg", "routing.svg"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/ev/charts/%s", dir, svgs[i]);
        char *s = test_slurp(p, NULL);
        CHECK(svg_ok(s), "%s is well-formed SVG with content", svgs[i]);
        free(s);
    }
    const char *stores[] = {"mmlu.jsonl", "mtbench_answers.jsonl", "mtbench_judgements.jsonl", "mtbench_pairwise.jsonl",
                            "safety_answers.jsonl", "safety_judgements.jsonl"};
    int expect[] = {57 * 5 * 2 * 4, 8 * 5 * 2 * 4, 8 * 5 * 2 * 4, 8 * 5 * 2, 5 * 5 * 4, 5 * 5 * 4};
    for (int i = 0; i < 6; i++) {
        int lines = 0;
        snprintf(p, sizeof p, "%s/ev/%s", dir, stores[i]);
        CHECK(count_keys_unique(p, &lines) && lines == expect[i], "%s: %d records (want %d), keys unique", stores[i], lines, expect[i]);
    }
    /* a finished eval reruns without new work */
    snprintf(cmd, sizeof cmd, PRISM " eval --model " MODEL " --prism %s/run --chat-template llama2 --limit 5 --out %s/ev"
             " --max-tokens 8 --judge-max-tokens 4 --pairwise prism:base --no-sync --quiet", dir, dir);
    CHECK(test_run(cmd, &out) == 0, "rerun: %s", out);
    free(out);
    int lines = 0;
    snprintf(p, sizeof p, "%s/ev/mmlu.jsonl", dir);
    CHECK(count_keys_unique(p, &lines) && lines == 57 * 5 * 8, "rerun adds nothing (%d)", lines);
    /* a changed setting is refused */
    snprintf(cmd, sizeof cmd, PRISM " eval --model " MODEL " --prism %s/run --chat-template llama2 --limit 5 --out %s/ev"
             " --max-tokens 9 --judge-max-tokens 4 --quiet", dir, dir);
    CHECK(test_run(cmd, &out) == 1 && strstr(out, "max_tokens"), "changed setting refused: %s", out);
    free(out);

    /* kill and resume: same results as an uninterrupted run */
    const char *small = " --suite mmlu,mtbench,harmbench,xstest --mode base,persona,prism --shots 0 --limit 1 --max-tokens 8"
                        " --judge-max-tokens 4 --no-sync --quiet";
    snprintf(cmd, sizeof cmd, PRISM " eval --model " MODEL " --prism %s/run --chat-template llama2 --out %s/ref%s", dir, dir, small);
    t0 = (double)time(NULL);
    CHECK(test_run(cmd, &out) == 0, "reference eval: %s", out);
    free(out);
    int ref_s = (int)((double)time(NULL) - t0);
    unsigned seed = (unsigned)time(NULL);
    srand(seed);
    snprintf(cmd, sizeof cmd, "exec " PRISM " eval --model " MODEL " --prism %s/run --chat-template llama2 --out %s/crash%s >/dev/null 2>&1",
             dir, dir, small);
    int kills = 0, rc = -1;
    for (int k = 0; k < 8 && rc != 0; k++) {
        int span = (ref_s + 1) * 1000;
        rc = spawn_kill(cmd, 100 + rand() % (span > 300 ? span / 3 : 100));
        kills += rc == -1;
    }
    if (rc != 0) {
        snprintf(cmd, sizeof cmd, PRISM " eval --model " MODEL " --prism %s/run --chat-template llama2 --out %s/crash%s", dir, dir, small);
        rc = test_run(cmd, &out);
        CHECK(rc == 0, "final resume: %s", out);
        free(out);
    }
    printf("     kill test: %d kills (seed %u)\n", kills, seed);
    CHECK(kills >= 2, "at least two kills landed (%d)", kills);
    char a[1024], b[1024];
    snprintf(a, sizeof a, "%s/ref/results.json", dir);
    snprintf(b, sizeof b, "%s/crash/results.json", dir);
    json_t *ja = json_load_file(a, 0, NULL), *jb = json_load_file(b, 0, NULL);
    CHECK(ja && jb && json_equal(ja, jb), "killed-and-resumed results.json equals the uninterrupted one");
    json_decref(ja), json_decref(jb);
    for (int i = 0; i < 6; i++) {
        int la = 0, lb = 0;
        snprintf(a, sizeof a, "%s/ref/%s", dir, stores[i]);
        snprintf(b, sizeof b, "%s/crash/%s", dir, stores[i]);
        int ua = count_keys_unique(a, &la), ub = count_keys_unique(b, &lb);
        CHECK(ua && ub && la == lb, "%s: %d vs %d records, no duplicates", stores[i], la, lb);
    }

    /* the persona study */
    snprintf(cmd, sizeof cmd, PRISM " study --model " MODEL " --chat-template llama2 --suite harmbench,xstest --limit 1 --max-tokens 8"
             " --out %s/study --no-sync --quiet", dir);
    CHECK(test_run(cmd, &out) == 0, "study: %s", out);
    free(out);
    snprintf(p, sizeof p, "%s/study/results.json", dir);
    json_t *sj = json_load_file(p, 0, NULL);
    const json_t *d = json_object_get(sj, "deltas_vs_base");
    CHECK(json_object_size(d) == 6 && json_object_get(d, "persona-min-user") && json_object_get(d, "persona-full-system") &&
              json_is_number(json_object_get(json_object_get(d, "persona-half-user"), "harmbench.refusal")),
          "study: 3 lengths x 2 placements, each with deltas against base");
    json_decref(sj);

    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) {}
    TEST_MAIN_END();
}
