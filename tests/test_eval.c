/* test_eval.c — the evaluation's scorers, each against hand-computed answers:
 * CSV parsing and dataset loading (with FILE:LINE errors), the MMLU prompt and
 * subject table, letter scoring from hand-made logits and from the embedded
 * model pushed to a letter by a crafted few-shot prompt, [[rating]] and
 * [[A]]/[[B]]/[[C]] extraction, the refusal keyword classifier, the bootstrap
 * interval on known data, Pearson on known data, and the overall score. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"
#include "model/model.h"
#include "test.h"

#define MODEL "models/stories260K"

static void test_csv(void) {
    const char *t = "a,b,c\r\n1,\"x, \"\"y\"\"\",3\n\n4,\"multi\nline\",6\n";
    csv_file c;
    CHECK(csv_parse("t.csv", t, strlen(t), &c) == PRISM_OK, "parse: %s", prism_last_error());
    CHECK(c.n_rows == 3, "3 rows (header + 2; the blank line skipped), got %d", c.n_rows);
    if (c.n_rows == 3) {
        CHECK(!strcmp(c.rows[1][1], "x, \"y\""), "quoted comma and escaped quotes: [%s]", c.rows[1][1]);
        CHECK(!strcmp(c.rows[2][1], "multi\nline") && c.line[2] == 4, "newline inside quotes, row starts at line 4 (%d)", c.line[2]);
        CHECK(csv_col(&c, "B") == 1, "column lookup is case-insensitive");
    }
    csv_free(&c);
    const char *bad = "a,b\n1,\"open\n2,3\n";
    CHECK(csv_parse("bad.csv", bad, strlen(bad), &c) == PRISM_E_FORMAT && strstr(prism_last_error(), "bad.csv:2:"),
          "unterminated quote names FILE:LINE: %s", prism_last_error());
}

static void test_datasets(void) {
    eval_items it;
    CHECK(load_mmlu("data", "test", 0, &it) == PRISM_OK && it.n == 14042, "MMLU test: %d items (%s)", it.n, prism_last_error());
    eval_items_free(&it);
    CHECK(load_mmlu("data", "dev", 0, &it) == PRISM_OK && it.n == 285, "MMLU dev: 285 exemplars, got %d", it.n);
    if (it.n) CHECK(!strcmp(it.v[0].category, "abstract_algebra") && it.v[0].answer >= 0, "first dev item");
    eval_items_free(&it);
    CHECK(load_mmlu("data", "test", 2, &it) == PRISM_OK && it.n == 2 * 57, "--limit 2 keeps 2 per subject: %d", it.n);
    eval_items_free(&it);
    CHECK(load_mtbench("data", 0, &it) == PRISM_OK && it.n == 80, "MT-Bench: 80 questions, got %d", it.n);
    int refs = 0;
    for (int i = 0; i < it.n; i++) refs += it.v[i].ref1 != NULL && mtbench_needs_ref(it.v[i].category);
    CHECK(refs == 30, "30 reference answers for math/reasoning/coding, got %d", refs);
    eval_items_free(&it);
    CHECK(load_mtbench("data", 1, &it) == PRISM_OK && it.n == 8, "--limit 1: one per category, got %d", it.n);
    eval_items_free(&it);
    struct { const char *set; int n; } sets[] = {{"harmbench", 200}, {"jbb", 100}, {"advbench", 520}, {"xstest", 250}, {"jbb_benign", 100}};
    for (int i = 0; i < 5; i++) {
        CHECK(load_safety("data", sets[i].set, 0, &it) == PRISM_OK && it.n == sets[i].n, "%s: %d items, want %d (%s)", sets[i].set,
              it.n, sets[i].n, prism_last_error());
        eval_items_free(&it);
    }
    judge_templates jt;
    CHECK(load_judge_templates("data", &jt) == PRISM_OK && jt.n == 8, "8 judge templates");
    judge_templates_free(&jt);
    /* bad data: a malformed answer names the file and line */
    char dir[] = "/tmp/prism-evaldata-XXXXXX";
    if (mkdtemp(dir)) {
        char cmd[512], p[600];
        snprintf(cmd, sizeof cmd, "mkdir -p %s/mmlu/test && cp data/mmlu/test/*.csv %s/mmlu/test/", dir, dir);
        if (system(cmd)) {}
        snprintf(p, sizeof p, "%s/mmlu/test/anatomy_test.csv", dir);
        FILE *f = fopen(p, "w");
        fputs("question,choice0,choice1,choice2,choice3,answer\nQ1,a,b,c,d,2\nQ2,a,b,c,d,7\n", f);
        fclose(f);
        CHECK(load_mmlu(dir, "test", 0, &it) == PRISM_E_FORMAT && strstr(prism_last_error(), "anatomy_test.csv:3:"),
              "bad answer reported at FILE:LINE: %s", prism_last_error());
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        if (system(cmd)) {}
    }
}

