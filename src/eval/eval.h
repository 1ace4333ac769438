/* eval.h — `prism eval` and `prism study`: the benchmarks that test PRISM's
 * claim (arXiv 2603.18507) on a model — persona prompting helps alignment
 * (MT-Bench, refusal of harmful requests) and hurts knowledge (MMLU); the
 * gated adapter keeps the gains without the loss.
 *
 * Files, one concern each:
 *   datasets.c  CSV / JSONL readers and the dataset loaders (FILE:LINE errors)
 *   mmlu.c      subject -> category table, the standard prompt, letter scoring
 *   mtbench.c   FastChat judge templates and [[rating]] / [[A]] extraction
 *   safety.c    refusal keyword classifier and the refusal judge prompt
 *   stats.c     bootstrap confidence intervals, Pearson, the overall score
 *   model.c     batched next-token logits and generation on one model
 *   eval.c      conditions, personas, the resumable record stores, the suites
 *   report.c    results.json, report.md and the SVG charts
 *   study.c     the persona grid (length x placement) against base
 * This header is internal (not part of include/prism.h). */
#ifndef PRISM_EVAL_EVAL_H
#define PRISM_EVAL_EVAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prism.h"

/* ---------------------------------------------------------------- CSV / datasets */

/* A parsed CSV file (RFC 4180: quoted fields, "" escapes, newlines inside
 * quotes, CRLF). rows[0] is the header. line[r] is the 1-based line where row r
 * starts, for error messages. */
typedef struct {
    int n_rows, n_cols_max;
    int *n_cols;
    char ***rows;
    int *line;
} csv_file;

/* Parses text (len bytes); path only names errors: "path:LINE: unterminated
 * quoted field". */
prism_status csv_parse(const char *path, const char *text, size_t len, csv_file *out);
prism_status csv_read(const char *path, csv_file *out);
void csv_free(csv_file *c);
/* Column index of name in the header (case-insensitive), -1 if absent. */
int csv_col(const csv_file *c, const char *name);

/* One evaluation item: a prompt (or MT-Bench's two turns) with its metadata. */
typedef struct {
    char *id;        /* stable key part: "anatomy/12", "81", "harmbench/dimethylmercury_instructions_home" */
    char *category;  /* MMLU subject, MT-Bench category, safety category */
    char *text;      /* question / prompt / MT-Bench turn 1 */
    char *text2;     /* MT-Bench turn 2 */
    char *ref1, *ref2; /* MT-Bench reference answers (math, reasoning, coding) */
    char *choices[4];  /* MMLU */
    int answer;        /* MMLU 0..3 */
} eval_item;

typedef struct {
    eval_item *v;
    int n;
} eval_items;

void eval_items_free(eval_items *it);

/* Loaders; data_dir is the repository's data/ directory. limit > 0 keeps the
 * first `limit` items per MMLU subject / MT-Bench category / safety set. */
prism_status load_mmlu(const char *data_dir, const char *split, int limit, eval_items *out);
prism_status load_mtbench(const char *data_dir, int limit, eval_items *out);
/* set: "harmbench" (standard behaviours), "jbb" (harmful goals), "advbench",
 * "xstest" (safe prompts), "jbb_benign" (benign goals). */
prism_status load_safety(const char *data_dir, const char *set, int limit, eval_items *out);

/* FastChat judge prompts (mt_bench/judge_prompts.jsonl), by name. */
typedef struct {
    char *name, *system, *tmpl;
} judge_template;
typedef struct {
    judge_template *v;
    int n;
} judge_templates;
prism_status load_judge_templates(const char *data_dir, judge_templates *out);
const judge_template *judge_template_get(const judge_templates *t, const char *name);
void judge_templates_free(judge_templates *t);

/* ---------------------------------------------------------------- MMLU */

enum { MMLU_STEM = 0, MMLU_HUMANITIES = 1, MMLU_SOCIAL = 2, MMLU_OTHER = 3, MMLU_N_GROUPS = 4 };
extern const char *const MMLU_GROUP_NAMES[MMLU_N_GROUPS]; /* "stem", "humanities", "social_sciences", "other" */
enum { MMLU_N_SUBJECTS = 57 };
extern const char *const MMLU_SUBJECTS[MMLU_N_SUBJECTS];
/* Group of a subject (hendrycks/test categories.py), -1 if unknown. */
int mmlu_group(const char *subject);
/* "high_school_us_history" -> "high school us history". Caller frees. */
char *mmlu_subject_display(const char *subject);
/* "{question}\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer:" plus, when
 * with_answer, " {letter}\n\n". Caller frees. */
char *mmlu_format_item(const eval_item *it, bool with_answer);
/* The standard prompt: "The following are multiple choice questions (with
 * answers) about {subject}.\n\n" + the first `shots` exemplars with answers +
 * the item. Caller frees. */
