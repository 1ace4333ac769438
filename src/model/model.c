/* model.c — binds a Hugging Face checkpoint's tensors to the Llama-family
 * layer structure and validates every shape against config.json. */
#include "model/model.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/device.h"
#include "model/rope.h"
#include "util/error.h"

/* Marks an unparsable $PRISM_DEVICE; prism_model_load reports it. */
#define DEVICE_BAD_ENV (-2)

prism_model_params prism_model_default_params(void) {
    prism_model_params p = {.n_threads = 0, .precision = PRISM_PRECISION_FAST, .device = PRISM_DEVICE_CPU};
    const char *env = getenv("PRISM_DEVICE");
    if (env && *env && prism_device_parse(env, &p.device)) p.device = DEVICE_BAD_ENV;
    return p;
}

static const st_tensor *need(prism_model *m, const char *name, int ndim, int64_t d0, int64_t d1, prism_status *st) {
    const st_tensor *t = st_find(m->st, name);
    if (!t) {
        *st = prism_error(PRISM_E_FORMAT, "%s: tensor %s is missing from the checkpoint", m->dir, name);
        return NULL;
    }
    int shape_ok = t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1);
    if (!shape_ok) {
        char got[128] = "";
        for (int i = 0; i < t->ndim && i < 4; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        if (ndim == 1)
            *st = prism_error(PRISM_E_FORMAT, "%s: tensor %s has shape [%s], config.json implies [%lld]",
                              st_file_path(m->st, t), name, got, (long long)d0);
        else
            *st = prism_error(PRISM_E_FORMAT, "%s: tensor %s has shape [%s], config.json implies [%lld, %lld]",
                              st_file_path(m->st, t), name, got, (long long)d0, (long long)d1);
        return NULL;
    }
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) {
        *st = prism_error(PRISM_E_UNSUPPORTED, "%s: tensor %s has dtype %s (supported: F32, BF16, F16)",
                          st_file_path(m->st, t), name, st_dtype_name(t->dtype));
        return NULL;
    }
    m->weight_bytes += (int64_t)t->nbytes;
    m->n_params += t->numel;
    return t;
}

static prism_status bind_linear(prism_model *m, linear_w *w, const char *name, int64_t out, int64_t in) {
    prism_status st = PRISM_OK;
    const st_tensor *t = need(m, name, 2, out, in, &st);
    if (!t) return st;
    w->w = t->data;
    w->dt = t->dtype;
    w->out = out;
    w->in = in;
    return PRISM_OK;
}

static prism_status bind_vec(prism_model *m, float **dst, const char *name, int64_t n) {
    prism_status st = PRISM_OK;
    const st_tensor *t = need(m, name, 1, n, 0, &st);
    if (!t) return st;
    *dst = malloc((size_t)n * sizeof(float));
    if (!*dst) return prism_error(PRISM_E_NOMEM, "out of memory copying %s", name);
    return st_read_f32(m->st, t, *dst);
}

#define TRY(x) do { prism_status s_ = (x); if (s_) { prism_model_free(m); return s_; } } while (0)

