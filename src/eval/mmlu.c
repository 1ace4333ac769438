/* mmlu.c — MMLU (Hendrycks et al., ICLR 2021): the subject -> category table
 * of hendrycks/test categories.py, the paper's prompt format, and scoring by
 * the next-token log-likelihood of the answer letters. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"
#include "util/error.h"

const char *const MMLU_GROUP_NAMES[MMLU_N_GROUPS] = {"stem", "humanities", "social_sciences", "other"};

/* subject, its hendrycks sub-category, and the category that sub-category belongs to:
 * STEM = physics, chemistry, biology, computer science, math, engineering;
 * humanities = history, philosophy, law;
 * social sciences = politics, culture, economics, geography, psychology;
 * other = other, business, health. */
static const struct {
    const char *subject, *sub;
    int group;
} SUBJECTS[MMLU_N_SUBJECTS] = {
    {"abstract_algebra", "math", MMLU_STEM},
    {"anatomy", "health", MMLU_OTHER},
    {"astronomy", "physics", MMLU_STEM},
    {"business_ethics", "business", MMLU_OTHER},
    {"clinical_knowledge", "health", MMLU_OTHER},
    {"college_biology", "biology", MMLU_STEM},
    {"college_chemistry", "chemistry", MMLU_STEM},
    {"college_computer_science", "computer science", MMLU_STEM},
    {"college_mathematics", "math", MMLU_STEM},
    {"college_medicine", "health", MMLU_OTHER},
    {"college_physics", "physics", MMLU_STEM},
    {"computer_security", "computer science", MMLU_STEM},
    {"conceptual_physics", "physics", MMLU_STEM},
    {"econometrics", "economics", MMLU_SOCIAL},
    {"electrical_engineering", "engineering", MMLU_STEM},
    {"elementary_mathematics", "math", MMLU_STEM},
    {"formal_logic", "philosophy", MMLU_HUMANITIES},
    {"global_facts", "other", MMLU_OTHER},
    {"high_school_biology", "biology", MMLU_STEM},
    {"high_school_chemistry", "chemistry", MMLU_STEM},
    {"high_school_computer_science", "computer science", MMLU_STEM},
    {"high_school_european_history", "history", MMLU_HUMANITIES},
    {"high_school_geography", "geography", MMLU_SOCIAL},
    {"high_school_government_and_politics", "politics", MMLU_SOCIAL},
    {"high_school_macroeconomics", "economics", MMLU_SOCIAL},
    {"high_school_mathematics", "math", MMLU_STEM},
    {"high_school_microeconomics", "economics", MMLU_SOCIAL},
    {"high_school_physics", "physics", MMLU_STEM},
    {"high_school_psychology", "psychology", MMLU_SOCIAL},
    {"high_school_statistics", "math", MMLU_STEM},
    {"high_school_us_history", "history", MMLU_HUMANITIES},
    {"high_school_world_history", "history", MMLU_HUMANITIES},
    {"human_aging", "health", MMLU_OTHER},
    {"human_sexuality", "culture", MMLU_SOCIAL},
    {"international_law", "law", MMLU_HUMANITIES},
    {"jurisprudence", "law", MMLU_HUMANITIES},
    {"logical_fallacies", "philosophy", MMLU_HUMANITIES},
    {"machine_learning", "computer science", MMLU_STEM},
    {"management", "business", MMLU_OTHER},
    {"marketing", "business", MMLU_OTHER},
    {"medical_genetics", "health", MMLU_OTHER},
    {"miscellaneous", "other", MMLU_OTHER},
    {"moral_disputes", "philosophy", MMLU_HUMANITIES},
    {"moral_scenarios", "philosophy", MMLU_HUMANITIES},
    {"nutrition", "health", MMLU_OTHER},
    {"philosophy", "philosophy", MMLU_HUMANITIES},
    {"prehistory", "history", MMLU_HUMANITIES},
    {"professional_accounting", "other", MMLU_OTHER},
    {"professional_law", "law", MMLU_HUMANITIES},
    {"professional_medicine", "health", MMLU_OTHER},
    {"professional_psychology", "psychology", MMLU_SOCIAL},
    {"public_relations", "politics", MMLU_SOCIAL},
    {"security_studies", "politics", MMLU_SOCIAL},
    {"sociology", "culture", MMLU_SOCIAL},
    {"us_foreign_policy", "politics", MMLU_SOCIAL},
    {"virology", "health", MMLU_OTHER},
    {"world_religions", "philosophy", MMLU_HUMANITIES},
};