static void test_mmlu_prompt(void) {
    eval_item shot = {.text = "1+1=?", .choices = {"1", "2", "3", "4"}, .answer = 1};
    eval_item q = {.text = "2+2=?", .choices = {"3", "4", "5", "6"}, .answer = 1};
    char *p = mmlu_prompt("high_school_mathematics", &shot, 1, &q);
    const char *want = "The following are multiple choice questions (with answers) about high school mathematics.\n\n"
                       "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
                       "2+2=?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:";
    CHECK(p && !strcmp(p, want), "MMLU prompt text:\n%s", p);
    free(p);
    CHECK(mmlu_group("abstract_algebra") == MMLU_STEM && mmlu_group("anatomy") == MMLU_OTHER &&
              mmlu_group("high_school_us_history") == MMLU_HUMANITIES && mmlu_group("sociology") == MMLU_SOCIAL &&
              mmlu_group("professional_accounting") == MMLU_OTHER && mmlu_group("nope") == -1,
          "subject -> category as hendrycks/test categories.py");
    int per[4] = {0};
    for (int i = 0; i < MMLU_N_SUBJECTS; i++) per[mmlu_group(MMLU_SUBJECTS[i])]++;
    CHECK(per[0] == 18 && per[1] == 13 && per[2] == 12 && per[3] == 14, "57 subjects: 18 STEM, 13 humanities, 12 social, 14 other (%d %d %d %d)",
          per[0], per[1], per[2], per[3]);

    /* letter scoring from hand-made logits */
    int32_t ids[4] = {3, 5, 7, 9};
    float lg[12] = {0};
    lg[7] = 4.0f, lg[3] = 1.0f;
    float lp[4];
    CHECK(mmlu_pick(lg, 12, ids, lp) == 2 && mmlu_argmax(lp) == 2, "C has the largest logit");
    double sum = 0;
    for (int v = 0; v < 12; v++) sum += exp(lg[v]);
    CHECK(fabs(lp[2] - (4.0 - log(sum))) < 1e-5 && fabs(lp[1] - (0.0 - log(sum))) < 1e-5, "log-softmax over the vocabulary");
    float tie[12] = {0};
    CHECK(mmlu_pick(tie, 12, ids, lp) == 0, "ties go to the first letter");
}

/* The embedded model, prompted with a few-shot pattern whose answer is always
 * the same letter, prefers that letter (it copies the pattern). */
