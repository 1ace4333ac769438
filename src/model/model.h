/* model.h — a loaded checkpoint: config + weights pointing into the mmap.
 *
 * Matmul weights stay in their stored dtype (F32/BF16/F16) inside the
 * read-only mapping; only the small vectors (norm scales, biases) are copied
 * to F32. Shapes below use HF's [out_features, in_features] layout. */
#ifndef PRISM_MODEL_MODEL_H
#define PRISM_MODEL_MODEL_H

#include "model/config.h"
#include "model/safetensors.h"
#include "prism.h"

typedef struct {
    const void *w;   /* weight data in the mmap, [out, in] */
    st_dtype dt;
    int64_t out, in;
} linear_w;

typedef struct {
    float *attn_norm;   /* model.layers.L.input_layernorm.weight          (H) */
    linear_w wq;        /* model.layers.L.self_attn.q_proj.weight     (nh*hd, H) */
    linear_w wk;        /* model.layers.L.self_attn.k_proj.weight    (nkv*hd, H) */
    linear_w wv;        /* model.layers.L.self_attn.v_proj.weight    (nkv*hd, H) */
    linear_w wo;        /* model.layers.L.self_attn.o_proj.weight     (H, nh*hd) */
    float *bq, *bk, *bv, *bo; /* .bias when present (Qwen2 q/k/v)          */
    float *q_norm;      /* model.layers.L.self_attn.q_norm.weight (hd), Qwen3 */
    float *k_norm;      /* model.layers.L.self_attn.k_norm.weight (hd), Qwen3 */
    float *ffn_norm;    /* model.layers.L.post_attention_layernorm.weight (H) */
    linear_w wg;        /* model.layers.L.mlp.gate_proj.weight          (F, H) */
    linear_w wu;        /* model.layers.L.mlp.up_proj.weight            (F, H) */
    linear_w wd;        /* model.layers.L.mlp.down_proj.weight          (H, F) */
    float *bg, *bu, *bd; /* mlp biases when mlp_bias                         */
} layer_w;

struct prism_model {
    prism_config cfg;
    st_set *st;
    linear_w embed;     /* model.embed_tokens.weight (V, H) */
    linear_w lm_head;   /* lm_head.weight (V, H), or embed when tied */
    float *final_norm;  /* model.norm.weight (H) */
    layer_w *layers;    /* n_layers */
    float *rope_inv_freq; /* (hd/2) after scaling */
    prism_model_params params;
    int64_t weight_bytes, n_params;
    char dir[4096];
    /* CUDA backend (src/gpu/device.c): the module's model handle when params.device >= 0 */
    struct gpu_model *gpu;
    const struct prism_gpu_api *gpu_api;
    uint64_t gpu_serial;
};

/* A model of shape cfg whose BF16 weights the CUDA module fills with noise on
 * device `device` (benchmarks of real shapes without multi-GB files). */
prism_status model_new_random(const prism_config *cfg, int32_t device, uint64_t seed, prism_model **out);

#endif
