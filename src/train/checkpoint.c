/* checkpoint.c — training state on disk, so a stopped run resumes exactly.
 *
 * out_dir/checkpoint/
 *   adapter_config.json, adapter_model.safetensors   the adapter (F32), loadable as is
 *   optimizer.safetensors   param.<module>.lora_A|B, exp_avg.<...>, exp_avg_sq.<...> (F32)
 *   trainer_state.json      step, epoch, data position, shuffle seed, settings
 * Built in checkpoint.tmp, then swapped in by rename (the previous checkpoint
 * is kept as checkpoint.old until the new one is in place). */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/safetensors.h"
#include "train/trainer.h"
#include "util/error.h"

#define STATE_FORMAT "prism-lora-trainer-1"

/* Removes dir and the plain files in it (checkpoints are flat). */
static void rm_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static bool dir_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static void module_key(char *buf, size_t n, const char *kind, int32_t layer, int t, int w) {
    snprintf(buf, n, "%s.layers.%d.%s.%s.lora_%c", kind, layer, lora_target_parent[t], lora_target_names[t],
             w ? 'B' : 'A');
}

static prism_status write_optimizer(const char *path, const prism_adapter *a, const prism_adapter *m,
                                    const prism_adapter *v) {
    int32_t n = lora_param_tensors(a, NULL, NULL, 0);
    st_write_tensor *ts = calloc((size_t)n * 3 + 1, sizeof *ts);
    char (*names)[160] = calloc((size_t)n * 3 + 1, sizeof *names);
    if (!ts || !names) {
        free(ts); free(names);
        return prism_error(PRISM_E_NOMEM, "out of memory writing %s", path);
    }
    const prism_adapter *src[3] = {a, m, v};
    const char *kind[3] = {"param", "exp_avg", "exp_avg_sq"};
    size_t k = 0;
    for (int s = 0; s < 3; s++)
        for (int32_t l = 0; l < a->n_layers; l++)
            for (int t = 0; t < LORA_N_TARGETS; t++) {
                const lora_module *mod = lora_mod(src[s], l, (lora_target)t);
                if (!mod->r) continue;
                for (int w = 0; w < 2; w++, k++) {
                    module_key(names[k], sizeof names[k], kind[s], l, t, w);
                    ts[k] = (st_write_tensor){.name = names[k], .dtype = ST_F32, .ndim = 2,
                                              .shape = {w ? mod->out : mod->r, w ? mod->r : mod->in},
                                              .data = w ? mod->B : mod->A};
                }
            }
    prism_status st = st_write(path, ts, k, NULL);
    free(ts);
    free(names);
    return st;
}

