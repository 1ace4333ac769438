/* config.c — config.json parsing for the supported architectures.
 *
 * Two styles exist in the wild and both are accepted:
 *   published checkpoints: "rope_theta": 1e6, "rope_scaling": {...} | null,
 *                          "torch_dtype": "bfloat16", "eos_token_id": 2 | [..]
 *   transformers >= 5:     "rope_parameters": {"rope_theta":..,"rope_type":..},
 *                          "dtype": "bfloat16" */
#include "model/config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "util/error.h"

static int get_int(json_t *o, const char *key, int def, int *ok) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return def;
    if (json_is_integer(v)) return (int)json_integer_value(v);
    *ok = 0;
    return def;
}

static double get_num(json_t *o, const char *key, double def, int *ok) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return def;
    if (json_is_number(v)) return json_number_value(v);
    *ok = 0;
    return def;
}

static const char *get_str(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void add_eos(prism_config *c, json_t *v) {
    json_t *items[8];
    size_t n = 0;
    if (json_is_integer(v)) items[n++] = v;
    else if (json_is_array(v))
        for (size_t i = 0; i < json_array_size(v) && n < 8; i++) items[n++] = json_array_get(v, i);
    for (size_t i = 0; i < n; i++) {
        if (!json_is_integer(items[i])) continue;
        int id = (int)json_integer_value(items[i]);
        int dup = 0;
        for (int j = 0; j < c->n_eos; j++) dup |= c->eos_ids[j] == id;
        if (!dup && c->n_eos < 8) c->eos_ids[c->n_eos++] = id;
    }
}

static json_t *load_json(const char *path, prism_status *st) {
    json_error_t e;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        *st = prism_error(PRISM_E_IO, "%s: cannot open (missing file)", path);
        return NULL;
    }
    json_t *j = json_load_file(path, 0, &e);
    if (!j) {
        *st = prism_error(PRISM_E_FORMAT, "%s: malformed JSON at line %d column %d: %s", path, e.line, e.column, e.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        *st = prism_error(PRISM_E_FORMAT, "%s: expected a JSON object", path);
        return NULL;
    }
    *st = PRISM_OK;
    return j;
}

static prism_status parse_rope(const char *path, json_t *j, prism_config *c) {
    /* rope_parameters (new) takes precedence over rope_scaling (old). */
    json_t *rp = json_object_get(j, "rope_parameters");
    json_t *rs = json_object_get(j, "rope_scaling");
    json_t *r = json_is_object(rp) ? rp : (json_is_object(rs) ? rs : NULL);
    int ok = 1;
    c->rope_theta = (float)get_num(j, "rope_theta", 10000.0, &ok);
    if (r && json_object_get(r, "rope_theta")) c->rope_theta = (float)get_num(r, "rope_theta", c->rope_theta, &ok);
    c->rope = ROPE_DEFAULT;
    c->rope_factor = 1.0f;
    if (r) {
        const char *t = get_str(r, "rope_type");
        if (!t) t = get_str(r, "type");
        if (!t || !strcmp(t, "default")) {
            c->rope = ROPE_DEFAULT;
        } else if (!strcmp(t, "linear")) {
            c->rope = ROPE_LINEAR;
            c->rope_factor = (float)get_num(r, "factor", 1.0, &ok);
        } else if (!strcmp(t, "llama3")) {
            c->rope = ROPE_LLAMA3;
            c->rope_factor = (float)get_num(r, "factor", 8.0, &ok);
            c->rope_low_freq_factor = (float)get_num(r, "low_freq_factor", 1.0, &ok);
            c->rope_high_freq_factor = (float)get_num(r, "high_freq_factor", 4.0, &ok);
            c->rope_orig_max_pos = get_int(r, "original_max_position_embeddings", 8192, &ok);
            if (c->rope_high_freq_factor == c->rope_low_freq_factor || c->rope_orig_max_pos <= 0)
                return prism_error(PRISM_E_FORMAT, "%s: llama3 rope scaling needs high_freq_factor != low_freq_factor and original_max_position_embeddings > 0", path);
        } else {
            return prism_error(PRISM_E_UNSUPPORTED, "%s: rope type \"%s\" is not supported (supported: default, linear, llama3)", path, t);
        }
    }
    if (!ok) return prism_error(PRISM_E_FORMAT, "%s: rope parameters have a non-numeric value", path);
    if (!(c->rope_theta > 0) || !(c->rope_factor > 0))
        return prism_error(PRISM_E_FORMAT, "%s: rope_theta and rope factor must be positive", path);
    return PRISM_OK;
}

prism_status prism_config_load(const char *dir, prism_config *c) {
    char path[4096];
    prism_status st;
    memset(c, 0, sizeof *c);
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *j = load_json(path, &st);
    if (!j) return st;

    json_t *archs = json_object_get(j, "architectures");
    const char *arch = json_is_array(archs) && json_is_string(json_array_get(archs, 0))
                           ? json_string_value(json_array_get(archs, 0)) : NULL;
    const char *mt = get_str(j, "model_type");
    snprintf(c->model_type, sizeof c->model_type, "%s", mt ? mt : "");
    if (!arch) {
        /* Older exports omit "architectures"; model_type is enough. */
        if (mt && !strcmp(mt, "llama")) arch = "LlamaForCausalLM";
        else if (mt && !strcmp(mt, "mistral")) arch = "MistralForCausalLM";
        else if (mt && !strcmp(mt, "qwen2")) arch = "Qwen2ForCausalLM";
        else if (mt && !strcmp(mt, "qwen3")) arch = "Qwen3ForCausalLM";
    }
    if (!arch) {
        st = prism_error(PRISM_E_UNSUPPORTED, "%s: no \"architectures\" and unknown model_type \"%s\" (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)", path, mt ? mt : "");
        json_decref(j);
        return st;
    }
    snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);
    if (!strcmp(arch, "LlamaForCausalLM")) c->arch = ARCH_LLAMA;
    else if (!strcmp(arch, "MistralForCausalLM")) c->arch = ARCH_MISTRAL;
    else if (!strcmp(arch, "Qwen2ForCausalLM")) c->arch = ARCH_QWEN2;
    else if (!strcmp(arch, "Qwen3ForCausalLM")) c->arch = ARCH_QWEN3;
    else {
        st = prism_error(PRISM_E_UNSUPPORTED, "%s: architecture \"%s\" is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)", path, arch);
        json_decref(j);
        return st;
    }

    int ok = 1;
    c->hidden = get_int(j, "hidden_size", 0, &ok);
    c->n_layers = get_int(j, "num_hidden_layers", 0, &ok);
    c->n_heads = get_int(j, "num_attention_heads", 0, &ok);
    c->n_kv_heads = get_int(j, "num_key_value_heads", c->n_heads, &ok);
    c->ffn = get_int(j, "intermediate_size", 0, &ok);
    c->vocab = get_int(j, "vocab_size", 0, &ok);
    c->max_pos = get_int(j, "max_position_embeddings", 2048, &ok);
    c->head_dim = get_int(j, "head_dim", c->n_heads > 0 ? c->hidden / c->n_heads : 0, &ok);
    c->rms_eps = (float)get_num(j, "rms_norm_eps", 1e-6, &ok);
    c->bos_id = get_int(j, "bos_token_id", -1, &ok);
    const char *dt = get_str(j, "dtype");
    if (!dt) dt = get_str(j, "torch_dtype");
    snprintf(c->dtype, sizeof c->dtype, "%s", dt ? dt : "");
    json_t *tie = json_object_get(j, "tie_word_embeddings");
    /* transformers' default for these configs is false; Qwen checkpoints say so explicitly. */
    c->tie_embeddings = json_is_true(tie);
    c->qk_norm = c->arch == ARCH_QWEN3;
    c->qkv_bias = c->arch == ARCH_QWEN2 || json_is_true(json_object_get(j, "attention_bias"));
    c->o_bias = c->arch != ARCH_QWEN2 && c->arch != ARCH_QWEN3 && json_is_true(json_object_get(j, "attention_bias"));
    if (c->arch == ARCH_QWEN3) c->qkv_bias = json_is_true(json_object_get(j, "attention_bias")), c->o_bias = c->qkv_bias;
    c->mlp_bias = json_is_true(json_object_get(j, "mlp_bias"));
    c->sliding_window = 0;
    json_t *sw = json_object_get(j, "sliding_window");
    bool use_sw = c->arch == ARCH_MISTRAL || json_is_true(json_object_get(j, "use_sliding_window"));
    if (use_sw && json_is_integer(sw)) c->sliding_window = (int32_t)json_integer_value(sw);
    add_eos(c, json_object_get(j, "eos_token_id"));
    const char *act = get_str(j, "hidden_act");
    if (!ok) {
        json_decref(j);
        return prism_error(PRISM_E_FORMAT, "%s: a size field (hidden_size, num_hidden_layers, ...) is not an integer", path);
    }
    if (act && strcmp(act, "silu") != 0) {
        st = prism_error(PRISM_E_UNSUPPORTED, "%s: hidden_act \"%s\" is not supported (only silu)", path, act);
        json_decref(j);
        return st;
    }
    st = parse_rope(path, j, c);
    json_decref(j);
    if (st) return st;

    if (c->hidden <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->ffn <= 0 ||
        c->vocab <= 0 || c->head_dim <= 0 || c->head_dim % 2 || c->n_heads % c->n_kv_heads || c->max_pos <= 0 ||
        c->n_layers > 1024 || c->hidden > (1 << 20) || c->vocab > (1 << 24) || c->head_dim > 1024 ||
        !(c->rms_eps > 0))
        return prism_error(PRISM_E_FORMAT, "%s: impossible sizes (hidden_size %d, layers %d, heads %d, kv heads %d, head_dim %d, intermediate %d, vocab %d)",
                           path, c->hidden, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->ffn, c->vocab);

    /* generation_config.json: optional; its eos ids (e.g. Llama-3's <|eot_id|>) also stop generation. */
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    struct stat sb;
    c->gen_temperature = 1.0f, c->gen_top_p = 1.0f, c->gen_top_k = 50, c->gen_repetition_penalty = 1.0f;
    if (stat(path, &sb) == 0) {
        json_t *g = load_json(path, &st);
        if (!g) return st;
        add_eos(c, json_object_get(g, "eos_token_id"));
        c->gen_do_sample = json_is_true(json_object_get(g, "do_sample"));
        c->gen_temperature = (float)get_num(g, "temperature", 1.0, &ok);
        c->gen_top_p = (float)get_num(g, "top_p", 1.0, &ok);
        c->gen_top_k = get_int(g, "top_k", 50, &ok);
        c->gen_repetition_penalty = (float)get_num(g, "repetition_penalty", 1.0, &ok);
        if (c->bos_id < 0) c->bos_id = get_int(g, "bos_token_id", -1, &ok);
        json_decref(g);
    }
    return PRISM_OK;
}
