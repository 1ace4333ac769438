/* lora.h — LoRA adapters in memory (PEFT layout, F32).
 *
 * For a target Linear y = x·Wᵀ (W [out, in]) PEFT adds
 *     y += scale · (x·Aᵀ)·Bᵀ      A = lora_A.weight [r, in], B = lora_B.weight [out, r]
 * with scale = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.
 * PEFT key of a module: base_model.model.model.layers.<L>.<self_attn|mlp>.<name>.lora_<A|B>.weight */
#ifndef PRISM_LORA_LORA_H
#define PRISM_LORA_LORA_H

#include <stdbool.h>
#include <stdint.h>

#include "prism.h"

typedef enum { LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_N_TARGETS } lora_target;

/* "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" */
extern const char *const lora_target_names[LORA_N_TARGETS];
/* "self_attn" for q/k/v/o, "mlp" for gate/up/down */
extern const char *const lora_target_parent[LORA_N_TARGETS];

/* A comma-separated list of targets — q, k, v, o, gate, up, down (or their *_proj names), attn, mlp, all — as
 * target bits in *bits. 0 on success; -1 with an unknown name (copied, truncated, into bad) or an empty list
 * (bad ""). */
int lora_parse_targets(const char *s, uint32_t *bits, char *bad, size_t badn);

typedef struct {
    int32_t r;       /* rank; 0 = this module is not adapted */
    float alpha;     /* lora_alpha (after alpha_pattern) */
    float scale;     /* alpha / r, or alpha / sqrt(r) with rslora */
    int64_t in, out; /* the base Linear's in_features, out_features */
    float *A;        /* lora_A.weight (r, in) */
    float *B;        /* lora_B.weight (out, r) */
} lora_module;

struct prism_adapter {
    int32_t n_layers;
    lora_module *mod;    /* (n_layers, LORA_N_TARGETS) */
    int32_t r;           /* default rank (adapter_config.json "r") */
    float alpha;         /* default lora_alpha */
    bool use_rslora;
    uint32_t targets;    /* bit t set: some layer adapts target t */
    char base_arch[64];  /* the base model's architectures[0], for adapter_config.json */
    char *name;          /* user-facing name (directory base name unless set) */
    int64_t n_params;    /* trainable parameters */
    uint64_t version;    /* bumped whenever A or B change (training), so device copies refresh */
    /* device copy for the CUDA backend (src/gpu/device.c) */
    struct gpu_adapter *gpu;
    const struct prism_gpu_api *gpu_api;
    uint64_t gpu_serial, gpu_version;
};

static inline lora_module *lora_mod(const prism_adapter *a, int32_t layer, lora_target t) {
    return &a->mod[(int64_t)layer * LORA_N_TARGETS + t];
}

/* An adapter with the same modules and shapes as a, all values zero (gradient
 * and optimizer-moment buffers). */
prism_status lora_alloc_like(const prism_adapter *a, prism_adapter **out);

#endif
