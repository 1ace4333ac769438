/* adapter.c — LoRA adapters: creation with PEFT's default initialisation, and
 * PEFT adapter directories in and out.
 *
 * A PEFT LoRA adapter directory (peft 0.21, what save_pretrained writes):
 *   adapter_config.json        LoraConfig as sorted, indented JSON
 *   adapter_model.safetensors  for every adapted Linear of the base model
 *       base_model.model.<module>.lora_A.weight  (r, in_features)
 *       base_model.model.<module>.lora_B.weight  (out_features, r)
 *     <module> = model.layers.<L>.self_attn.{q,k,v,o}_proj | model.layers.<L>.mlp.{gate,up,down}_proj,
 *     tensors sorted by name, metadata {"format": "pt"}.
 * Which modules are adapted follows PEFT's check_target_module_exists on the
 * model's module names (target_modules as a suffix list or a full-match regex,
 * exclude_modules, layers_to_transform / layers_pattern); per-module rank and
 * alpha follow get_pattern_key (rank_pattern / alpha_pattern: first key, in
 * file order, with re.match(rf"(.*\.)?({key})$", module)). Python regexes run
 * through PCRE2, whose syntax covers what these configs use. */
#include "gpu/device.h"
#include "lora/lora.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "lora/lora_io.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "util/error.h"

const char *const lora_target_names[LORA_N_TARGETS] = {"q_proj", "k_proj",    "v_proj",   "o_proj",
                                                       "gate_proj", "up_proj", "down_proj"};
const char *const lora_target_parent[LORA_N_TARGETS] = {"self_attn", "self_attn", "self_attn", "self_attn",
                                                        "mlp",       "mlp",       "mlp"};

int lora_parse_targets(const char *s, uint32_t *bits, char *bad, size_t badn) {
    static const char *const short_names[LORA_N_TARGETS] = {"q", "k", "v", "o", "gate", "up", "down"};
    uint32_t b = 0;
    if (badn) bad[0] = 0;
    for (const char *p = s; *p;) {
        const size_t n = strcspn(p, ",");
#define TOKEN_IS(name) (strlen(name) == n && !strncmp(p, (name), n))
        if (TOKEN_IS("all")) {
            b |= PRISM_LORA_ALL;
        } else if (TOKEN_IS("attn")) {
            b |= PRISM_LORA_Q | PRISM_LORA_K | PRISM_LORA_V | PRISM_LORA_O;
        } else if (TOKEN_IS("mlp")) {
            b |= PRISM_LORA_GATE | PRISM_LORA_UP | PRISM_LORA_DOWN;
        } else if (n) {
            int t = 0;
            while (t < LORA_N_TARGETS && !TOKEN_IS(short_names[t]) && !TOKEN_IS(lora_target_names[t])) t++;
            if (t == LORA_N_TARGETS) {
                if (badn) snprintf(bad, badn, "%.*s", (int)n, p);
                return -1;
            }
            b |= 1u << t;
        }
#undef TOKEN_IS
        p += n + (p[n] == ',');
    }
    *bits = b;
    return b ? 0 : -1;
}

const linear_w *lora_base_linear(const prism_model *m, int32_t layer, lora_target t) {
    const layer_w *L = &m->layers[layer];
    switch (t) {
    case LORA_Q: return &L->wq;
    case LORA_K: return &L->wk;
    case LORA_V: return &L->wv;
    case LORA_O: return &L->wo;
    case LORA_GATE: return &L->wg;
    case LORA_UP: return &L->wu;
    case LORA_DOWN: return &L->wd;
    default: return NULL;
    }
}

/* ---------------------------------------------------------------- allocation */

static prism_adapter *adapter_alloc(int32_t n_layers) {
    prism_adapter *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->n_layers = n_layers;
    a->mod = calloc((size_t)n_layers * LORA_N_TARGETS, sizeof *a->mod);
    if (!a->mod) {
        free(a);
        return NULL;
    }
    return a;
}

static float lora_scale(float alpha, int32_t r, bool rslora) {
    return rslora ? alpha / sqrtf((float)r) : alpha / (float)r;
}

/* Gives md rank r with zeroed A (r, in) and B (out, r). */
static prism_status module_alloc(lora_module *md, int32_t r, int64_t in, int64_t out) {
    md->r = r;
    md->in = in;
    md->out = out;
    md->A = calloc((size_t)(r * in), sizeof(float));
    md->B = calloc((size_t)(out * r), sizeof(float));
    if (!md->A || !md->B) return prism_error(PRISM_E_NOMEM, "out of memory allocating a LoRA module (r=%d)", r);
    return PRISM_OK;
}

/* Recomputes the targets bitmask and the trainable parameter count. */
static void adapter_summarise(prism_adapter *a) {
    a->targets = 0;
    a->n_params = 0;
    for (int32_t l = 0; l < a->n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            const lora_module *md = lora_mod(a, l, (lora_target)t);
            if (md->r <= 0) continue;
            a->targets |= 1u << t;
            a->n_params += (int64_t)md->r * (md->in + md->out);
        }
}

void prism_adapter_free(prism_adapter *a) {
    if (!a) return;
    gpu_adapter_release(a);
    if (a->mod)
        for (int64_t i = 0; i < (int64_t)a->n_layers * LORA_N_TARGETS; i++) {
            free(a->mod[i].A);
            free(a->mod[i].B);
        }
    free(a->mod);
    free(a->name);
    free(a);
}

const char *prism_adapter_name(const prism_adapter *a) { return a && a->name ? a->name : ""; }