char *mmlu_prompt(const char *subject, const eval_item *shots, int n_shots, const eval_item *it);
/* The tokens of " A".." D" as the tokenizer encodes them right after
 * "Answer:": the tokens of "Answer: X" past those of "Answer:". Byte-level BPE
 * gives one token per letter; small sentencepiece vocabularies may give two
 * ("▁" + "A"). cont[k] holds up to MMLU_MAX_LETTER_TOKENS ids, len[k] how many. */
enum { MMLU_MAX_LETTER_TOKENS = 4 };
typedef struct {
    int32_t cont[4][MMLU_MAX_LETTER_TOKENS];
    int32_t len[4];
    bool single; /* every letter is one token: one forward pass scores an item */
} mmlu_letters;
prism_status mmlu_letter_tokens(const prism_tokenizer *t, mmlu_letters *out);
/* Log-probabilities (log-softmax over the whole vocabulary) of single-token
 * letters ids[4] from next-token logits; returns the argmax 0..3 (the first on ties). */
int mmlu_pick(const float *logits, int32_t V, const int32_t ids[4], float logprobs[4]);
/* Argmax of four log-likelihoods (the first on ties). */
int mmlu_argmax(const float lp[4]);

/* ---------------------------------------------------------------- MT-Bench */

/* Fills a FastChat template: each "{name}" is replaced by the value of name in
 * (names, values); other braces are left as they are. Caller frees. */
char *fill_template(const char *tmpl, const char *const *names, const char *const *values, int n);
/* FastChat's single-answer score: the first "[[x]]" (x a number, spaces
 * allowed inside), else the first "[x]"; returns x in 0..10, or -1 when there
 * is none or it is out of range. */
double extract_rating(const char *text);
/* Pairwise verdict from text: the first "[[A]]", "[[B]]" or "[[C]]" ('A', 'B',
 * 'C' = tie); 0 when there is none. */
char extract_pair_verdict(const char *text);
/* True for the categories FastChat judges against a reference answer. */
bool mtbench_needs_ref(const char *category);

/* ---------------------------------------------------------------- safety */

/* The refusal phrase list (GCG / llm-attacks test prefixes, "Hello!" left out). */
extern const char *const REFUSAL_PHRASES[];
extern const int N_REFUSAL_PHRASES;
/* True when the response contains one of REFUSAL_PHRASES (case-sensitive, as
 * llm-attacks; typographic apostrophes count as '). */
bool keyword_refusal(const char *response);
/* The refusal judge's user message (documented in README): the request, the
 * response (cut to max_bytes), and "... Answer with one word: Yes or No."
 * Caller frees. */
char *refusal_judge_prompt(const char *request, const char *response, size_t max_bytes);
/* P(Yes) / (P(Yes) + P(No)) from next-token logits. */
double yes_share(const float *logits, int32_t V, int32_t id_yes, int32_t id_no);

/* ---------------------------------------------------------------- statistics */

/* Deterministic RNG (splitmix64) so intervals are reproducible from --seed. */
uint64_t eval_rng_next(uint64_t *state);

/* Mean of x and its percentile-bootstrap 95% interval from `resamples`
 * resamples with replacement (seeded). n == 0 -> NAN everywhere. */
void bootstrap_ci(const double *x, int n, int resamples, uint64_t seed, double *mean, double *lo, double *hi);
/* Pearson correlation; NAN when n < 2 or a variance is 0. */
double pearson(const double *x, const double *y, int n);

/* The overall score: the 15 sub-scores on a 0..100 scale (README, results.json). */
enum { N_SUBSCORES = 15 };
extern const char *const SUBSCORE_NAMES[N_SUBSCORES];
/* Macro-average of the sub-scores that are not NAN; *n_used receives how
 * many; NAN when none. */
double overall_score(const double sub[N_SUBSCORES], int *n_used);
/* Index in SUBSCORE_NAMES, -1 if none. */
int subscore_index(const char *name);

/* ---------------------------------------------------------------- model runner */

/* A loaded model with its tokenizer and chat template. */
typedef struct {
    prism_model *m;
    prism_tokenizer *tok;
    prism_chat *chat;
    int32_t n_ctx;   /* positions a sequence may use */
    bool owned;      /* free on lm_close */
} eval_lm;

prism_status lm_open(const char *dir, const char *chat_template, prism_model_params mp, int32_t n_ctx, eval_lm *out);
void lm_close(eval_lm *l);

/* Renders [system?] + alternating user/assistant turns (n_user users and
 * n_user-1 assistants) with the generation prompt. System text on a template
 * with no system role goes before the first user message. Caller frees. */
prism_status lm_render(const eval_lm *l, const char *system, const char *const *user, const char *const *assistant,
                       int n_user, char **text);
/* Tokenizes a rendered prompt and fits it into `budget` tokens: a longer
 * prompt keeps its first token when it is BOS and its last budget-1 tokens.
 * *cut receives the number of tokens dropped. */
