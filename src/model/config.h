/* config.h — the subset of a Hugging Face config.json that defines the
 * forward pass of Llama / Mistral / Qwen2 / Qwen3 causal LMs. */
#ifndef PRISM_MODEL_CONFIG_H
#define PRISM_MODEL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "prism.h"

typedef enum { ARCH_LLAMA, ARCH_MISTRAL, ARCH_QWEN2, ARCH_QWEN3 } prism_arch;

typedef enum { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3 } rope_kind;

typedef struct {
    prism_arch arch;
    char arch_name[64];   /* architectures[0] */
    char model_type[32];
    int32_t n_layers;     /* num_hidden_layers */
    int32_t hidden;       /* hidden_size */
    int32_t n_heads;      /* num_attention_heads */
    int32_t n_kv_heads;   /* num_key_value_heads (default n_heads) */
    int32_t head_dim;     /* head_dim (default hidden / n_heads) */
    int32_t ffn;          /* intermediate_size */
    int32_t vocab;        /* vocab_size */
    int32_t max_pos;      /* max_position_embeddings */
    int32_t sliding_window; /* 0 = none (Mistral v0.1 uses 4096) */
    float rms_eps;        /* rms_norm_eps */
    float rope_theta;     /* rope_theta, or rope_parameters.rope_theta */
    rope_kind rope;       /* rope_scaling / rope_parameters rope_type */
    float rope_factor;    /* linear / llama3 factor */
    float rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
    int32_t rope_orig_max_pos;                         /* llama3 original_max_position_embeddings */
    bool tie_embeddings;  /* tie_word_embeddings */
    bool qkv_bias;        /* Qwen2 always; Llama/Mistral attention_bias */
    bool o_bias;          /* Llama attention_bias also biases o_proj */
    bool mlp_bias;        /* Llama mlp_bias */
    bool qk_norm;         /* Qwen3 q_norm / k_norm */
    int32_t bos_id;       /* -1 if none */
    int32_t n_eos;
    int32_t eos_ids[8];
    char dtype[16];       /* torch_dtype / dtype, informational */
    /* generation_config.json sampling defaults */
    bool gen_do_sample;
    float gen_temperature, gen_top_p, gen_repetition_penalty;
    int32_t gen_top_k;
} prism_config;

/* Parses dir/config.json and, if present, dir/generation_config.json (whose
 * eos ids are added). Errors name the file and the key. */
prism_status prism_config_load(const char *dir, prism_config *cfg);

#endif