prism_status lora_alloc_like(const prism_adapter *a, prism_adapter **out) {
    if (!a || !out) return prism_error(PRISM_E_ARG, "lora_alloc_like: NULL argument");
    *out = NULL;
    prism_adapter *g = adapter_alloc(a->n_layers);
    if (!g) return prism_error(PRISM_E_NOMEM, "out of memory");
    g->r = a->r;
    g->alpha = a->alpha;
    g->use_rslora = a->use_rslora;
    memcpy(g->base_arch, a->base_arch, sizeof g->base_arch);
    g->name = strdup(a->name ? a->name : "");
    prism_status rc = g->name ? PRISM_OK : prism_error(PRISM_E_NOMEM, "out of memory");
    for (int64_t i = 0; !rc && i < (int64_t)a->n_layers * LORA_N_TARGETS; i++) {
        const lora_module *s = &a->mod[i];
        if (s->r <= 0) continue;
        rc = module_alloc(&g->mod[i], s->r, s->in, s->out);
        g->mod[i].alpha = s->alpha;
        g->mod[i].scale = s->scale;
    }
    if (rc) {
        prism_adapter_free(g);
        return rc;
    }
    adapter_summarise(g);
    *out = g;
    return PRISM_OK;
}

/* ---------------------------------------------------------------- new adapter */

prism_lora_params prism_lora_default_params(void) {
    prism_lora_params p = {0};
    p.r = 16;
    p.alpha = 32.0f;
    p.use_rslora = false;
    p.targets = PRISM_LORA_ALL;
    p.layer_begin = 1;
    p.layer_end = 0;
    p.seed = 0;
    return p;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Initialisation, as PEFT's init_lora_weights=True: B = 0, and A (r, in) by
 * nn.init.kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)).
 * Values: module (layer l, target t) has its own splitmix64 stream, state
 * seed ^ (0x9E3779B97F4A7C15 * (1 + l*7 + t)); A[i] (row-major) is
 * bound * (2u - 1) with u the top 24 bits of the i-th output / 2^24. So a
 * module's A depends only on (seed, l, t, r, in): the same for any choice of
 * the other targets and layers. */
static void init_kaiming_uniform(lora_module *md, uint64_t seed, int32_t layer, int t) {
    uint64_t s = seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(1 + (int64_t)layer * LORA_N_TARGETS + t));
    const float bound = 1.0f / sqrtf((float)md->in);
    const int64_t n = (int64_t)md->r * md->in;
    for (int64_t i = 0; i < n; i++) {
        float u = (float)(splitmix64(&s) >> 40) * (1.0f / 16777216.0f);
        md->A[i] = bound * (2.0f * u - 1.0f);
    }
}

prism_status prism_adapter_new(const prism_model *m, prism_lora_params p, prism_adapter **out) {
    if (!out) return prism_error(PRISM_E_ARG, "prism_adapter_new: out is NULL");
    *out = NULL;
    if (!m) return prism_error(PRISM_E_ARG, "prism_adapter_new: model is NULL");
    const int32_t L = m->cfg.n_layers;
    const int32_t end = p.layer_end == 0 ? L : p.layer_end;
    if (p.r < 1) return prism_error(PRISM_E_ARG, "LoRA rank r = %d: must be >= 1", p.r);
    if (!(p.alpha > 0) || !isfinite(p.alpha))
        return prism_error(PRISM_E_ARG, "LoRA alpha = %g: must be a positive number", (double)p.alpha);
    if ((p.targets & PRISM_LORA_ALL) == 0 || (p.targets & ~(uint32_t)PRISM_LORA_ALL))
        return prism_error(PRISM_E_ARG, "LoRA targets = 0x%x: must be a nonzero set of PRISM_LORA_* bits (0x7f = all)",
                           p.targets);
    if (p.layer_begin < 0 || p.layer_begin >= end || end > L)
        return prism_error(PRISM_E_ARG, "LoRA layers [%d, %d): need 0 <= begin < end <= %d (the model's layers)",
                           p.layer_begin, end, L);
    prism_adapter *a = adapter_alloc(L);
    if (!a) return prism_error(PRISM_E_NOMEM, "out of memory");
    a->r = p.r;
    a->alpha = p.alpha;
    a->use_rslora = p.use_rslora;
    snprintf(a->base_arch, sizeof a->base_arch, "%s", m->cfg.arch_name);
    a->name = strdup("adapter");
    prism_status rc = a->name ? PRISM_OK : prism_error(PRISM_E_NOMEM, "out of memory");
    for (int32_t l = p.layer_begin; l < end && !rc; l++)
        for (int t = 0; t < LORA_N_TARGETS && !rc; t++) {
            if (!(p.targets & (1u << t))) continue;
            const linear_w *w = lora_base_linear(m, l, (lora_target)t);
            lora_module *md = lora_mod(a, l, (lora_target)t);
            rc = module_alloc(md, p.r, w->in, w->out);
            if (rc) break;
            md->alpha = p.alpha;
            md->scale = lora_scale(p.alpha, p.r, p.use_rslora);
            init_kaiming_uniform(md, p.seed, l, t);
        }
    if (rc) {
        prism_adapter_free(a);
        return rc;
    }
    adapter_summarise(a);
    *out = a;
    return PRISM_OK;
}

/* ---------------------------------------------------------------- files */

prism_status lora_mkdir_p(const char *dir) {
    if (!dir || !*dir) return prism_error(PRISM_E_ARG, "empty directory name");
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    if (!p) return prism_error(PRISM_E_NOMEM, "out of memory");
    memcpy(p, dir, n + 1);
    prism_status rc = PRISM_OK;
    for (size_t i = 1; i <= n && !rc; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        struct stat st;
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            rc = prism_error(PRISM_E_IO, "%s: cannot create directory: %s", p, strerror(errno));
        else if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode))
            rc = prism_error(PRISM_E_IO, "%s: exists and is not a directory", p);
        p[i] = c;
    }
    free(p);
    return rc;
}