prism_status prism_model_load(const char *dir, prism_model_params params, prism_model **out) {
    *out = NULL;
    if (params.device == DEVICE_BAD_ENV)
        return prism_error(PRISM_E_ARG, "PRISM_DEVICE=\"%s\": unknown device (expected cpu, cuda or cuda:N)", getenv("PRISM_DEVICE"));
    if (params.device < PRISM_DEVICE_CPU) return prism_error(PRISM_E_ARG, "device %d is not a device", params.device);
    prism_model *m = calloc(1, sizeof *m);
    if (!m) return prism_error(PRISM_E_NOMEM, "out of memory");
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    m->params = params;
    if (params.n_threads > 0) omp_set_num_threads(params.n_threads);
    TRY(prism_config_load(dir, &m->cfg));
    TRY(st_open(dir, &m->st));
    const prism_config *c = &m->cfg;
    const int64_t H = c->hidden, hd = c->head_dim, q_dim = (int64_t)c->n_heads * hd,
                  kv_dim = (int64_t)c->n_kv_heads * hd, F = c->ffn, V = c->vocab;
    char n[256];
    TRY(bind_linear(m, &m->embed, "model.embed_tokens.weight", V, H));
    if (st_find(m->st, "lm_head.weight") && !c->tie_embeddings) {
        TRY(bind_linear(m, &m->lm_head, "lm_head.weight", V, H));
    } else if (!c->tie_embeddings) {
        TRY(prism_error(PRISM_E_FORMAT, "%s: lm_head.weight is missing and tie_word_embeddings is false in config.json", dir));
    } else {
        m->lm_head = m->embed;
    }
    TRY(bind_vec(m, &m->final_norm, "model.norm.weight", H));
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) TRY(prism_error(PRISM_E_NOMEM, "out of memory"));
    for (int l = 0; l < c->n_layers; l++) {
        layer_w *L = &m->layers[l];
#define P(suffix) (snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix), n)
        TRY(bind_vec(m, &L->attn_norm, P("input_layernorm.weight"), H));
        TRY(bind_linear(m, &L->wq, P("self_attn.q_proj.weight"), q_dim, H));
        TRY(bind_linear(m, &L->wk, P("self_attn.k_proj.weight"), kv_dim, H));
        TRY(bind_linear(m, &L->wv, P("self_attn.v_proj.weight"), kv_dim, H));
        TRY(bind_linear(m, &L->wo, P("self_attn.o_proj.weight"), H, q_dim));
        if (c->qkv_bias) {
            TRY(bind_vec(m, &L->bq, P("self_attn.q_proj.bias"), q_dim));
            TRY(bind_vec(m, &L->bk, P("self_attn.k_proj.bias"), kv_dim));
            TRY(bind_vec(m, &L->bv, P("self_attn.v_proj.bias"), kv_dim));
        }
        if (c->o_bias) TRY(bind_vec(m, &L->bo, P("self_attn.o_proj.bias"), H));
        if (c->qk_norm) {
            TRY(bind_vec(m, &L->q_norm, P("self_attn.q_norm.weight"), hd));
            TRY(bind_vec(m, &L->k_norm, P("self_attn.k_norm.weight"), hd));
        }
        TRY(bind_vec(m, &L->ffn_norm, P("post_attention_layernorm.weight"), H));
        TRY(bind_linear(m, &L->wg, P("mlp.gate_proj.weight"), F, H));
        TRY(bind_linear(m, &L->wu, P("mlp.up_proj.weight"), F, H));
        TRY(bind_linear(m, &L->wd, P("mlp.down_proj.weight"), H, F));
        if (c->mlp_bias) {
            TRY(bind_vec(m, &L->bg, P("mlp.gate_proj.bias"), F));
            TRY(bind_vec(m, &L->bu, P("mlp.up_proj.bias"), F));
            TRY(bind_vec(m, &L->bd, P("mlp.down_proj.bias"), H));
        }
#undef P
    }
    m->rope_inv_freq = malloc((size_t)(hd / 2) * sizeof(float));
    if (!m->rope_inv_freq) TRY(prism_error(PRISM_E_NOMEM, "out of memory"));
    rope_inv_freq(c, m->rope_inv_freq);
    if (params.device >= 0) TRY(gpu_model_attach(m, params.device, 0, 0));
    *out = m;
    return PRISM_OK;
}

