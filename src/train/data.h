/* data.h — training examples from a JSONL file, one example per line:
 *
 *   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
 *       rendered with the chat template, tokenized with add_special=false;
 *       CE scores the tokens of every assistant turn (its end-of-turn tokens
 *       included). With "teacher_system": "persona" the line is also a KL
 *       example: the teacher (base model) sees the same conversation with the
 *       persona as system prompt and its top-k logits are computed at the
 *       positions that predict the response tokens.
 *   {"input_ids": [...], "labels": [...]}                  precomputed CE
 *       (labels[t] = -100: not scored; logits at t are scored against labels[t+1])
 *   {"input_ids": [...], "positions": [...], "teacher_topk_values": [[...]],
 *    "teacher_topk_indices": [[...]], "temperature": 2.0}  precomputed KL
 *
 * Every line is validated before training; problems are reported as
 * "FILE:LINE: problem". */
#ifndef PRISM_TRAIN_DATA_H
#define PRISM_TRAIN_DATA_H

#include <stdbool.h>
#include <stdint.h>

#include "prism.h"
#include "train/grad.h"

typedef struct {
    int32_t line;             /* 1-based line in the file */
    int32_t n_tokens;
    int32_t *tokens;          /* (n_tokens) student input ids */
    int32_t *labels;          /* CE: (n_tokens), -100 = not scored; NULL for KL */
    /* KL */
    int32_t n_pos, k;
    int32_t *positions;       /* (n_pos) student positions whose next token is a response token */
    float *teacher_values;    /* (n_pos, k) precomputed teacher top-k logits, or NULL (computed) */
    int32_t *teacher_indices; /* (n_pos, k) their vocabulary ids, or NULL */
    float temperature;
    int32_t n_teacher;
    int32_t *teacher_tokens;    /* (n_teacher) the teacher's sequence when computed, else NULL */
    int32_t *teacher_positions; /* (n_pos) the teacher position aligned to positions[i] */
} train_item;

typedef struct {
    train_item *items;        /* (n) usable examples, in file order */
    int32_t n;
    char **diag;              /* "FILE:LINE: ..." warnings and errors, in line order (at most 100 kept) */
    int32_t n_diag;
    int32_t n_errors, n_warnings;
    int32_t n_lines;
    int32_t max_tokens;       /* longest student sequence */
    int32_t max_teacher_tokens;
    int64_t n_scored;         /* Σ counted tokens (CE) or positions (KL) over all examples */
    uint64_t hash;            /* FNV-1a of the file's bytes (resume checks the data is unchanged) */
    bool no_chat_reported;    /* the missing chat template was explained once */
} train_data;

typedef struct {
    loss_kind loss;
    int32_t max_len;          /* longer sequences are truncated (or skipped with skip_long), with a warning */
    bool skip_long;
    int32_t n_vocab;          /* ids must lie in 0..n_vocab-1 */
    int32_t kl_topk;          /* k of the teacher top-k computed for "teacher_system" lines */
    float kl_temperature;     /* T when a line gives none */
    const prism_tokenizer *tok; /* for "messages" lines */
    const prism_chat *chat;
    const char *chat_error;     /* why tok/chat is NULL, for the message on "messages" lines */
} train_data_params;

/* Reads and validates every line of path. On PRISM_E_FORMAT (some line is
 * bad) *out is still set so the caller can print d->diag; the message names
 * the first bad line and the number of errors. */
prism_status train_data_load(const char *path, const train_data_params *p, train_data **out);
/* Same for text already in memory; name is used in messages. */
prism_status train_data_parse(const char *name, const char *text, size_t len, const train_data_params *p,
                              train_data **out);
void train_data_free(train_data *d);

/* The example for train_example_grad (KL: teacher top-k must be available in
 * values/indices, which may differ from it->teacher_values when computed). */
train_example train_item_example(const train_item *it, loss_kind loss, const float *values, const int32_t *indices);

#endif