prism_status lora_write_atomic(const char *path, const void *data, size_t n) {
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) return prism_error(PRISM_E_NOMEM, "out of memory");
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    prism_status rc = PRISM_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        rc = prism_error(PRISM_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    const char *p = data;
    while (n > 0 && !rc) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) rc = prism_error(PRISM_E_IO, "%s: write failed: %s", tmp, strerror(errno));
        else {
            p += w;
            n -= (size_t)w;
        }
    }
    if (!rc && fsync(fd) != 0) rc = prism_error(PRISM_E_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && !rc) rc = prism_error(PRISM_E_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path) != 0)
        rc = prism_error(PRISM_E_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (rc) unlink(tmp);
    free(tmp);
    return rc;
}

char *lora_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* Last path component of dir, trailing slashes ignored. */
static char *base_name(const char *dir) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t s = n;
    while (s > 0 && dir[s - 1] != '/') s--;
    if (n == s) return strdup("adapter");
    char *r = malloc(n - s + 1);
    if (!r) return NULL;
    memcpy(r, dir + s, n - s);
    r[n - s] = 0;
    return r;
}

/* ---------------------------------------------------------------- regexes */

typedef struct {
    pcre2_code *re;
    pcre2_match_data *md;
} regex;

static void regex_free(regex *r) {
    pcre2_match_data_free(r->md);
    pcre2_code_free(r->re);
    r->md = NULL;
    r->re = NULL;
}

static prism_status regex_compile(regex *r, const char *pat, uint32_t opts, const char *path, const char *what) {
    int err;
    PCRE2_SIZE off;
    r->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &err, &off, NULL);
    if (!r->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return prism_error(PRISM_E_FORMAT, "%s: %s: regular expression \"%s\": %s at offset %zu", path, what, pat,
                           (const char *)msg, (size_t)off);
    }
    r->md = pcre2_match_data_create_from_pattern(r->re, NULL);
    if (!r->md) {
        regex_free(r);
        return prism_error(PRISM_E_NOMEM, "out of memory");
    }
    return PRISM_OK;
}

/* 1 if r matches s (with the anchoring it was compiled with). If group1 is
 * not NULL it receives capture group 1 as an integer (-1 if unset). */
static int regex_match(regex *r, const char *s, int64_t *group1) {
    int n = pcre2_match(r->re, (PCRE2_SPTR)s, strlen(s), 0, 0, r->md, NULL);
    if (n < 0) return 0;
    if (group1) {
        *group1 = -1;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
        if (n >= 2 && ov[2] != PCRE2_UNSET) {
            int64_t v = 0;
            for (PCRE2_SIZE i = ov[2]; i < ov[3] && v < 1000000000; i++) v = v * 10 + (s[i] - '0');
            *group1 = v;
        }
    }
    return 1;
}

/* Python re.fullmatch(pat, s). */
#define RE_FULL (PCRE2_ANCHORED | PCRE2_ENDANCHORED)

/* ---------------------------------------------------------------- adapter_config.json */

typedef struct {
    regex re;         /* (.*\.)?(key)$, anchored at the start */
    const char *key;
    json_t *value;
} pattern_entry;

typedef struct {
    const char *path;
    int32_t r;
    double alpha;
    bool rslora;
    bool all_linear;
    json_t *targets;       /* array of names, or NULL when a regex */
    regex target_re;       /* fullmatch regex when target_modules is a string */
    json_t *exclude;       /* array of names, or NULL */
    regex exclude_re;      /* fullmatch regex when exclude_modules is a string */
    json_t *layers;        /* layers_to_transform: integer or nonempty array; NULL = all */
    regex *layer_re;       /* from layers_pattern, or PEFT's default */
    size_t n_layer_re;
    pattern_entry *rank, *alpha_p;
    size_t n_rank, n_alpha;
} peft_cfg;

static void cfg_free(peft_cfg *c) {
    regex_free(&c->target_re);
    regex_free(&c->exclude_re);
    for (size_t i = 0; i < c->n_layer_re; i++) regex_free(&c->layer_re[i]);
    free(c->layer_re);
    for (size_t i = 0; i < c->n_rank; i++) regex_free(&c->rank[i].re);
    for (size_t i = 0; i < c->n_alpha; i++) regex_free(&c->alpha_p[i].re);
    free(c->rank);
    free(c->alpha_p);
}

static bool json_truthy(const json_t *v) {
    if (!v || json_is_null(v) || json_is_false(v)) return false;
    if (json_is_array(v)) return json_array_size(v) > 0;
    if (json_is_object(v)) return json_object_size(v) > 0;
    if (json_is_string(v)) return json_string_length(v) > 0;
    if (json_is_integer(v)) return json_integer_value(v) != 0;
    if (json_is_real(v)) return json_real_value(v) != 0;
    return true;
}

static prism_status compile_patterns(const char *path, json_t *obj, const char *field, pattern_entry **out,
                                     size_t *n_out) {
    *out = NULL;
    *n_out = 0;
    if (!obj || json_is_null(obj)) return PRISM_OK;
    if (!json_is_object(obj)) return prism_error(PRISM_E_FORMAT, "%s: %s must be an object", path, field);
    size_t n = json_object_size(obj);
    if (!n) return PRISM_OK;
    pattern_entry *e = calloc(n, sizeof *e);
    if (!e) return prism_error(PRISM_E_NOMEM, "out of memory");
    *out = e;
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) { /* jansson keeps file order, as Python's dict does */
        if (!json_is_number(v))
            return prism_error(PRISM_E_FORMAT, "%s: %s[\"%s\"] must be a number", path, field, k);
        size_t kl = strlen(k);
        char *pat = malloc(kl + 16);
        if (!pat) return prism_error(PRISM_E_NOMEM, "out of memory");
        snprintf(pat, kl + 16, "(.*\\.)?(%s)$", k);
        prism_status rc = regex_compile(&e[*n_out].re, pat, PCRE2_ANCHORED, path, field);
        free(pat);
        if (rc) return rc;
        e[*n_out].key = k;
        e[*n_out].value = v;
        (*n_out)++;
    }
    return PRISM_OK;
}