const char *const MMLU_SUBJECTS[MMLU_N_SUBJECTS] = {
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
};

int mmlu_group(const char *subject) {
    for (int i = 0; i < MMLU_N_SUBJECTS; i++)
        if (!strcmp(SUBJECTS[i].subject, subject)) return SUBJECTS[i].group;
    return -1;
}

char *mmlu_subject_display(const char *subject) {
    char *s = strdup(subject);
    for (char *c = s; c && *c; c++)
        if (*c == '_') *c = ' ';
    return s;
}

char *mmlu_format_item(const eval_item *it, bool with_answer) {
    size_t n = strlen(it->text) + 64;
    for (int k = 0; k < 4; k++) n += strlen(it->choices[k] ? it->choices[k] : "") + 8;
    char *s = malloc(n);
    if (!s) return NULL;
    int w = snprintf(s, n, "%s", it->text);
    for (int k = 0; k < 4; k++) w += snprintf(s + w, n - (size_t)w, "\n%c. %s", 'A' + k, it->choices[k] ? it->choices[k] : "");
    w += snprintf(s + w, n - (size_t)w, "\nAnswer:");
    if (with_answer) snprintf(s + w, n - (size_t)w, " %c\n\n", 'A' + (it->answer >= 0 && it->answer < 4 ? it->answer : 0));
    return s;
}

char *mmlu_prompt(const char *subject, const eval_item *shots, int n_shots, const eval_item *it) {
    char *disp = mmlu_subject_display(subject);
    char *parts[8] = {0};
    if (n_shots > 5) n_shots = 5;
    size_t n = strlen(disp) + 128;
    for (int i = 0; i < n_shots; i++) n += strlen(parts[i] = mmlu_format_item(&shots[i], true));
    char *q = mmlu_format_item(it, false);
    n += strlen(q);
    char *s = malloc(n);
    int w = snprintf(s, n, "The following are multiple choice questions (with answers) about %s.\n\n", disp);
    for (int i = 0; i < n_shots; i++) w += snprintf(s + w, n - (size_t)w, "%s", parts[i]), free(parts[i]);
    snprintf(s + w, n - (size_t)w, "%s", q);
    free(q);
    free(disp);
    return s;
}

prism_status mmlu_letter_tokens(const prism_tokenizer *t, mmlu_letters *out) {
    memset(out, 0, sizeof *out);
    int32_t *base = NULL;
    size_t nb = 0;
    prism_status st = prism_tokenize(t, "Answer:", 7, false, &base, &nb);
    out->single = true;
    for (int k = 0; !st && k < 4; k++) {
        char txt[16];
        snprintf(txt, sizeof txt, "Answer: %c", 'A' + k);
        int32_t *x = NULL;
        size_t nx = 0;
        if ((st = prism_tokenize(t, txt, strlen(txt), false, &x, &nx))) break;
        size_t i = 0;
        while (i < nb && i < nx && base[i] == x[i]) i++;
        if (i >= nx || nx - i > MMLU_MAX_LETTER_TOKENS)
            st = prism_error(PRISM_E_UNSUPPORTED, "MMLU: \"%s\" tokenizes to %zu tokens after \"Answer:\"", txt, nx - i);
        else {
            out->len[k] = (int32_t)(nx - i);
            memcpy(out->cont[k], x + i, (nx - i) * sizeof(int32_t));
            out->single &= out->len[k] == 1;
        }
        free(x);
    }
    free(base);
    for (int a = 0; !st && a < 4; a++)
        for (int b = a + 1; b < 4; b++)
            if (out->len[a] == out->len[b] && !memcmp(out->cont[a], out->cont[b], (size_t)out->len[a] * sizeof(int32_t)))
                return prism_error(PRISM_E_UNSUPPORTED, "MMLU: the answers %c and %c tokenize alike", 'A' + a, 'A' + b);
    return st;
}

int mmlu_argmax(const float lp[4]) {
    int best = 0;
    for (int k = 1; k < 4; k++)
        if (lp[k] > lp[best]) best = k;
    return best;
}

int mmlu_pick(const float *lg, int32_t V, const int32_t ids[4], float lp[4]) {
    float mx = -INFINITY;
    for (int32_t v = 0; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
    double sum = 0;
    for (int32_t v = 0; v < V; v++) sum += exp((double)lg[v] - mx);
    double lse = mx + log(sum);
    int best = 0;
    for (int k = 0; k < 4; k++) {
        lp[k] = (float)((double)lg[ids[k]] - lse);
        if (lg[ids[k]] > lg[ids[best]]) best = k;
    }
    return best;
}