prism_status model_new_random(const prism_config *cfg, int32_t device, uint64_t seed, prism_model **out) {
    *out = NULL;
    if (device < 0) return prism_error(PRISM_E_ARG, "random-weight models live on a CUDA device only");
    prism_model *m = calloc(1, sizeof *m);
    if (!m) return prism_error(PRISM_E_NOMEM, "out of memory");
    m->cfg = *cfg;
    m->params = prism_model_default_params();
    snprintf(m->dir, sizeof m->dir, "(random %s)", cfg->arch_name);
    const prism_config *c = &m->cfg;
    const int64_t H = c->hidden, hd = c->head_dim, qd = (int64_t)c->n_heads * hd, kvd = (int64_t)c->n_kv_heads * hd,
                  F = c->ffn, V = c->vocab;
#define LW(o, i) ((linear_w){NULL, ST_BF16, (o), (i)})
    m->embed = LW(V, H);
    m->lm_head = LW(V, H);
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    m->rope_inv_freq = malloc((size_t)(hd / 2) * sizeof(float));
    if (!m->layers || !m->rope_inv_freq) TRY(prism_error(PRISM_E_NOMEM, "out of memory"));
    for (int l = 0; l < c->n_layers; l++) {
        layer_w *L = &m->layers[l];
        L->wq = LW(qd, H), L->wk = LW(kvd, H), L->wv = LW(kvd, H), L->wo = LW(H, qd);
        L->wg = LW(F, H), L->wu = LW(F, H), L->wd = LW(H, F);
        m->n_params += (qd + 2 * kvd) * H + H * qd + 3 * F * H;
    }
#undef LW
    m->n_params += V * H * (c->tie_embeddings ? 1 : 2);
    m->weight_bytes = 2 * m->n_params;
    rope_inv_freq(c, m->rope_inv_freq);
    TRY(gpu_model_attach(m, device, 1, seed));
    *out = m;
    return PRISM_OK;
}

void prism_model_free(prism_model *m) {
    if (!m) return;
    gpu_model_detach(m);
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            layer_w *L = &m->layers[l];
            float *v[] = {L->attn_norm, L->bq, L->bk, L->bv, L->bo, L->q_norm, L->k_norm, L->ffn_norm, L->bg, L->bu, L->bd};
            for (size_t i = 0; i < sizeof v / sizeof *v; i++) free(v[i]);
        }
        free(m->layers);
    }
    free(m->final_norm);
    free(m->rope_inv_freq);
    st_close(m->st);
    free(m);
}

void prism_model_get_info(const prism_model *m, prism_model_info *info) {
    const prism_config *c = &m->cfg;
    memset(info, 0, sizeof *info);
    snprintf(info->arch, sizeof info->arch, "%s", c->arch_name);
    snprintf(info->model_type, sizeof info->model_type, "%s", c->model_type);
    snprintf(info->dtype, sizeof info->dtype, "%s", st_dtype_name(m->layers[0].wq.dt));
    info->n_layers = c->n_layers;
    info->hidden = c->hidden;
    info->n_heads = c->n_heads;
    info->n_kv_heads = c->n_kv_heads;
    info->head_dim = c->head_dim;
    info->ffn = c->ffn;
    info->vocab = c->vocab;
    info->max_pos = c->max_pos;
    info->rope_theta = c->rope_theta;
    info->rms_eps = c->rms_eps;
    snprintf(info->rope_type, sizeof info->rope_type, "%s",
             c->rope == ROPE_LLAMA3 ? "llama3" : c->rope == ROPE_LINEAR ? "linear" : "default");
    info->tied_embeddings = c->tie_embeddings;
    info->qkv_bias = c->qkv_bias;
    info->qk_norm = c->qk_norm;
    info->bos_id = c->bos_id;
    info->n_eos = c->n_eos;
    memcpy(info->eos_ids, c->eos_ids, sizeof info->eos_ids);
    info->n_params = m->n_params;
    info->weight_bytes = m->weight_bytes;
}

int64_t prism_model_kv_bytes_per_token(const prism_model *m) {
    return (int64_t)m->cfg.n_layers * 2 * m->cfg.n_kv_heads * m->cfg.head_dim * (int64_t)sizeof(float);
}

prism_sampling_params prism_model_sampling_defaults(const prism_model *m) {
    const prism_config *c = &m->cfg;
    prism_sampling_params p = prism_sampling_default_params();
    if (c->gen_do_sample) {
        p.temperature = c->gen_temperature;
        p.top_p = c->gen_top_p > 0 && c->gen_top_p <= 1 ? c->gen_top_p : 1.0f;
        p.top_k = c->gen_top_k > 0 ? c->gen_top_k : 0;
    } else {
        p.temperature = 0.0f;
    }
    if (c->gen_repetition_penalty > 0) p.repeat_penalty = c->gen_repetition_penalty;
    return p;
}