static prism_status write_state(const char *path, const train_state *s, const char *config_json) {
    json_error_t je;
    json_t *cfg = config_json ? json_loads(config_json, 0, &je) : json_object();
    if (!cfg) return prism_error(PRISM_E_ARG, "checkpoint: bad settings JSON: %s", je.text);
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)s->seed);
    json_t *o = json_pack("{s:s, s:I, s:i, s:i, s:s, s:I, s:f, s:o}", "format", STATE_FORMAT, "step", (json_int_t)s->step,
                          "epoch", s->epoch, "pos", s->pos, "seed", seed, "tokens_seen", (json_int_t)s->tokens_seen,
                          "last_loss", s->last_loss, "config", cfg);
    if (!o) return prism_error(PRISM_E_NOMEM, "checkpoint: out of memory");
    FILE *f = fopen(path, "wb");
    if (!f) {
        json_decref(o);
        return prism_error(PRISM_E_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    int rc = json_dumpf(o, f, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(o);
    rc |= fflush(f) != 0;
    rc |= fsync(fileno(f)) != 0;
    rc |= fclose(f) != 0;
    if (rc) return prism_error(PRISM_E_IO, "%s: write failed: %s", path, strerror(errno));
    return PRISM_OK;
}

prism_status checkpoint_save(const char *out_dir, const prism_adapter *a, const prism_adapter *m,
                             const prism_adapter *v, const train_state *s, const char *config_json) {
    char tmp[4096], fin[4096], old[4096], p[4200];
    snprintf(tmp, sizeof tmp, "%s/checkpoint.tmp", out_dir);
    snprintf(fin, sizeof fin, "%s/checkpoint", out_dir);
    snprintf(old, sizeof old, "%s/checkpoint.old", out_dir);
    if (mkdir(out_dir, 0777) && errno != EEXIST)
        return prism_error(PRISM_E_IO, "%s: cannot create directory: %s", out_dir, strerror(errno));
    rm_flat_dir(tmp);
    if (mkdir(tmp, 0777)) return prism_error(PRISM_E_IO, "%s: cannot create directory: %s", tmp, strerror(errno));
    prism_status st = prism_adapter_save(a, tmp, "F32");
    if (st) { prism_error_prefix("checkpoint"); return st; }
    snprintf(p, sizeof p, "%s/optimizer.safetensors", tmp);
    if ((st = write_optimizer(p, a, m, v))) return st;
    snprintf(p, sizeof p, "%s/trainer_state.json", tmp);
    if ((st = write_state(p, s, config_json))) return st;
    rm_flat_dir(old);
    if (dir_exists(fin) && rename(fin, old))
        return prism_error(PRISM_E_IO, "%s: cannot move aside: %s", fin, strerror(errno));
    if (rename(tmp, fin)) return prism_error(PRISM_E_IO, "%s: cannot rename to %s: %s", tmp, fin, strerror(errno));
    rm_flat_dir(old);
    return PRISM_OK;
}

static prism_status read_tensors(const char *path, const st_set *set, const char *kind, prism_adapter *x) {
    char key[160];
    for (int32_t l = 0; l < x->n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            lora_module *mod = lora_mod(x, l, (lora_target)t);
            if (!mod->r) continue;
            for (int w = 0; w < 2; w++) {
                module_key(key, sizeof key, kind, l, t, w);
                const st_tensor *ten = st_find(set, key);
                int64_t rows = w ? mod->out : mod->r, cols = w ? mod->r : mod->in;
                if (!ten)
                    return prism_error(PRISM_E_FORMAT, "%s: tensor %s is missing (the adapter settings differ from the checkpoint's?)",
                                       path, key);
                if (ten->dtype != ST_F32 || ten->ndim != 2 || ten->shape[0] != rows || ten->shape[1] != cols)
                    return prism_error(PRISM_E_FORMAT, "%s: tensor %s is %s [%lld, %lld], expected F32 [%lld, %lld]", path,
                                       key, st_dtype_name(ten->dtype), (long long)ten->shape[0],
                                       (long long)(ten->ndim > 1 ? ten->shape[1] : 0), (long long)rows, (long long)cols);
                memcpy(w ? mod->B : mod->A, ten->data, (size_t)(rows * cols) * sizeof(float));
            }
        }
    x->version++;
    return PRISM_OK;
}

prism_status checkpoint_load(const char *out_dir, prism_adapter *a, prism_adapter *m, prism_adapter *v,
                             train_state *s, char **config_json) {
    char dir[4096], p[4200];
    *config_json = NULL;
    snprintf(dir, sizeof dir, "%s/checkpoint", out_dir);
    if (!dir_exists(dir)) {
        snprintf(dir, sizeof dir, "%s/checkpoint.old", out_dir); /* stopped between the two renames */
        if (!dir_exists(dir)) return prism_error(PRISM_E_IO, "%s/checkpoint: no checkpoint to resume from", out_dir);
    }
    snprintf(p, sizeof p, "%s/trainer_state.json", dir);
    json_error_t je;
    json_t *o = json_load_file(p, 0, &je);
    if (!o) return prism_error(PRISM_E_FORMAT, "%s: %s (line %d)", p, je.text, je.line);
    const char *fmt = NULL, *seed = NULL;
    json_int_t step = 0, tok = 0;
    int epoch = 0, pos = 0;
    double last = 0;
    json_t *cfg = NULL;
    if (json_unpack_ex(o, &je, 0, "{s:s, s:I, s:i, s:i, s:s, s:I, s:F, s:o}", "format", &fmt, "step", &step, "epoch",
                       &epoch, "pos", &pos, "seed", &seed, "tokens_seen", &tok, "last_loss", &last, "config", &cfg) ||
        strcmp(fmt, STATE_FORMAT) || step < 0 || epoch < 0 || pos < 0) {
        json_decref(o);
        return prism_error(PRISM_E_FORMAT, "%s: not a %s state file (%s)", p, STATE_FORMAT, je.text);
    }
    s->step = step;
    s->epoch = epoch;
    s->pos = pos;
    s->seed = strtoull(seed, NULL, 10);
    s->tokens_seen = tok;
    s->last_loss = last;
    *config_json = json_dumps(cfg, JSON_SORT_KEYS | JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(o);
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    st_set *set = NULL;
    prism_status st = st_open(p, &set);
    if (!st) st = read_tensors(p, set, "param", a);
    if (!st) st = read_tensors(p, set, "exp_avg", m);
    if (!st) st = read_tensors(p, set, "exp_avg_sq", v);
    st_close(set);
    if (st) {
        free(*config_json);
        *config_json = NULL;
    }
    return st;
}