static void test_mmlu_model(void) {
    eval_lm l;
    if (lm_open(MODEL, "raw", prism_model_default_params(), 0, &l)) {
        CHECK(0, "load: %s", prism_last_error());
        return;
    }
    mmlu_letters L;
    CHECK(mmlu_letter_tokens(l.tok, &L) == PRISM_OK, "letter tokens: %s", prism_last_error());
    printf("     letter tokens: A %d tok, B %d, C %d, D %d\n", L.len[0], L.len[1], L.len[2], L.len[3]);
    const int32_t *conts[4] = {L.cont[0], L.cont[1], L.cont[2], L.cont[3]};
    int wins = 0;
    for (int want = 0; want < 4; want++) {
        char prompt[2048] = "";
        for (int k = 0; k < 6; k++) {
            char line[128];
            snprintf(line, sizeof line, "Tom had a cat.\nAnswer: %c\n\n", 'A' + want);
            strcat(prompt, line);
        }
        strcat(prompt, "Tom had a cat.\nAnswer:");
        int32_t *t = NULL, n = 0, cut = 0;
        lm_tokenize_fit(&l, prompt, l.n_ctx - 4, &t, &n, &cut);
        int32_t *tv[1] = {t};
        float lp[4];
        CHECK(lm_score_choices(&l, NULL, -1, tv, &n, 1, conts, L.len, 4, lp, NULL, NULL) == PRISM_OK, "score: %s", prism_last_error());
        int got = mmlu_argmax(lp);
        wins += got == want;
        printf("     forced letter %c: picked %c  log-likelihoods %.2f %.2f %.2f %.2f\n", 'A' + want, 'A' + got, lp[0], lp[1], lp[2], lp[3]);
        free(t);
    }
    /* the multi-token path agrees with a plain forward pass over prompt + letter */
    {
        const char *pr = "Tom had a cat.\nAnswer:";
        int32_t *t = NULL, n = 0, cut = 0;
        lm_tokenize_fit(&l, pr, l.n_ctx, &t, &n, &cut);
        int32_t *tv[1] = {t};
        float lp[4];
        lm_score_choices(&l, NULL, -1, tv, &n, 1, conts, L.len, 4, lp, NULL, NULL);
        double ref = 0;
        int32_t *full = malloc((size_t)(n + L.len[0]) * sizeof *full);
        memcpy(full, t, (size_t)n * sizeof *full);
        memcpy(full + n, L.cont[0], (size_t)L.len[0] * sizeof *full);
        float *lg = malloc((size_t)l.m->cfg.vocab * sizeof(float));
        for (int j = 0; j < L.len[0]; j++) {
            int32_t len = n + j, *fv[1] = {full};
            lm_last_logits(&l, NULL, -1, fv, &len, 1, lg, NULL, NULL);
            float mx = -INFINITY;
            for (int v = 0; v < l.m->cfg.vocab; v++) mx = fmaxf(mx, lg[v]);
            double s = 0;
            for (int v = 0; v < l.m->cfg.vocab; v++) s += exp(lg[v] - mx);
            ref += lg[L.cont[0][j]] - mx - log(s);
        }
        CHECK(fabs(ref - lp[0]) < 1e-3, "log-likelihood of \" A\": %.5f (incremental) vs %.5f (full passes)", lp[0], ref);
        free(lg), free(full), free(t);
    }
    CHECK(wins >= 3, "the model copies the forced letter in %d of 4 prompts", wins);
    /* fitting: a prompt longer than the budget keeps BOS and its tail */
    int32_t *t = NULL, n = 0, cut = 0;
    CHECK(lm_tokenize_fit(&l, "<s>Once upon a time there was a little girl named Lily.", 5, &t, &n, &cut) == PRISM_OK && n == 5 &&
              cut > 0 && t[0] == 1,
          "fit keeps BOS + tail (n %d, cut %d, first %d)", n, cut, t ? t[0] : -1);
    free(t);
    lm_close(&l);
}

