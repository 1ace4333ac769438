/* judge.h — PRISM self-verification: the base model compares (question,
 * answer A, answer B) under a rubric that puts correctness first and tells it
 * not to favour length, in both orders. The verdict is read from the model's
 * next-token probabilities of "A", "B" and "TIE" after the prompt (no text to
 * parse), or optionally from generated text.
 *
 * Decision table (order 1: A = base, B = persona; order 2: A = persona, B = base):
 *   o1 = B and o2 = A            -> persona wins (label 1)
 *   o1 = A and o2 = B            -> base wins    (label 0)
 *   o1 = TIE and o2 = TIE        -> tie          (label 0)
 *   anything else                -> disagreement (label 0)
 * Only a win in both orders counts for the persona. */
#ifndef PRISM_PRISM_JUDGE_H
#define PRISM_PRISM_JUDGE_H

#include <stddef.h>
#include <stdint.h>

#include "prism.h"

typedef struct {
    float p_a, p_b, p_tie; /* next-token probabilities (softmax over the whole vocabulary) */
    char choice;           /* 'A', 'B' or 'T' */
} judge_vote;

typedef enum { OUTCOME_PERSONA = 0, OUTCOME_BASE = 1, OUTCOME_TIE = 2, OUTCOME_DISAGREE = 3 } judge_outcome;

judge_outcome judge_decide(judge_vote order1, judge_vote order2);
const char *judge_outcome_name(judge_outcome o);

/* Default cap on each answer shown to the judge, in bytes (cut at a UTF-8
 * boundary, marked "[truncated]"): long answers would otherwise crowd the
 * question out of small context windows. */
#define JUDGE_MAX_ANSWER_BYTES 2000

/* The judge's user message. Caller frees. */
char *judge_prompt(const char *question, const char *answer_a, const char *answer_b, size_t max_answer_bytes);

typedef struct {
    int32_t id_a, id_b, id_tie; /* first token of "A", "B", "TIE" as the reply would start */
} judge_tokens;

/* Finds the three verdict tokens; PRISM_E_UNSUPPORTED if two coincide. */
prism_status judge_tokens_find(const prism_tokenizer *t, judge_tokens *out);

/* Vote from the logits [V] of the first reply token. */
judge_vote judge_vote_from_logits(const float *logits, int32_t V, const judge_tokens *jt);

/* Vote from generated text: the first standalone "A", "B" or "TIE" (also
 * inside [[...]]); 'T' when there is none. */
judge_vote judge_vote_from_text(const char *text);

#endif
