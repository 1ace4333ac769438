/* datasets.c — CSV and JSONL readers and the loaders of the shipped datasets
 * (data/README.md lists them with their licenses). Bad data is an error that
 * names the file and the line; nothing is skipped silently. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "eval/eval.h"
#include "util/error.h"

/* ---------------------------------------------------------------- CSV */

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        prism_error(PRISM_E_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap);
    while (buf && (r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n - 1 == 0) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    bool err = ferror(f);
    fclose(f);
    if (!buf) {
        prism_error(PRISM_E_NOMEM, "out of memory reading %s", path);
        return NULL;
    }
    if (err) {
        free(buf);
        prism_error(PRISM_E_IO, "%s: read error", path);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

typedef struct {
    char *s;
    size_t n, cap;
} sbuf;

static bool sb_put(sbuf *b, char c) {
    if (b->n + 2 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 64;
        char *ns = realloc(b->s, nc);
        if (!ns) return false;
        b->s = ns, b->cap = nc;
    }
    b->s[b->n++] = c;
    b->s[b->n] = 0;
    return true;
}

prism_status csv_parse(const char *path, const char *t, size_t len, csv_file *out) {
    memset(out, 0, sizeof *out);
    size_t i = 0;
    int line = 1, cap_rows = 0;
    if (len >= 3 && !memcmp(t, "\xEF\xBB\xBF", 3)) i = 3; /* BOM */
    while (i < len) {
        /* one row */
        int row_line = line, nf = 0, capf = 8;
        char **fields = malloc((size_t)capf * sizeof *fields);
        if (!fields) return prism_error(PRISM_E_NOMEM, "out of memory");
        for (;;) {
            sbuf f = {0};
            sb_put(&f, 0), f.n = 0;
            if (i < len && t[i] == '"') {
                int q_line = line;
                i++;
                for (;;) {
                    if (i >= len) {
                        free(f.s);
                        for (int k = 0; k < nf; k++) free(fields[k]);
                        free(fields);
                        csv_free(out);
                        return prism_error(PRISM_E_FORMAT, "%s:%d: unterminated quoted field", path, q_line);
                    }
                    if (t[i] == '"') {
                        if (i + 1 < len && t[i + 1] == '"') { sb_put(&f, '"'); i += 2; continue; }
                        i++;
                        break;
                    }
                    if (t[i] == '\n') line++;
                    sb_put(&f, t[i++]);
                }
                if (i < len && t[i] != ',' && t[i] != '\n' && t[i] != '\r') {
                    free(f.s);
                    for (int k = 0; k < nf; k++) free(fields[k]);
                    free(fields);
                    csv_free(out);
                    return prism_error(PRISM_E_FORMAT, "%s:%d: unexpected character after a closing quote", path, line);
                }
            } else {
                while (i < len && t[i] != ',' && t[i] != '\n' && !(t[i] == '\r' && i + 1 < len && t[i + 1] == '\n')) sb_put(&f, t[i++]);
            }
            if (nf == capf) fields = realloc(fields, (size_t)(capf *= 2) * sizeof *fields);
            fields[nf++] = f.s;
            if (i < len && t[i] == ',') { i++; continue; }
            if (i < len && t[i] == '\r') i++;
            if (i < len && t[i] == '\n') i++, line++;
            break;
        }
        if (nf == 1 && fields[0][0] == 0) { /* blank line */
            free(fields[0]);
            free(fields);
            continue;
        }
        if (out->n_rows == cap_rows) {
            cap_rows = cap_rows ? cap_rows * 2 : 64;
            out->rows = realloc(out->rows, (size_t)cap_rows * sizeof *out->rows);
            out->n_cols = realloc(out->n_cols, (size_t)cap_rows * sizeof *out->n_cols);
            out->line = realloc(out->line, (size_t)cap_rows * sizeof *out->line);
        }
        out->rows[out->n_rows] = fields;
        out->n_cols[out->n_rows] = nf;
        out->line[out->n_rows] = row_line;
        if (nf > out->n_cols_max) out->n_cols_max = nf;
        out->n_rows++;
    }
    return PRISM_OK;
}

prism_status csv_read(const char *path, csv_file *out) {
    size_t len = 0;
    char *t = read_all(path, &len);
    if (!t) {
        memset(out, 0, sizeof *out);
        return PRISM_E_IO;
    }
    prism_status st = csv_parse(path, t, len, out);
    free(t);
    return st;
}

void csv_free(csv_file *c) {
    for (int r = 0; r < c->n_rows; r++) {
        for (int k = 0; k < c->n_cols[r]; k++) free(c->rows[r][k]);
        free(c->rows[r]);
    }
    free(c->rows);
    free(c->n_cols);
    free(c->line);
    memset(c, 0, sizeof *c);
}

int csv_col(const csv_file *c, const char *name) {
    if (c->n_rows == 0) return -1;
    for (int k = 0; k < c->n_cols[0]; k++)
        if (!strcasecmp(c->rows[0][k], name)) return k;
    return -1;
}

/* ---------------------------------------------------------------- items */

void eval_items_free(eval_items *it) {
    for (int i = 0; i < it->n; i++) {
        eval_item *e = &it->v[i];
        free(e->id), free(e->category), free(e->text), free(e->text2), free(e->ref1), free(e->ref2);
        for (int k = 0; k < 4; k++) free(e->choices[k]);
    }
    free(it->v);
    memset(it, 0, sizeof *it);
}

static eval_item *items_push(eval_items *it) {
    if ((it->n & (it->n - 1)) == 0) {
        int cap = it->n ? it->n * 2 : 16;
        eval_item *nv = realloc(it->v, (size_t)cap * sizeof *nv);
        if (!nv) return NULL;
        it->v = nv;
    }
    eval_item *e = &it->v[it->n++];
    memset(e, 0, sizeof *e);
    e->answer = -1;
    return e;
}

static char *dupf(const char *fmt, const char *a, int b) {
    char buf[1024];
    snprintf(buf, sizeof buf, fmt, a, b);
    return strdup(buf);
}

static bool blank(const char *s) {
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return false;
    return true;
}

/* ---------------------------------------------------------------- MMLU */

prism_status load_mmlu(const char *data_dir, const char *split, int limit, eval_items *out) {
    memset(out, 0, sizeof *out);
    for (int s = 0; s < MMLU_N_SUBJECTS; s++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/mmlu/%s/%s_%s.csv", data_dir, split, MMLU_SUBJECTS[s], split);
        csv_file c;
        prism_status st = csv_read(path, &c);
        if (st) { eval_items_free(out); return st; }
        int cq = csv_col(&c, "question"), cc[4], ca = csv_col(&c, "answer");
        static const char *const choice_cols[4] = {"choice0", "choice1", "choice2", "choice3"};
        for (int k = 0; k < 4; k++) cc[k] = csv_col(&c, choice_cols[k]);
        if (cq < 0 || ca < 0 || cc[0] < 0 || cc[1] < 0 || cc[2] < 0 || cc[3] < 0) {
            csv_free(&c);
            eval_items_free(out);
            return prism_error(PRISM_E_FORMAT, "%s:1: expected the header question,choice0,choice1,choice2,choice3,answer", path);
        }
        int kept = 0;
        for (int r = 1; r < c.n_rows && (limit <= 0 || kept < limit); r++) {
            if (c.n_cols[r] != c.n_cols[0]) {
                st = prism_error(PRISM_E_FORMAT, "%s:%d: %d fields, the header has %d", path, c.line[r], c.n_cols[r], c.n_cols[0]);
                break;
            }
            const char *a = c.rows[r][ca];
            int ans = -1;
            if (a[0] >= '0' && a[0] <= '3' && !a[1]) ans = a[0] - '0';
            else if (a[0] >= 'A' && a[0] <= 'D' && !a[1]) ans = a[0] - 'A';
            if (ans < 0) { st = prism_error(PRISM_E_FORMAT, "%s:%d: answer \"%.20s\" is not 0-3 or A-D", path, c.line[r], a); break; }
            if (blank(c.rows[r][cq])) { st = prism_error(PRISM_E_FORMAT, "%s:%d: empty question", path, c.line[r]); break; }
            eval_item *e = items_push(out);
            if (!e) { st = prism_error(PRISM_E_NOMEM, "out of memory"); break; }
            e->id = dupf("%s/%d", MMLU_SUBJECTS[s], r - 1);
            e->category = strdup(MMLU_SUBJECTS[s]);
            e->text = strdup(c.rows[r][cq]);
            for (int k = 0; k < 4; k++) e->choices[k] = strdup(c.rows[r][cc[k]]);
            e->answer = ans;
            kept++;
        }
        csv_free(&c);
        if (st) { eval_items_free(out); return st; }
    }
    return PRISM_OK;
}

/* ---------------------------------------------------------------- JSONL */

typedef prism_status (*jsonl_fn)(void *user, const char *path, int line, json_t *obj);

static prism_status jsonl_each(const char *path, jsonl_fn fn, void *user) {
    size_t len = 0;
    char *t = read_all(path, &len);
    if (!t) return PRISM_E_IO;
    prism_status st = PRISM_OK;
    int line = 0;
    for (char *p = t; !st && p < t + len;) {
        char *nl = memchr(p, '\n', (size_t)(t + len - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(t + len - p);
        line++;
        bool empty = true;
        for (size_t k = 0; k < n; k++) empty &= p[k] == ' ' || p[k] == '\t' || p[k] == '\r';
        if (!empty) {
            json_error_t je;
            json_t *o = json_loadb(p, n, 0, &je);
            if (!o || !json_is_object(o)) st = prism_error(PRISM_E_FORMAT, "%s:%d: not a JSON object%s%s", path, line, o ? "" : ": ", o ? "" : je.text);
            else st = fn(user, path, line, o);
            json_decref(o);
        }
        p += n + 1;
    }
    free(t);
    return st;
}

typedef struct {
    eval_items *out;
    int limit;
    json_t *refs; /* question_id (text) -> [ref1, ref2] */
} mt_ctx;

static const char *opt_str(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

static prism_status mt_ref_line(void *user, const char *path, int line, json_t *o) {
    mt_ctx *c = user;
    json_t *qid = json_object_get(o, "question_id");
    json_t *turns = json_object_get(json_array_get(json_object_get(o, "choices"), 0), "turns");
    if (!json_is_integer(qid) || !json_is_array(turns))
        return prism_error(PRISM_E_FORMAT, "%s:%d: expected question_id and choices[0].turns", path, line);
    char k[32];
    snprintf(k, sizeof k, "%lld", (long long)json_integer_value(qid));
    json_object_set(c->refs, k, turns);
    return PRISM_OK;
}

static prism_status mt_q_line(void *user, const char *path, int line, json_t *o) {
    mt_ctx *c = user;
    json_t *qid = json_object_get(o, "question_id"), *turns = json_object_get(o, "turns");
    const char *cat = opt_str(o, "category");
    if (!json_is_integer(qid) || !cat || !json_is_array(turns) || json_array_size(turns) != 2 ||
        !json_is_string(json_array_get(turns, 0)) || !json_is_string(json_array_get(turns, 1)))
        return prism_error(PRISM_E_FORMAT, "%s:%d: expected question_id, category and two string turns", path, line);
    int in_cat = 0;
    for (int i = 0; i < c->out->n; i++) in_cat += !strcmp(c->out->v[i].category, cat);
    if (c->limit > 0 && in_cat >= c->limit) return PRISM_OK;
    eval_item *e = items_push(c->out);
    if (!e) return prism_error(PRISM_E_NOMEM, "out of memory");
    char k[32];
    snprintf(k, sizeof k, "%lld", (long long)json_integer_value(qid));
    for (int i = 0; i < c->out->n - 1; i++)
        if (!strcmp(c->out->v[i].id, k)) return prism_error(PRISM_E_FORMAT, "%s:%d: question_id %s repeated", path, line, k);
    e->id = strdup(k);
    e->category = strdup(cat);
    e->text = strdup(json_string_value(json_array_get(turns, 0)));
    e->text2 = strdup(json_string_value(json_array_get(turns, 1)));
    /* references: the question's own "reference" field, else the GPT-4 file */
    json_t *ref = json_object_get(o, "reference");
    if (!json_is_array(ref)) ref = json_object_get(c->refs, k);
    if (json_is_array(ref)) {
        const char *r1 = json_string_value(json_array_get(ref, 0)), *r2 = json_string_value(json_array_get(ref, 1));
        if (r1) e->ref1 = strdup(r1);
        if (r2) e->ref2 = strdup(r2);
    }
    return PRISM_OK;
}

prism_status load_mtbench(const char *data_dir, int limit, eval_items *out) {
    memset(out, 0, sizeof *out);
    mt_ctx c = {out, limit, json_object()};
    char path[4200];
    snprintf(path, sizeof path, "%s/mt_bench/reference_answer_gpt-4.jsonl", data_dir);
    prism_status st = jsonl_each(path, mt_ref_line, &c);
    if (!st) {
        snprintf(path, sizeof path, "%s/mt_bench/question.jsonl", data_dir);
        st = jsonl_each(path, mt_q_line, &c);
    }
    json_decref(c.refs);
    if (st) eval_items_free(out);
    return st;
}

static prism_status jt_line(void *user, const char *path, int line, json_t *o) {
    judge_templates *t = user;
    const char *name = opt_str(o, "name"), *sys = opt_str(o, "system_prompt"), *tm = opt_str(o, "prompt_template");
    if (!name || !sys || !tm) return prism_error(PRISM_E_FORMAT, "%s:%d: expected name, system_prompt, prompt_template", path, line);
    judge_template *nv = realloc(t->v, (size_t)(t->n + 1) * sizeof *nv);
    if (!nv) return prism_error(PRISM_E_NOMEM, "out of memory");
    t->v = nv;
    t->v[t->n++] = (judge_template){strdup(name), strdup(sys), strdup(tm)};
    return PRISM_OK;
}

prism_status load_judge_templates(const char *data_dir, judge_templates *out) {
    memset(out, 0, sizeof *out);
    char path[4200];
    snprintf(path, sizeof path, "%s/mt_bench/judge_prompts.jsonl", data_dir);
    prism_status st = jsonl_each(path, jt_line, out);
    static const char *need[] = {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn",
                                 "pair-v2", "pair-math-v1", "pair-v2-multi-turn", "pair-math-v1-multi-turn"};
    for (int i = 0; !st && i < 8; i++)
        if (!judge_template_get(out, need[i])) st = prism_error(PRISM_E_FORMAT, "%s: judge prompt \"%s\" is missing", path, need[i]);
    if (st) judge_templates_free(out);
    return st;
}

const judge_template *judge_template_get(const judge_templates *t, const char *name) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->v[i].name, name)) return &t->v[i];
    return NULL;
}

void judge_templates_free(judge_templates *t) {
    for (int i = 0; i < t->n; i++) free(t->v[i].name), free(t->v[i].system), free(t->v[i].tmpl);
    free(t->v);
    memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------- safety sets */

typedef struct {
    const char *name, *file, *prompt_col, *id_col, *cat_col, *filter_col, *filter_val;
} safety_spec;

static const safety_spec SAFETY[] = {
    {"harmbench", "harmbench/harmbench_behaviors_text_all.csv", "Behavior", "BehaviorID", "SemanticCategory", "FunctionalCategory", "standard"},
    {"jbb", "jbb/jbb_harmful_behaviors_from_artifacts.csv", "Goal", "Index", "Category", NULL, NULL},
    {"advbench", "advbench/harmful_behaviors.csv", "goal", NULL, NULL, NULL, NULL},
    {"xstest", "xstest/xstest_prompts.csv", "prompt", "id", "type", "label", "safe"},
    {"jbb_benign", "jbb/benign-behaviors.csv", "goal", "index", "category", NULL, NULL},
};

prism_status load_safety(const char *data_dir, const char *set, int limit, eval_items *out) {
    memset(out, 0, sizeof *out);
    const safety_spec *sp = NULL;
    for (size_t i = 0; i < sizeof SAFETY / sizeof *SAFETY; i++)
        if (!strcmp(SAFETY[i].name, set)) sp = &SAFETY[i];
    if (!sp) return prism_error(PRISM_E_ARG, "unknown safety set \"%s\"", set);
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", data_dir, sp->file);
    csv_file c;
    prism_status st = csv_read(path, &c);
    if (st) return st;
    int cp = csv_col(&c, sp->prompt_col), ci = sp->id_col ? csv_col(&c, sp->id_col) : -1,
        cc = sp->cat_col ? csv_col(&c, sp->cat_col) : -1, cf = sp->filter_col ? csv_col(&c, sp->filter_col) : -1;
    if (cp < 0 || (sp->id_col && ci < 0) || (sp->cat_col && cc < 0) || (sp->filter_col && cf < 0)) {
        csv_free(&c);
        return prism_error(PRISM_E_FORMAT, "%s:1: header lacks a column this set needs (%s%s%s%s%s%s%s)", path, sp->prompt_col,
                           sp->id_col ? ", " : "", sp->id_col ? sp->id_col : "", sp->cat_col ? ", " : "", sp->cat_col ? sp->cat_col : "",
                           sp->filter_col ? ", " : "", sp->filter_col ? sp->filter_col : "");
    }
    for (int r = 1; r < c.n_rows && (limit <= 0 || out->n < limit); r++) {
        if (c.n_cols[r] != c.n_cols[0]) {
            st = prism_error(PRISM_E_FORMAT, "%s:%d: %d fields, the header has %d", path, c.line[r], c.n_cols[r], c.n_cols[0]);
            break;
        }
        if (cf >= 0 && strcmp(c.rows[r][cf], sp->filter_val) != 0) continue;
        if (blank(c.rows[r][cp])) { st = prism_error(PRISM_E_FORMAT, "%s:%d: empty prompt", path, c.line[r]); break; }
        eval_item *e = items_push(out);
        if (!e) { st = prism_error(PRISM_E_NOMEM, "out of memory"); break; }
        char idb[512];
        if (ci >= 0) snprintf(idb, sizeof idb, "%s", c.rows[r][ci]);
        else snprintf(idb, sizeof idb, "%d", r - 1);
        for (char *q = idb; *q; q++)
            if (*q == '/' || *q == ' ' || (unsigned char)*q < 32) *q = '_';
        e->id = strdup(idb);
        e->category = strdup(cc >= 0 && c.rows[r][cc][0] ? c.rows[r][cc] : set);
        e->text = strdup(c.rows[r][cp]);
        for (int i = 0; i < out->n - 1; i++)
            if (!strcmp(out->v[i].id, e->id)) {
                st = prism_error(PRISM_E_FORMAT, "%s:%d: id \"%s\" repeated", path, c.line[r], e->id);
                break;
            }
        if (st) break;
    }
    csv_free(&c);
    if (st) eval_items_free(out);
    return st;
}
