/* rope.h — rotary position embeddings (HF "rotate_half" layout: dimension i
 * pairs with i + head_dim/2), with default, linear and Llama-3.1 scaling. */
#ifndef PRISM_MODEL_ROPE_H
#define PRISM_MODEL_ROPE_H

#include <stdint.h>

#include "model/config.h"

/* inv_freq[head_dim/2] after the configured scaling, computed as
 * transformers does (F32 arithmetic). */
void rope_inv_freq(const prism_config *c, float *inv_freq);

/* Rotates n_heads heads of x (each head_dim contiguous floats) at position pos. */
void rope_apply(float *x, int32_t n_heads, int32_t head_dim, int32_t pos, const float *inv_freq);

#endif
