/* bootstrap.h — `prism bootstrap`: turn an instruct model into a routed model
 * (base + one persona LoRA adapter + a gate) from nothing but the model and a
 * list of domain names (arXiv 2603.18507).
 *
 * Stages, each resumable and recorded under RUN_DIR:
 *   personas  personas.jsonl   an expert persona per domain (written by the model, or --personas DIR)
 *   queries   queries.jsonl    per domain, candidate questions the model writes for that expert
 *                              (temperature 0.9), cleaned and de-duplicated; rejected candidates are
 *                              kept with the reason
 *   answers   answers.jsonl    per query: a baseline answer and a persona answer (temperature 0.7)
 *   judge     verdicts.jsonl   the model judges both orders; the persona wins only if chosen in both
 *   features  gate_features.safetensors  layer-0 hidden state at the last token of the chat-templated
 *                              query (no persona) — the gate's input at training and at inference
 *   gate      gate.safetensors MLP hidden→128→64→1 (GELU), class-balanced BCE, held-out accuracy
 *   distill   distill.jsonl + adapter/   top-k KL self-distillation of the persona answers (wins only)
 *                              into LoRA on layers 1..L-1; teacher = base model WITH the persona
 *   prism.json  settings, base-model identity, counts per stage and domain, gate report, timings.
 *
 * Batches are fixed windows over the work items and every sample has its own
 * seed, so a run killed at any point and resumed writes exactly the records an
 * uninterrupted run writes. */
#ifndef PRISM_PRISM_BOOTSTRAP_H
#define PRISM_PRISM_BOOTSTRAP_H

#include <stdbool.h>
#include <stdint.h>

#include "prism.h"
#include "prism/gate.h"

enum { PERSONA_MIN = 0, PERSONA_HALF = 1, PERSONA_FULL = 2 };

typedef struct {
    const char *model_dir;
    const char *run_dir;
    const char *domains;         /* comma-separated; NULL = the paper's 12 */
    const char *personas_dir;    /* DIR/<domain>.txt replaces persona generation */
    int persona_length;          /* PERSONA_MIN (one sentence) | HALF (~60 words) | FULL (~150 words) */
    const char *chat_template;   /* override of template detection */
    const char *device;          /* "cpu", "cuda", "cuda:N"; NULL = $PRISM_DEVICE or cpu */
    int32_t queries_per_domain;  /* 50 */
    int32_t max_candidates;      /* candidate generations per domain before giving up (default 4×queries) */
    float query_temperature;     /* 0.9 */
    int32_t max_query_tokens;    /* 96 */
    float answer_temperature;    /* 0.7 */
    int32_t max_answer_tokens;   /* 512 */
    bool judge_text;             /* free-text verdicts instead of next-token probabilities */
    int32_t judge_max_bytes;     /* answers shown to the judge are cut to this (JUDGE_MAX_ANSWER_BYTES) */
    int32_t batch;               /* sequences generated together (16) */
    uint64_t seed;
    /* gate */
    gate_train_params gate;
    double route_rate;           /* < 0: threshold 0.5; else calibrate to route this fraction */
    /* distillation */
    prism_lora_params lora;      /* r 16, alpha 32, all projections, layers 1..L-1 */
    double lr, weight_decay, warmup_ratio, max_grad_norm;
    const char *schedule;        /* "linear" | "cosine" | "constant" */
    int32_t micro_batch, grad_accum; /* effective batch = micro_batch × grad_accum (1 × 16) */
    int32_t epochs;              /* 10 */
    int32_t max_len;             /* 1024 */
    int32_t kl_topk;             /* 64 */
    float kl_temperature;        /* 2 */
    bool recompute;
    /* process */
    bool quiet;
    const char *stop_after;      /* stop after this stage (personas|queries|answers|judge|features|gate|distill) */
} bootstrap_params;

bootstrap_params bootstrap_default_params(void);

/* The paper's 12 domains, comma-separated. */
extern const char *const BOOTSTRAP_DEFAULT_DOMAINS;

prism_status prism_bootstrap(const bootstrap_params *p);

/* `prism report RUN_DIR`: the per-domain table (queries, persona win rate,
 * gate accuracy, routing rate) on stdout. */
prism_status prism_report(const char *run_dir);

#endif