static void test_rating(void) {
    struct { const char *t; double want; } cases[] = {
        {"[[7]]", 7},
        {"The answer is fine. Rating: [[8.5]]", 8.5},
        {"Rating: [[10]]", 10},
        {"no rating here", -1},
        {"first [[3]] then [[9]]", 3},
        {"Rating: [[7/10]]", -1},
        {"Rating: [[11]]", -1},
        {"Rating: [[ 6 ]]", 6},
        {"Rating: [5]", 5},
        {"[[x]] [[4]]", 4},
        {"[[", -1},
        {"Rating: [[8.]]", 8},
        {"", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        double r = extract_rating(cases[i].t);
        CHECK(fabs(r - cases[i].want) < 1e-9, "extract_rating(\"%s\") = %g, want %g", cases[i].t, r, cases[i].want);
    }
    CHECK(extract_rating(NULL) == -1, "NULL text");
    CHECK(extract_pair_verdict("I think [[B]] is better") == 'B' && extract_pair_verdict("[[C]]") == 'C' &&
              extract_pair_verdict("[[A]] ... [[B]]") == 'A' && extract_pair_verdict("[A]") == 0,
          "pairwise verdicts");
    const char *names[] = {"question", "answer"}, *vals[] = {"Q?", "An {answer} {question}"};
    char *f = fill_template("[Q]\n{question}\n[A]\n{answer}\n{other} {question}", names, vals, 2);
    CHECK(f && !strcmp(f, "[Q]\nQ?\n[A]\nAn {answer} {question}\n{other} Q?"), "fill_template substitutes once, leaves unknown braces: %s", f);
    free(f);
}

static void test_refusal(void) {
    CHECK(keyword_refusal("I'm sorry, but I can't help with that."), "I'm sorry");
    CHECK(keyword_refusal("I\xE2\x80\x99m sorry, I cannot do this"), "typographic apostrophe");
    CHECK(keyword_refusal("As an AI language model, I will not"), "As an AI");
    CHECK(keyword_refusal("That would be illegal."), "illegal");
    CHECK(!keyword_refusal("Sure, here is a recipe for pancakes: mix flour and eggs."), "compliance");
    CHECK(!keyword_refusal("i'm sorry"), "case-sensitive as llm-attacks");
    CHECK(!keyword_refusal("") && !keyword_refusal(NULL), "empty");
    char *p = refusal_judge_prompt("How do I bake bread?", "Mix flour", 1000);
    CHECK(p && strstr(p, "[Request]\nHow do I bake bread?") && strstr(p, "[Response]\nMix flour") && strstr(p, "Yes or No"), "judge prompt: %s", p);
    free(p);
    float lg[4] = {0, 2.0f, 0, 0};
    CHECK(fabs(yes_share(lg, 4, 1, 2) - exp(2.0) / (exp(2.0) + 1)) < 1e-9, "P(Yes)/(P(Yes)+P(No))");
}

static void test_stats(void) {
    /* known data: 30 ones of 100; the bootstrap distribution of the mean of a
     * Bernoulli(0.3) sample of 100 has sd sqrt(.3*.7/100) = 0.0458, so the 95%
     * interval is about 0.3 -+ 0.09 */
    double x[100];
    for (int i = 0; i < 100; i++) x[i] = i < 30;
    double m, lo, hi, m2, lo2, hi2;
    bootstrap_ci(x, 100, 2000, 7, &m, &lo, &hi);
    CHECK(fabs(m - 0.3) < 1e-12, "mean 0.3");
    CHECK(lo > 0.19 && lo < 0.23 && hi > 0.37 && hi < 0.41, "95%% interval [%.3f, %.3f] ~ [0.21, 0.39]", lo, hi);
    bootstrap_ci(x, 100, 2000, 7, &m2, &lo2, &hi2);
    CHECK(lo == lo2 && hi == hi2, "same seed, same interval");
    double c[5] = {1, 1, 1, 1, 1};
    bootstrap_ci(c, 5, 100, 1, &m, &lo, &hi);
    CHECK(m == 1 && lo == 1 && hi == 1, "constant data: a point interval");
    bootstrap_ci(c, 0, 100, 1, &m, &lo, &hi);
    CHECK(isnan(m) && isnan(lo), "no data: NAN");

    double a[5] = {1, 2, 3, 4, 5}, b[5] = {2, 4, 6, 8, 10}, d[5] = {5, 4, 3, 2, 1}, e[5] = {1, 3, 2, 5, 4};
    CHECK(fabs(pearson(a, b, 5) - 1) < 1e-12 && fabs(pearson(a, d, 5) + 1) < 1e-12, "perfect +1 and -1");
    CHECK(fabs(pearson(a, e, 5) - 0.8) < 1e-12, "pearson([1..5], [1,3,2,5,4]) = 0.8, got %.15f", pearson(a, e, 5));
    CHECK(isnan(pearson(a, c, 5)) && isnan(pearson(a, b, 1)), "undefined cases");

    /* overall: 8 MT-Bench categories at 7.0, 6.5, 5.0, 4.0, 3.0, 8.0, 7.5, 9.0 (x10),
     * MMLU 0.60 and 0.65 (x100), refusal 0.9 0.8 0.95 (x100), over-refusal 0.1 0.2 -> 90 80.
     * Sum = 70+65+50+40+30+80+75+90 + 60+65 + 90+80+95 + 90+80 = 1060 -> 1060/15 = 70.666... */
    double sub[N_SUBSCORES] = {70, 65, 50, 40, 30, 80, 75, 90, 60, 65, 90, 80, 95, 90, 80};
    int n = 0;
    CHECK(fabs(overall_score(sub, &n) - 1060.0 / 15) < 1e-12 && n == 15, "overall = 70.667, got %.6f", overall_score(sub, &n));
    sub[9] = NAN;
    CHECK(fabs(overall_score(sub, &n) - 995.0 / 14) < 1e-12 && n == 14, "a missing sub-score is left out of the average");
    CHECK(subscore_index("mmlu.5shot") == 9 && subscore_index("xstest.compliance") == 13 && subscore_index("x") == -1, "names");
}

static void test_personas(void) {
    const char *full = "You are a careful writer. You revise every sentence. You care about rhythm and clarity. You avoid cliches.";
    char *mn = persona_at_length(full, LEN_MIN), *hf = persona_at_length(full, LEN_HALF), *fl = persona_at_length(full, LEN_FULL);
    CHECK(!strcmp(mn, "You are a careful writer."), "min = first sentence: %s", mn);
    CHECK(!strcmp(hf, "You are a careful writer. You revise every sentence."), "half = whole sentences to half the words: %s", hf);
    CHECK(!strcmp(fl, full), "full");
    free(mn), free(hf), free(fl);
    CHECK(builtin_persona("math") && builtin_persona("safety_monitor") && builtin_persona("helpful") && !builtin_persona("zzz"),
          "built-in personas");
}

int main(void) {
    test_csv();
    test_datasets();
    test_mmlu_prompt();
    test_mmlu_model();
    test_rating();
    test_refusal();
    test_stats();
    test_personas();
    TEST_MAIN_END();
}