/* PEFT's get_pattern_key + dict lookup: the value of the first key matching module, or NULL. */
static json_t *pattern_lookup(pattern_entry *e, size_t n, const char *module) {
    for (size_t i = 0; i < n; i++)
        if (regex_match(&e[i].re, module, NULL)) return e[i].value;
    return NULL;
}

static bool name_list_selects(json_t *list, const char *key) {
    size_t i, kl = strlen(key);
    json_t *v;
    json_array_foreach(list, i, v) {
        const char *s = json_string_value(v);
        size_t sl = strlen(s);
        if (strcmp(s, key) == 0) return true;
        if (kl > sl && key[kl - sl - 1] == '.' && strcmp(key + kl - sl, s) == 0) return true;
    }
    return false;
}

/* PEFT's check_target_module_exists for one module name of the base model. */
static bool cfg_selects(peft_cfg *c, const char *key) {
    if (c->exclude && name_list_selects(c->exclude, key)) return false;
    if (c->exclude_re.re && regex_match(&c->exclude_re, key, NULL)) return false;
    if (c->all_linear) return true; /* resolved by the caller to the seven projections */
    if (c->target_re.re) return regex_match(&c->target_re, key, NULL);
    size_t i;
    json_t *v;
    json_array_foreach(c->targets, i, v) if (strcmp(json_string_value(v), key) == 0) return true;
    if (!name_list_selects(c->targets, key)) return false;
    if (!c->layers) return true;
    int64_t layer = -1;
    for (size_t k = 0; k < c->n_layer_re && layer < 0; k++) regex_match(&c->layer_re[k], key, &layer);
    if (layer < 0) return false;
    if (json_is_integer(c->layers)) return json_integer_value(c->layers) == layer;
    json_array_foreach(c->layers, i, v) if (json_integer_value(v) == layer) return true;
    return false;
}

static prism_status string_or_list(const char *path, json_t *v, const char *field, bool allow_null) {
    if (!v || json_is_null(v)) {
        if (allow_null) return PRISM_OK;
        return prism_error(PRISM_E_FORMAT, "%s: %s is missing or null", path, field);
    }
    if (json_is_string(v)) return PRISM_OK;
    if (!json_is_array(v)) return prism_error(PRISM_E_FORMAT, "%s: %s must be a string or a list of strings", path, field);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) if (!json_is_string(e))
        return prism_error(PRISM_E_FORMAT, "%s: %s[%zu] is not a string", path, field, i);
    return PRISM_OK;
}

