/* make_model.c — writes a random-weight checkpoint with the exact shapes of
 * Qwen2.5-0.5B-Instruct (BF16, tied embeddings, q/k/v biases) for benchmarks:
 *   build/bench/make_model OUT_DIR [seed]
 * Values are N(0, 0.02²)-ish (norm scales 1), so the numbers it produces are
 * meaningless but every byte the engine reads is real. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/safetensors.h"

enum { H = 896, L = 24, NH = 14, NKV = 2, HD = 64, F = 4864, V = 151936 };

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float rnd(void) {
    /* xorshift64*, sum of 4 uniforms ~ approx normal */
    float s = 0;
    for (int k = 0; k < 4; k++) {
        rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
        s += (float)((rng * 2685821657736338717ull) >> 40) / (float)(1 << 24) - 0.5f;
    }
    return s * 0.035f;
}

typedef struct { char name[96]; int nd; int64_t d0, d1; float fill; } spec;

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: make_model OUT_DIR [seed]\n");
        return 2;
    }
    if (argc > 2) rng ^= strtoull(argv[2], NULL, 10) * 0x2545F4914F6CDD1Dull;
    const char *dir = argv[1];
    char mk[4200];
    snprintf(mk, sizeof mk, "mkdir -p '%s'", dir);
    if (system(mk) != 0) {
        fprintf(stderr, "make_model: cannot create %s\n", dir);
        return 1;
    }
    spec *s = calloc(16 * L + 4, sizeof *s);
    int n = 0;
    s[n++] = (spec){"model.embed_tokens.weight", 2, V, H, 0};
    s[n++] = (spec){"model.norm.weight", 1, H, 0, 1};
    for (int l = 0; l < L; l++) {
        const struct { const char *suffix; int nd; int64_t d0, d1; float fill; } t[] = {
            {"input_layernorm.weight", 1, H, 0, 1},          {"post_attention_layernorm.weight", 1, H, 0, 1},
            {"self_attn.q_proj.weight", 2, NH * HD, H, 0},   {"self_attn.q_proj.bias", 1, NH * HD, 0, 0},
            {"self_attn.k_proj.weight", 2, NKV * HD, H, 0},  {"self_attn.k_proj.bias", 1, NKV * HD, 0, 0},
            {"self_attn.v_proj.weight", 2, NKV * HD, H, 0},  {"self_attn.v_proj.bias", 1, NKV * HD, 0, 0},
            {"self_attn.o_proj.weight", 2, H, NH * HD, 0},   {"mlp.gate_proj.weight", 2, F, H, 0},
            {"mlp.up_proj.weight", 2, F, H, 0},              {"mlp.down_proj.weight", 2, H, F, 0},
        };
        for (size_t k = 0; k < sizeof t / sizeof *t; k++) {
            snprintf(s[n].name, sizeof s[n].name, "model.layers.%d.%s", l, t[k].suffix);
            s[n].nd = t[k].nd, s[n].d0 = t[k].d0, s[n].d1 = t[k].d1, s[n].fill = t[k].fill;
            n++;
        }
    }
    st_write_tensor *w = calloc((size_t)n, sizeof *w);
    for (int i = 0; i < n; i++) {
        int64_t numel = s[i].d0 * (s[i].nd == 2 ? s[i].d1 : 1);
        float *d = malloc((size_t)numel * sizeof(float));
        if (!d) { fprintf(stderr, "out of memory\n"); return 1; }
        for (int64_t k = 0; k < numel; k++) d[k] = s[i].fill ? s[i].fill : rnd();
        w[i] = (st_write_tensor){.name = s[i].name, .dtype = ST_BF16, .ndim = s[i].nd, .shape = {s[i].d0, s[i].d1}, .data = d};
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (st_write(path, w, (size_t)n, "{\"format\": \"pt\"}")) {
        fprintf(stderr, "make_model: %s\n", prism_last_error());
        return 1;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); return 1; }
    fprintf(f, "{\n  \"architectures\": [\"Qwen2ForCausalLM\"],\n  \"model_type\": \"qwen2\",\n"
               "  \"hidden_size\": %d,\n  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n"
               "  \"num_key_value_heads\": %d,\n  \"intermediate_size\": %d,\n  \"vocab_size\": %d,\n"
               "  \"max_position_embeddings\": 32768,\n  \"rms_norm_eps\": 1e-06,\n  \"rope_theta\": 1000000.0,\n"
               "  \"rope_scaling\": null,\n  \"hidden_act\": \"silu\",\n  \"tie_word_embeddings\": true,\n"
               "  \"torch_dtype\": \"bfloat16\",\n  \"bos_token_id\": 151643,\n  \"eos_token_id\": 151645,\n"
               "  \"use_sliding_window\": false,\n  \"sliding_window\": 32768\n}\n", H, L, NH, NKV, F, V);
    fclose(f);
    for (int i = 0; i < n; i++) free((void *)w[i].data);
    free(w);
    free(s);
    printf("wrote %s (Qwen2.5-0.5B shapes, BF16 random weights)\n", dir);
    return 0;
}