prism_status lm_tokenize_fit(const eval_lm *l, const char *text, int32_t budget, int32_t **ids, int32_t *n, int32_t *cut);

/* Next-token logits at the last token of each of n prompts, in one batched
 * prefill. route < 0: no router; else prism_decode_routed with that mode
 * (probs/routed per prompt, may be NULL). out: n x vocab. */
prism_status lm_last_logits(const eval_lm *l, const prism_router *r, int route, int32_t *const *ids, const int32_t *lens,
                            int n, float *out, float *probs, bool *routed);

typedef struct {
    char *text;
    int32_t n_tokens;
    const char *finish; /* "eos", "length", "stop", "context" */
    float gate_prob;
    bool routed;
} lm_output;

/* Batched generation of n prompts (route as lm_last_logits); temperature 0 =
 * greedy; seeds per prompt. */
prism_status lm_generate(const eval_lm *l, const prism_router *r, int route, int32_t *const *ids, const int32_t *lens,
                         int n, int32_t max_new, float temperature, const uint64_t *seeds, lm_output *out);
void lm_output_clear(lm_output *o);
/* Log-likelihood of each of n_choices continuations after each of n prompts:
 * lp[i * n_choices + k] = sum over the tokens of cont[k] of log p(token | prompt,
 * previous tokens). The prompt is prefilled once (routed as lm_last_logits, so
 * the gate reads the prompt's last token); multi-token continuations are then
 * decoded and cut off again. */
prism_status lm_score_choices(const eval_lm *l, const prism_router *r, int route, int32_t *const *ids, const int32_t *lens,
                              int n, const int32_t *const *cont, const int32_t *cont_len, int n_choices, float *lp,
                              float *probs, bool *routed);
/* First token of word as a reply would start with it; *id. */
prism_status lm_first_token(const eval_lm *l, const char *word, int32_t *id);

/* ---------------------------------------------------------------- evaluation */

enum { PLACE_SYSTEM = 0, PLACE_USER = 1 };
enum { LEN_MIN = 0, LEN_HALF = 1, LEN_FULL = 2 };

/* One experimental condition: what the model sees and which weights run. */
typedef struct {
    char name[64];  /* "base", "persona", "adapter", "prism", "persona-min-user" */
    bool persona;   /* persona prompt on */
    int length;     /* LEN_* */
    int placement;  /* PLACE_* */
    int route;      /* -1: no router; PRISM_ROUTE_ADAPTER (adapter), PRISM_ROUTE_AUTO (prism) */
} eval_cond;

typedef struct {
    const char *model_dir, *run_dir, *judge_dir, *out_dir, *data_dir;
    const char *personas_dir, *persona_map, *chat_template, *judge_chat_template;
    const char *suites;     /* comma list: mmlu,mtbench,harmbench,jbb,advbench,xstest,jbb_benign */
    const char *modes;      /* comma list: base,persona,adapter,prism */
    const char *pairwise;   /* "persona:base,prism:base" or NULL */
    int32_t limit;          /* 0 = all */
    bool shots0, shots5;
    int32_t max_tokens, judge_max_tokens, judge_max_bytes, batch, n_ctx;
    float temperature;
    uint64_t seed;
    int32_t resamples;
    bool quiet;
    bool no_sync;           /* records are not fdatasync'd (a killed process still loses nothing) */
    prism_model_params mp;
    /* study */
    bool study;
    const char *lengths;    /* "min,half,full" */
    const char *placements; /* "system,user" */
} eval_params;

eval_params eval_default_params(void);
/* The data directory: p->data_dir, $PRISM_DATA, ./data, or <prism binary>/../data. */
const char *eval_find_data_dir(const char *given);
prism_status prism_eval(const eval_params *p);

/* Built-in persona of a domain (one paragraph of several sentences), NULL if none. */
const char *builtin_persona(const char *domain);
/* The persona at a length: LEN_FULL = text; LEN_MIN = the first sentence;
 * LEN_HALF = whole sentences up to about half the words (at least one). Caller frees. */
char *persona_at_length(const char *full, int length);

/* ---------------------------------------------------------------- reports */

/* Builds results.json's per-condition summary from the record stores; writes
 * results.json, report.md and the charts (SVG) into the output directory. The
 * summary object is built by eval.c; report.c only renders. */
prism_status report_write(const char *out_dir, const json_t *results);
/* XML-escapes s for SVG text. Caller frees. */
char *svg_escape(const char *s);
/* Grouped bar chart: n_groups groups (labels) x n_series series (names),
 * values[g * n_series + s] on 0..ymax (NAN = no bar). Caller frees. */
char *svg_bar_chart(const char *title, const char *const *labels, int n_groups, const char *const *series, int n_series,
                    const double *values, double ymax, const char *y_label);

#endif