/* Reads the fields prism uses and refuses the LoRA variants it does not implement. */
static prism_status cfg_parse(peft_cfg *c, json_t *root, const char *path) {
    memset(c, 0, sizeof *c);
    c->path = path;
    if (!json_is_object(root)) return prism_error(PRISM_E_FORMAT, "%s: not a JSON object", path);
    json_t *v = json_object_get(root, "peft_type");
    if (!json_is_string(v)) return prism_error(PRISM_E_FORMAT, "%s: peft_type is missing", path);
    if (strcmp(json_string_value(v), "LORA") != 0)
        return prism_error(PRISM_E_UNSUPPORTED, "%s: peft_type is \"%s\"; prism reads LORA adapters only", path,
                           json_string_value(v));

    /* LoraConfig defaults where a key is absent: r = 8, lora_alpha = 8. */
    v = json_object_get(root, "r");
    c->r = 8;
    if (v && !(json_is_integer(v) && json_integer_value(v) >= 1 && json_integer_value(v) <= 1 << 20))
        return prism_error(PRISM_E_FORMAT, "%s: r must be a positive integer", path);
    if (v) c->r = (int32_t)json_integer_value(v);
    v = json_object_get(root, "lora_alpha");
    c->alpha = 8;
    if (v && !json_is_number(v)) return prism_error(PRISM_E_FORMAT, "%s: lora_alpha must be a number", path);
    if (v) c->alpha = json_number_value(v);
    v = json_object_get(root, "use_rslora");
    if (v && !json_is_boolean(v)) return prism_error(PRISM_E_FORMAT, "%s: use_rslora must be true or false", path);
    c->rslora = json_is_true(v);

    /* Variants that change the forward pass or the base weights. */
    static const char *const must_be_falsy[][2] = {
        {"use_dora", "DoRA (use_dora) adapters"},
        {"modules_to_save", "modules_to_save (fully trained extra modules)"},
        {"lora_bias", "LoRA biases (lora_bias)"},
        {"fan_in_fan_out", "fan_in_fan_out (Conv1D-style weights)"},
        {"target_parameters", "target_parameters (LoRA on nn.Parameter)"},
        {"layer_replication", "layer_replication"},
        {"trainable_token_indices", "trainable_token_indices"},
        {"alora_invocation_tokens", "activated LoRA (alora_invocation_tokens)"},
        {"use_qalora", "QA-LoRA (use_qalora)"},
        {"use_bdlora", "block-diagonal LoRA (use_bdlora)"},
        {"arrow_config", "Arrow routing (arrow_config)"},
        {"kasa_config", "KaSA (kasa_config)"},
        {"monteclora_config", "MonteCLoRA (monteclora_config)"},
    };
    for (size_t i = 0; i < sizeof must_be_falsy / sizeof *must_be_falsy; i++)
        if (json_truthy(json_object_get(root, must_be_falsy[i][0])))
            return prism_error(PRISM_E_UNSUPPORTED, "%s: %s is set; prism supports plain LoRA only (%s)", path,
                               must_be_falsy[i][0], must_be_falsy[i][1]);
    v = json_object_get(root, "bias");
    if (v && !json_is_null(v) && !(json_is_string(v) && strcmp(json_string_value(v), "none") == 0))
        return prism_error(PRISM_E_UNSUPPORTED, "%s: bias is %s%s%s; prism supports bias \"none\" only", path,
                           json_is_string(v) ? "\"" : "", json_is_string(v) ? json_string_value(v) : "not a string",
                           json_is_string(v) ? "\"" : "");
    /* These initialisations rewrite the base weights, so the adapter is
     * relative to a modified model. */
    v = json_object_get(root, "init_lora_weights");
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strncmp(s, "pissa", 5) == 0 || strcmp(s, "olora") == 0 || strcmp(s, "corda") == 0 ||
            strcmp(s, "loftq") == 0 || strcmp(s, "lora_ga") == 0)
            return prism_error(PRISM_E_UNSUPPORTED,
                               "%s: init_lora_weights \"%s\" modifies the base weights; convert the adapter to plain "
                               "LoRA first (PEFT save_pretrained with path_initial_model_for_weight_conversion)",
                               path, s);
    }

    prism_status rc;
    v = json_object_get(root, "target_modules");
    if ((rc = string_or_list(path, v, "target_modules", false))) return rc;
    if (json_is_string(v)) {
        if (strcasecmp(json_string_value(v), "all-linear") == 0) c->all_linear = true;
        else if ((rc = regex_compile(&c->target_re, json_string_value(v), RE_FULL, path, "target_modules"))) return rc;
    } else {
        c->targets = v;
    }
    v = json_object_get(root, "exclude_modules");
    if ((rc = string_or_list(path, v, "exclude_modules", true))) return rc;
    if (json_is_string(v)) {
        if ((rc = regex_compile(&c->exclude_re, json_string_value(v), RE_FULL, path, "exclude_modules"))) return rc;
    } else if (json_is_array(v) && json_array_size(v)) {
        c->exclude = v;
    }

    v = json_object_get(root, "layers_to_transform");
    if (v && !json_is_null(v)) {
        if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) if (!json_is_integer(e))
                return prism_error(PRISM_E_FORMAT, "%s: layers_to_transform[%zu] is not an integer", path, i);
            if (json_array_size(v)) c->layers = v;
        } else if (json_is_integer(v)) {
            c->layers = v;
        } else {
            return prism_error(PRISM_E_FORMAT, "%s: layers_to_transform must be an integer or a list", path);
        }
    }
    v = json_object_get(root, "layers_pattern");
    if ((rc = string_or_list(path, v, "layers_pattern", true))) return rc;
    size_t n_lp = json_is_string(v) ? (json_string_length(v) > 0) : json_is_array(v) ? json_array_size(v) : 0;
    c->layer_re = calloc(n_lp ? n_lp : 1, sizeof *c->layer_re);
    if (!c->layer_re) return prism_error(PRISM_E_NOMEM, "out of memory");
    if (!n_lp) {
        c->n_layer_re = 1;
        if ((rc = regex_compile(&c->layer_re[0], ".*\\.[^.]*\\.(\\d+)\\.", PCRE2_ANCHORED, path, "layers_pattern")))
            return rc;
    }
    for (size_t i = 0; i < n_lp; i++) {
        const char *pat = json_is_string(v) ? json_string_value(v) : json_string_value(json_array_get(v, i));
        size_t pl = strlen(pat);
        char *re = malloc(pl + 32);
        if (!re) return prism_error(PRISM_E_NOMEM, "out of memory");
        snprintf(re, pl + 32, ".*\\.%s\\.(\\d+)\\.", pat);
        rc = regex_compile(&c->layer_re[i], re, PCRE2_ANCHORED, path, "layers_pattern");
        free(re);
        if (rc) return rc;
        c->n_layer_re++;
    }
    if ((rc = compile_patterns(path, json_object_get(root, "rank_pattern"), "rank_pattern", &c->rank, &c->n_rank)))
        return rc;
    return compile_patterns(path, json_object_get(root, "alpha_pattern"), "alpha_pattern", &c->alpha_p, &c->n_alpha);
}

/* Module names of a Llama/Mistral/Qwen2/Qwen3 CausalLM other than the seven
 * projections: a config that selects one of them adapts something prism does not. */
static prism_status check_other_names(peft_cfg *c, const prism_model *m) {
    static const char *const top[] = {"model", "model.embed_tokens", "model.layers", "model.norm", "model.rotary_emb",
                                      "lm_head"};
    static const char *const per_layer[] = {"", ".self_attn", ".mlp", ".mlp.act_fn", ".input_layernorm",
                                            ".post_attention_layernorm", ".self_attn.q_norm", ".self_attn.k_norm"};
    char key[160];
    for (size_t i = 0; i < sizeof top / sizeof *top; i++)
        if (cfg_selects(c, top[i]))
            return prism_error(PRISM_E_UNSUPPORTED,
                               "%s: target_modules selects %s; prism adapts only q_proj, k_proj, v_proj, o_proj, "
                               "gate_proj, up_proj and down_proj",
                               c->path, top[i]);
    size_t n_pl = m->cfg.qk_norm ? 8 : 6;
    for (int32_t l = 0; l < m->cfg.n_layers; l++)
        for (size_t i = 0; i < n_pl; i++) {
            snprintf(key, sizeof key, "model.layers.%d%s", l, per_layer[i]);
            if (cfg_selects(c, key))
                return prism_error(PRISM_E_UNSUPPORTED,
                                   "%s: target_modules selects %s; prism adapts only q_proj, k_proj, v_proj, o_proj, "
                                   "gate_proj, up_proj and down_proj",
                                   c->path, key);
        }
    return PRISM_OK;
}

