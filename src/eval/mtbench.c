/* mtbench.c — MT-Bench judging as FastChat's llm_judge does it: the judge
 * prompts of data/mt_bench/judge_prompts.jsonl filled with the question, the
 * answers and (math, reasoning, coding) the reference answer, and the verdict
 * read from the judge's text: "[[rating]]" for single-answer grading, "[[A]]",
 * "[[B]]" or "[[C]]" (tie) for pairwise comparison. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"

char *fill_template(const char *tmpl, const char *const *names, const char *const *values, int n) {
    size_t cap = strlen(tmpl) + 1, len = 0;
    for (int i = 0; i < n; i++) cap += strlen(values[i] ? values[i] : "") * 4; /* a name may appear several times */
    char *out = malloc(cap + 1);
    if (!out) return NULL;
    for (const char *p = tmpl; *p;) {
        int hit = -1;
        size_t nl = 0;
        if (*p == '{')
            for (int i = 0; i < n && hit < 0; i++) {
                nl = strlen(names[i]);
                if (!strncmp(p + 1, names[i], nl) && p[1 + nl] == '}') hit = i;
            }
        if (hit >= 0) {
            const char *v = values[hit] ? values[hit] : "";
            size_t vl = strlen(v);
            if (len + vl + 1 > cap) {
                char *no = realloc(out, (cap = (len + vl) * 2 + 1) + 1);
                if (!no) { free(out); return NULL; }
                out = no;
            }
            memcpy(out + len, v, vl);
            len += vl;
            p += nl + 2;
        } else {
            if (len + 2 > cap) {
                char *no = realloc(out, (cap *= 2) + 1);
                if (!no) { free(out); return NULL; }
                out = no;
            }
            out[len++] = *p++;
        }
    }
    out[len] = 0;
    return out;
}

/* Parses "[" (or "[[" when dbl) spaces number spaces "]" / "]]" at p; returns
 * the number or -1. FastChat's patterns are \[\[(\d+\.?\d*)\]\] then
 * \[(\d+\.?\d*)\]; spaces inside the brackets are tolerated here. */
static double bracket_number(const char *p, bool dbl, const char **end) {
    const char *q = p + (dbl ? 2 : 1);
    while (*q == ' ') q++;
    if (!isdigit((unsigned char)*q)) return -1;
    double v = 0;
    while (isdigit((unsigned char)*q)) v = v * 10 + (*q++ - '0');
    if (*q == '.') {
        q++;
        double f = 0.1;
        while (isdigit((unsigned char)*q)) v += f * (*q++ - '0'), f /= 10;
    }
    while (*q == ' ') q++;
    if (q[0] != ']' || (dbl && q[1] != ']')) return -1;
    if (end) *end = q + (dbl ? 2 : 1);
    return v;
}

double extract_rating(const char *text) {
    if (!text) return -1;
    for (int pass = 0; pass < 2; pass++) {
        bool dbl = pass == 0;
        for (const char *p = text; *p; p++) {
            if (p[0] != '[' || (dbl && p[1] != '[')) continue;
            double v = bracket_number(p, dbl, NULL);
            if (v >= 0) return v <= 10 ? v : -1;
        }
    }
    return -1;
}

char extract_pair_verdict(const char *text) {
    if (!text) return 0;
    for (const char *p = text; *p; p++)
        if (p[0] == '[' && p[1] == '[' && (p[2] == 'A' || p[2] == 'B' || p[2] == 'C') && p[3] == ']' && p[4] == ']') return p[2];
    return 0;
}

bool mtbench_needs_ref(const char *c) {
    return c && (!strcmp(c, "math") || !strcmp(c, "reasoning") || !strcmp(c, "coding"));
}
