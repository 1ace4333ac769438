/* judge.c — verdict prompts, probability extraction and the both-orders rule. */
#include "prism/judge.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

judge_outcome judge_decide(judge_vote o1, judge_vote o2) {
    if (o1.choice == 'B' && o2.choice == 'A') return OUTCOME_PERSONA;
    if (o1.choice == 'A' && o2.choice == 'B') return OUTCOME_BASE;
    if (o1.choice == 'T' && o2.choice == 'T') return OUTCOME_TIE;
    return OUTCOME_DISAGREE;
}

const char *judge_outcome_name(judge_outcome o) {
    switch (o) {
    case OUTCOME_PERSONA: return "persona";
    case OUTCOME_BASE: return "base";
    case OUTCOME_TIE: return "tie";
    case OUTCOME_DISAGREE: return "disagree";
    }
    return "?";
}

/* Copies at most max bytes of s without splitting a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t max) {
    size_t n = strlen(s);
    if (n <= max) return n;
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return max;
}

char *judge_prompt(const char *q, const char *a, const char *b, size_t max_answer) {
    static const char *head =
        "Please act as an impartial judge and evaluate two responses to the user question below.\n"
        "Judge correctness first: a response with factual, logical or computational errors loses to a "
        "correct one. Then consider helpfulness, relevance, depth and clarity. Do not let the length of "
        "a response or the order in which the responses appear influence you: a longer response is not "
        "better for being longer.\n\n[Question]\n";
    size_t la = utf8_cut(a, max_answer), lb = utf8_cut(b, max_answer);
    const char *ta = la < strlen(a) ? " [truncated]" : "", *tb = lb < strlen(b) ? " [truncated]" : "";
    size_t n = strlen(head) + strlen(q) + la + lb + 512;
    char *out = malloc(n);
    if (!out) return NULL;
    snprintf(out, n,
             "%s%s\n\n[Response A]\n%.*s%s\n\n[Response B]\n%.*s%s\n\n"
             "Which response is better? Reply with exactly one word: A, B, or TIE.",
             head, q, (int)la, a, ta, (int)lb, b, tb);
    return out;
}

static prism_status first_token(const prism_tokenizer *t, const char *word, int32_t *id) {
    int32_t *ids = NULL;
    size_t n = 0;
    prism_status st = prism_tokenize(t, word, strlen(word), false, &ids, &n);
    if (st) return st;
    if (n == 0) {
        free(ids);
        return prism_error(PRISM_E_UNSUPPORTED, "judge: \"%s\" tokenizes to nothing", word);
    }
    *id = ids[0];
    free(ids);
    return PRISM_OK;
}

prism_status judge_tokens_find(const prism_tokenizer *t, judge_tokens *out) {
    prism_status st;
    if ((st = first_token(t, "A", &out->id_a)) || (st = first_token(t, "B", &out->id_b)) ||
        (st = first_token(t, "TIE", &out->id_tie)))
        return st;
    if (out->id_a == out->id_b || out->id_a == out->id_tie || out->id_b == out->id_tie)
        return prism_error(PRISM_E_UNSUPPORTED,
                           "judge: the verdicts A, B and TIE start with the same token (%d, %d, %d); use --judge-mode text",
                           out->id_a, out->id_b, out->id_tie);
    return PRISM_OK;
}

judge_vote judge_vote_from_logits(const float *lg, int32_t V, const judge_tokens *jt) {
    float mx = -INFINITY;
    for (int32_t v = 0; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
    double sum = 0;
    for (int32_t v = 0; v < V; v++) sum += exp((double)lg[v] - mx);
    judge_vote r;
    r.p_a = (float)(exp((double)lg[jt->id_a] - mx) / sum);
    r.p_b = (float)(exp((double)lg[jt->id_b] - mx) / sum);
    r.p_tie = (float)(exp((double)lg[jt->id_tie] - mx) / sum);
    /* A strict maximum is needed for A or B; any tie means no preference. */
    if (r.p_a > r.p_b && r.p_a > r.p_tie) r.choice = 'A';
    else if (r.p_b > r.p_a && r.p_b > r.p_tie) r.choice = 'B';
    else r.choice = 'T';
    return r;
}

static int is_word_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

judge_vote judge_vote_from_text(const char *text) {
    judge_vote r = {0, 0, 0, 'T'};
    for (const char *p = text; *p; p++) {
        if (p > text && is_word_char(p[-1])) continue;
        if (!strncmp(p, "TIE", 3) && !is_word_char(p[3])) { r.p_tie = 1; r.choice = 'T'; return r; }
        if ((*p == 'A' || *p == 'B') && !is_word_char(p[1])) {
            r.choice = *p;
            if (*p == 'A') r.p_a = 1; else r.p_b = 1;
            return r;
        }
    }
    return r;
}