static prism_status check_other_modules(peft_cfg *c, const prism_model *m) {
    if (c->all_linear) return PRISM_OK; /* PEFT's all-linear excludes lm_head: exactly the projections */
    /* Without the layer filter, so that a listed "embed_tokens" or "lm_head"
     * is refused even where layers_to_transform keeps PEFT from matching it. */
    json_t *layers = c->layers;
    c->layers = NULL;
    prism_status rc = check_other_names(c, m);
    c->layers = layers;
    return rc;
}

static void module_key(char *buf, size_t n, int32_t layer, int t) {
    snprintf(buf, n, "model.layers.%d.%s.%s", layer, lora_target_parent[t], lora_target_names[t]);
}

/* Parses base_model.model.model.layers.<L>.<parent>.<proj>.lora_<A|B>[.default].weight.
 * Returns 0 if name has another form; *layer may be out of the model's range. */
static int parse_tensor_key(const char *name, int64_t *layer, int *target, int *is_b) {
    static const char pre[] = "base_model.model.model.layers.";
    if (strncmp(name, pre, sizeof pre - 1) != 0) return 0;
    const char *p = name + sizeof pre - 1;
    if (*p < '0' || *p > '9') return 0;
    int64_t L = 0;
    int nd = 0;
    while (*p >= '0' && *p <= '9') {
        if (++nd > 9) return 0;
        L = L * 10 + (*p++ - '0');
    }
    if (*p++ != '.') return 0;
    for (int t = 0; t < LORA_N_TARGETS; t++) {
        size_t lp = strlen(lora_target_parent[t]), ln = strlen(lora_target_names[t]);
        if (strncmp(p, lora_target_parent[t], lp) != 0 || p[lp] != '.' ||
            strncmp(p + lp + 1, lora_target_names[t], ln) != 0)
            continue;
        const char *s = p + lp + 1 + ln;
        static const char *const suf[4] = {".lora_A.weight", ".lora_B.weight", ".lora_A.default.weight",
                                           ".lora_B.default.weight"};
        for (int k = 0; k < 4; k++)
            if (strcmp(s, suf[k]) == 0) {
                *layer = L;
                *target = t;
                *is_b = k & 1;
                return 1;
            }
    }
    return 0;
}

static void shape_str(char *buf, size_t n, const st_tensor *t) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < t->ndim && o < n; d++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* Selects, sizes and fills a's modules from the config and the tensor file. */
static prism_status load_modules(prism_adapter *a, const prism_model *m, peft_cfg *c, const st_set *st,
                                 const char *st_path) {
    const int32_t L = m->cfg.n_layers;
    char key[160];
    prism_status rc = check_other_modules(c, m);
    if (rc) return rc;
    int n_sel = 0;
    for (int32_t l = 0; l < L; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            module_key(key, sizeof key, l, t);
            if (!cfg_selects(c, key)) continue;
            json_t *rv = pattern_lookup(c->rank, c->n_rank, key);
            json_t *av = pattern_lookup(c->alpha_p, c->n_alpha, key);
            int64_t r = c->r;
            if (rv) {
                if (!json_is_integer(rv) || json_integer_value(rv) < 1 || json_integer_value(rv) > 1 << 20)
                    return prism_error(PRISM_E_FORMAT, "%s: rank_pattern gives %s a rank that is not a positive integer",
                                       c->path, key);
                r = json_integer_value(rv);
            }
            double alpha = av ? json_number_value(av) : c->alpha;
            const linear_w *w = lora_base_linear(m, l, (lora_target)t);
            lora_module *md = lora_mod(a, l, (lora_target)t);
            if ((rc = module_alloc(md, (int32_t)r, w->in, w->out))) return rc;
            md->alpha = (float)alpha;
            md->scale = lora_scale(md->alpha, md->r, c->rslora);
            n_sel++;
        }
    if (!n_sel) return prism_error(PRISM_E_FORMAT, "%s: target_modules selects no module of the model", c->path);

    /* seen[i]: bit 0 = lora_A read, bit 1 = lora_B read */
    unsigned char *seen = calloc((size_t)L * LORA_N_TARGETS, 1);
    if (!seen) return prism_error(PRISM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < st_count(st) && !rc; i++) {
        const st_tensor *t = st_at(st, i);
        int64_t layer;
        int tg, is_b;
        char sh[96];
        if (!parse_tensor_key(t->name, &layer, &tg, &is_b)) {
            rc = prism_error(PRISM_E_FORMAT,
                             "%s: unexpected tensor %s (expected base_model.model.model.layers.<L>.<self_attn|mlp>."
                             "<proj>.lora_<A|B>.weight)",
                             st_path, t->name);
            break;
        }
        if (layer >= L) {
            rc = prism_error(PRISM_E_FORMAT, "%s: tensor %s is for layer %lld, but the model has %d layers (0..%d)",
                             st_path, t->name, (long long)layer, L, L - 1);
            break;
        }
        lora_module *md = lora_mod(a, (int32_t)layer, (lora_target)tg);
        module_key(key, sizeof key, (int32_t)layer, tg);
        unsigned char *sn = &seen[layer * LORA_N_TARGETS + tg];
        if (md->r == 0) {
            rc = prism_error(PRISM_E_FORMAT, "%s: tensor %s is for %s, which adapter_config.json does not target",
                             st_path, t->name, key);
            break;
        }
        if (*sn & (1 << is_b)) {
            rc = prism_error(PRISM_E_FORMAT, "%s: tensor %s: %s.lora_%c is stored twice", st_path, t->name, key,
                             is_b ? 'B' : 'A');
            break;
        }
        if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) {
            rc = prism_error(PRISM_E_FORMAT, "%s: tensor %s has dtype %s; expected F32, BF16 or F16", st_path, t->name,
                             st_dtype_name(t->dtype));
            break;
        }
        int64_t e0 = is_b ? md->out : md->r, e1 = is_b ? md->r : md->in;
        if (t->ndim != 2 || t->shape[0] != e0 || t->shape[1] != e1) {
            shape_str(sh, sizeof sh, t);
            rc = prism_error(PRISM_E_FORMAT,
                             "%s: tensor %s has shape %s, expected [%lld, %lld] (rank %d from adapter_config.json; "
                             "%s is [%lld, %lld] in the model)",
                             st_path, t->name, sh, (long long)e0, (long long)e1, md->r, key, (long long)md->out,
                             (long long)md->in);
            break;
        }
        rc = st_read_f32(st, t, is_b ? md->B : md->A);
        *sn |= (unsigned char)(1 << is_b);
    }
    for (int32_t l = 0; l < L && !rc; l++)
        for (int t = 0; t < LORA_N_TARGETS && !rc; t++) {
            if (lora_mod(a, l, (lora_target)t)->r == 0) continue;
            unsigned char sn = seen[l * LORA_N_TARGETS + t];
            if (sn == 3) continue;
            module_key(key, sizeof key, l, t);
            rc = prism_error(PRISM_E_FORMAT,
                             "%s: missing tensor base_model.model.%s.lora_%c.weight (adapter_config.json targets %s)",
                             st_path, key, (sn & 1) ? 'B' : 'A', key);
        }
    free(seen);
    return rc;
}

prism_status prism_adapter_load(const prism_model *m, const char *dir, prism_adapter **out) {
    if (!out) return prism_error(PRISM_E_ARG, "prism_adapter_load: out is NULL");
    *out = NULL;
    if (!m || !dir || !*dir) return prism_error(PRISM_E_ARG, "prism_adapter_load: NULL model or empty directory");
    struct stat sb;
    if (stat(dir, &sb) != 0) return prism_error(PRISM_E_IO, "%s: cannot open adapter directory: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return prism_error(PRISM_E_IO, "%s: not a directory", dir);
    char *cfg_path = lora_path_join(dir, "adapter_config.json");
    char *st_path = lora_path_join(dir, "adapter_model.safetensors");
    prism_adapter *a = adapter_alloc(m->cfg.n_layers);
    json_t *root = NULL;
    st_set *st = NULL;
    peft_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    prism_status rc = PRISM_OK;
    if (!cfg_path || !st_path || !a) rc = prism_error(PRISM_E_NOMEM, "out of memory");
    if (!rc) {
        FILE *f = fopen(cfg_path, "rb");
        if (!f) rc = prism_error(PRISM_E_IO, "%s: cannot open: %s", cfg_path, strerror(errno));
        else {
            json_error_t je;
            root = json_loadf(f, 0, &je);
            fclose(f);
            if (!root) rc = prism_error(PRISM_E_FORMAT, "%s:%d:%d: invalid JSON: %s", cfg_path, je.line, je.column, je.text);
        }
    }
    if (!rc) rc = cfg_parse(&cfg, root, cfg_path);
    if (!rc) rc = st_open(st_path, &st);
    if (!rc) rc = load_modules(a, m, &cfg, st, st_path);
    if (!rc) {
        a->r = cfg.r;
        a->alpha = (float)cfg.alpha;
        a->use_rslora = cfg.rslora;
        snprintf(a->base_arch, sizeof a->base_arch, "%s", m->cfg.arch_name);
        a->name = base_name(dir);
        if (!a->name) rc = prism_error(PRISM_E_NOMEM, "out of memory");
        adapter_summarise(a);
    }
    cfg_free(&cfg);
    st_close(st);
    json_decref(root);
    free(cfg_path);
    free(st_path);
    if (rc) {
        prism_adapter_free(a);
        return rc;
    }
    *out = a;
    return PRISM_OK;
}

/* ---------------------------------------------------------------- save */

static int cmp_names(const void *x, const void *y) {
    return strcmp(((const st_write_tensor *)x)->name, ((const st_write_tensor *)y)->name);
}

static json_t *json_num(double v) {
    if (v == floor(v) && fabs(v) < 1e15) return json_integer((json_int_t)v);
    return json_real(v);
}

/* adapter_config.json as PEFT 0.21's LoraConfig.save_pretrained writes it
 * (every field, sorted keys, indent 2). Target selection: when the adapted
 * modules are targets × layers, target_modules names the projections and
 * layers_to_transform lists the layers unless all are adapted; otherwise
 * target_modules lists full module names (PEFT matches those exactly).
 * Modules whose rank / alpha differ from r / lora_alpha get rank_pattern /
 * alpha_pattern entries keyed by the full module name. */
static json_t *build_config(const prism_adapter *a) {
    const int32_t L = a->n_layers;
    uint32_t tmask = 0;
    bool *lay = calloc((size_t)L + 1, 1);
    if (!lay) return NULL;
    int n_mod = 0, n_lay = 0, n_t = 0;
    for (int32_t l = 0; l < L; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++)
            if (lora_mod(a, l, (lora_target)t)->r > 0) {
                tmask |= 1u << t;
                if (!lay[l]) n_lay++;
                lay[l] = true;
                n_mod++;
            }
    for (int t = 0; t < LORA_N_TARGETS; t++) n_t += (tmask >> t) & 1;
    bool product = n_mod == n_t * n_lay;
    char key[160];

    json_t *c = json_object();
    json_t *targets = json_array(), *rank = json_object(), *alpha = json_object();
    if (product) {
        for (int t = 0; t < LORA_N_TARGETS; t++)
            if (tmask & (1u << t)) json_array_append_new(targets, json_string(lora_target_names[t]));
    }
    for (int32_t l = 0; l < L; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            const lora_module *md = lora_mod(a, l, (lora_target)t);
            if (md->r <= 0) continue;
            module_key(key, sizeof key, l, t);
            if (!product) json_array_append_new(targets, json_string(key));
            if (md->r != a->r) json_object_set_new(rank, key, json_integer(md->r));
            if (md->alpha != a->alpha) json_object_set_new(alpha, key, json_num(md->alpha));
        }
    json_t *layers = json_null();
    if (product && n_lay < L) {
        layers = json_array();
        for (int32_t l = 0; l < L; l++)
            if (lay[l]) json_array_append_new(layers, json_integer(l));
    }
    free(lay);

    json_object_set_new(c, "alora_invocation_tokens", json_null());
    json_object_set_new(c, "alpha_pattern", alpha);
    json_object_set_new(c, "arrow_config", json_null());
    json_object_set_new(c, "auto_mapping", json_null());
    json_object_set_new(c, "base_model_name_or_path", json_null());
    json_object_set_new(c, "bias", json_string("none"));
    json_object_set_new(c, "corda_config", json_null());
    json_object_set_new(c, "ensure_weight_tying", json_false());
    json_object_set_new(c, "eva_config", json_null());
    json_object_set_new(c, "exclude_modules", json_null());
    json_object_set_new(c, "fan_in_fan_out", json_false());
    json_object_set_new(c, "inference_mode", json_true());
    json_object_set_new(c, "init_lora_weights", json_true());
    json_object_set_new(c, "kasa_config", json_null());
    json_object_set_new(c, "layer_replication", json_null());
    json_object_set_new(c, "layers_pattern", json_null());
    json_object_set_new(c, "layers_to_transform", layers);
    json_object_set_new(c, "loftq_config", json_object());
    json_object_set_new(c, "lora_alpha", json_num(a->alpha));
    json_object_set_new(c, "lora_bias", json_false());
    json_object_set_new(c, "lora_dropout", json_real(0.0));
    json_object_set_new(c, "lora_ga_config", json_null());
    json_object_set_new(c, "megatron_config", json_null());
    json_object_set_new(c, "megatron_core", json_string("megatron.core"));
    json_object_set_new(c, "modules_to_save", json_null());
    json_object_set_new(c, "monteclora_config", json_null());
    json_object_set_new(c, "peft_type", json_string("LORA"));
    json_object_set_new(c, "peft_version", json_string("0.21.0"));
    json_object_set_new(c, "qalora_group_size", json_integer(16));
    json_object_set_new(c, "r", json_integer(a->r));
    json_object_set_new(c, "rank_pattern", rank);
    json_object_set_new(c, "revision", json_null());
    json_object_set_new(c, "target_modules", targets);
    json_object_set_new(c, "target_parameters", json_null());
    json_object_set_new(c, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(c, "trainable_token_indices", json_null());
    json_object_set_new(c, "use_bdlora", json_null());
    json_object_set_new(c, "use_dora", json_false());
    json_object_set_new(c, "use_qalora", json_false());
    json_object_set_new(c, "use_rslora", json_boolean(a->use_rslora));
    json_object_set_new(c, "velora_config", json_null());
    return c;
}

prism_status prism_adapter_save(const prism_adapter *a, const char *dir, const char *dtype) {
    if (!a || !dir || !*dir) return prism_error(PRISM_E_ARG, "prism_adapter_save: NULL adapter or empty directory");
    st_dtype dt;
    if (!dtype || strcmp(dtype, "F32") == 0) dt = ST_F32;
    else if (strcmp(dtype, "BF16") == 0) dt = ST_BF16;
    else if (strcmp(dtype, "F16") == 0) dt = ST_F16;
    else return prism_error(PRISM_E_ARG, "adapter dtype \"%s\": expected F32, BF16 or F16", dtype);
    prism_status rc = lora_mkdir_p(dir);
    if (rc) return rc;

    int64_t n_mod = 0;
    for (int64_t i = 0; i < (int64_t)a->n_layers * LORA_N_TARGETS; i++) n_mod += a->mod[i].r > 0;
    if (!n_mod) return prism_error(PRISM_E_ARG, "adapter %s has no modules to save", prism_adapter_name(a));
    st_write_tensor *ts = calloc((size_t)n_mod * 2, sizeof *ts);
    char *names = malloc((size_t)n_mod * 2 * 128);
    char *st_path = lora_path_join(dir, "adapter_model.safetensors");
    char *cfg_path = lora_path_join(dir, "adapter_config.json");
    if (!ts || !names || !st_path || !cfg_path) rc = prism_error(PRISM_E_NOMEM, "out of memory");
    size_t n = 0;
    for (int32_t l = 0; l < a->n_layers && !rc; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            const lora_module *md = lora_mod(a, l, (lora_target)t);
            if (md->r <= 0) continue;
            for (int b = 0; b < 2; b++, n++) {
                char *nm = names + n * 128;
                snprintf(nm, 128, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", l, lora_target_parent[t],
                         lora_target_names[t], b ? 'B' : 'A');
                ts[n].name = nm;
                ts[n].dtype = dt;
                ts[n].ndim = 2;
                ts[n].shape[0] = b ? md->out : md->r;
                ts[n].shape[1] = b ? md->r : md->in;
                ts[n].data = b ? md->B : md->A;
            }
        }
    if (!rc) {
        qsort(ts, n, sizeof *ts, cmp_names); /* PEFT's (safetensors') order */
        rc = st_write(st_path, ts, n, "{\"format\":\"pt\"}");
    }
    if (!rc) {
        json_t *c = build_config(a);
        char *text = c ? json_dumps(c, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
        json_decref(c);
        if (!text) rc = prism_error(PRISM_E_NOMEM, "out of memory");
        else rc = lora_write_atomic(cfg_path, text, strlen(text));
        free(text);
    }
    free(ts);
    free(names);
    free(st_path);
    free(cfg_path);
    return rc;
}
