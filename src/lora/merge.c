/* merge.c — export base + LoRA as a plain Hugging Face checkpoint.
 *
 * Every tensor of the base checkpoint is written under its own name and in
 * its stored dtype; each adapted projection model.layers.L.<parent>.<proj>.weight
 * [out, in] becomes W + scale·(B·A), computed in F32 (as PEFT's merge:
 * delta = (B @ A) * scale, then W + delta) and rounded to the stored dtype.
 * Other tensors are copied byte for byte from the mmap. Tensors are streamed
 * (merged ones in blocks of rows), so memory stays at one block whatever the
 * model size. Above the shard limit the output is split like transformers'
 * save_pretrained: model-0000i-of-0000n.safetensors + model.safetensors.index.json. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lora/lora.h"
#include "lora/lora_io.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "util/error.h"

#define MERGE_SHARD_BYTES (2ull << 30) /* 2 GiB */
#define MERGE_ROWS 256                 /* rows of a merged weight computed at once */

/* Files copied unchanged from the base directory when present. */
static const char *const copied_files[] = {
    "config.json",        "generation_config.json", "tokenizer.json",     "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model",   "vocab.json",         "merges.txt",
    "added_tokens.json",  "chat_template.jinja",
};

/* Copies src_dir/name to dst_dir/name atomically if it exists. */
static prism_status copy_if_present(const char *src_dir, const char *dst_dir, const char *name) {
    char *src = lora_path_join(src_dir, name), *dst = lora_path_join(dst_dir, name);
    prism_status rc = PRISM_OK;
    char *buf = NULL;
    if (!src || !dst) rc = prism_error(PRISM_E_NOMEM, "out of memory");
    FILE *f = rc ? NULL : fopen(src, "rb");
    if (f) {
        long n = -1;
        if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
        if (n < 0 || fseek(f, 0, SEEK_SET) != 0) rc = prism_error(PRISM_E_IO, "%s: cannot read: %s", src, strerror(errno));
        else if (!(buf = malloc((size_t)n + 1))) rc = prism_error(PRISM_E_NOMEM, "out of memory");
        else if (fread(buf, 1, (size_t)n, f) != (size_t)n) rc = prism_error(PRISM_E_IO, "%s: read failed", src);
        fclose(f);
        if (!rc) rc = lora_write_atomic(dst, buf, (size_t)n);
    } else if (!rc && errno != ENOENT) {
        rc = prism_error(PRISM_E_IO, "%s: cannot open: %s", src, strerror(errno));
    }
    free(buf);
    free(src);
    free(dst);
    return rc;
}

/* The adapted module of a base tensor name, or NULL (not a target weight, or
 * a module the adapter leaves alone). */
static const lora_module *module_of(const prism_adapter *a, const char *name) {
    static const char pre[] = "model.layers.";
    if (strncmp(name, pre, sizeof pre - 1) != 0) return NULL;
    const char *p = name + sizeof pre - 1;
    long L = 0;
    int nd = 0;
    while (*p >= '0' && *p <= '9' && nd < 9) {
        L = L * 10 + (*p++ - '0');
        nd++;
    }
    if (!nd || *p++ != '.' || L >= a->n_layers) return NULL;
    for (int t = 0; t < LORA_N_TARGETS; t++) {
        char tail[64];
        snprintf(tail, sizeof tail, "%s.%s.weight", lora_target_parent[t], lora_target_names[t]);
        if (strcmp(p, tail) == 0) {
            const lora_module *md = lora_mod(a, (int32_t)L, (lora_target)t);
            return md->r > 0 ? md : NULL;
        }
    }
    return NULL;
}

static prism_status fwrite_all(FILE *fp, const void *p, size_t n, const char *path) {
    if (n && fwrite(p, 1, n, fp) != n) return prism_error(PRISM_E_IO, "%s: write failed: %s", path, strerror(errno));
    return PRISM_OK;
}

/* Writes W + scale·B·A for tensor t (rows of W [out, in] in t's dtype). */
static prism_status write_merged(FILE *fp, const st_tensor *t, const lora_module *md, float *wbuf, void *obuf,
                                 const char *path) {
    const int64_t out = md->out, in = md->in, r = md->r;
    const size_t es = st_dtype_size(t->dtype);
    const unsigned char *src = t->data;
    for (int64_t r0 = 0; r0 < out; r0 += MERGE_ROWS) {
        const int64_t nr = out - r0 < MERGE_ROWS ? out - r0 : MERGE_ROWS;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nr; i++) {
            const int64_t row = r0 + i;
            float *w = wbuf + i * in, *d = wbuf + (MERGE_ROWS + i) * in;
            const unsigned char *s = src + (size_t)(row * in) * es;
            for (int64_t j = 0; j < in; j++) {
                if (t->dtype == ST_F32) memcpy(&w[j], s + 4 * j, 4);
                else {
                    uint16_t h;
                    memcpy(&h, s + 2 * j, 2);
                    w[j] = t->dtype == ST_BF16 ? st_bf16_to_f32(h) : st_f16_to_f32(h);
                }
                d[j] = 0.0f;
            }
            for (int64_t k = 0; k < r; k++) { /* (B·A)[row, :] */
                const float b = md->B[row * r + k];
                const float *ak = md->A + k * in;
                for (int64_t j = 0; j < in; j++) d[j] += b * ak[j];
            }
            unsigned char *o = (unsigned char *)obuf + (size_t)(i * in) * es;
            for (int64_t j = 0; j < in; j++) {
                float v = w[j] + d[j] * md->scale;
                if (t->dtype == ST_F32) memcpy(o + 4 * j, &v, 4);
                else {
                    uint16_t h = t->dtype == ST_BF16 ? st_f32_to_bf16(v) : st_f32_to_f16(v);
                    memcpy(o + 2 * j, &h, 2);
                }
            }
        }
        prism_status rc = fwrite_all(fp, obuf, (size_t)(nr * in) * es, path);
        if (rc) return rc;
    }
    return PRISM_OK;
}

/* Writes tensors [i0, i1) of the base set to path atomically (path.tmp, fsync, rename). */
static prism_status write_shard(const prism_model *m, const prism_adapter *a, size_t i0, size_t i1, const char *path,
                                float *wbuf, void *obuf) {
    json_t *hdr = json_object(), *md = json_object();
    json_object_set_new(md, "format", json_string("pt"));
    json_object_set_new(hdr, "__metadata__", md);
    uint64_t off = 0;
    for (size_t i = i0; i < i1; i++) {
        const st_tensor *t = st_at(m->st, i);
        json_t *e = json_object(), *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_object_set_new(e, "dtype", json_string(st_dtype_name(t->dtype)));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + t->nbytes)));
        json_object_set_new(hdr, t->name, e);
        off += t->nbytes;
    }
    char *text = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    if (!text) return prism_error(PRISM_E_NOMEM, "%s: cannot serialise header", path);
    size_t hl = strlen(text), padded = (hl + 7) & ~(size_t)7; /* data region 8-byte aligned */
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));

    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) {
        free(text);
        return prism_error(PRISM_E_NOMEM, "out of memory");
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    prism_status rc = PRISM_OK;
    FILE *fp = fopen(tmp, "wb");
    if (!fp) rc = prism_error(PRISM_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
    if (!rc) rc = fwrite_all(fp, len8, 8, tmp);
    if (!rc) rc = fwrite_all(fp, text, hl, tmp);
    if (!rc) rc = fwrite_all(fp, "        ", padded - hl, tmp);
    for (size_t i = i0; i < i1 && !rc; i++) {
        const st_tensor *t = st_at(m->st, i);
        const lora_module *lm = module_of(a, t->name);
        if (lm) rc = write_merged(fp, t, lm, wbuf, obuf, tmp);
        else rc = fwrite_all(fp, t->data, t->nbytes, tmp);
    }
    if (!rc && (fflush(fp) != 0 || fsync(fileno(fp)) != 0))
        rc = prism_error(PRISM_E_IO, "%s: flush failed: %s", tmp, strerror(errno));
    if (fp && fclose(fp) != 0 && !rc) rc = prism_error(PRISM_E_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path) != 0)
        rc = prism_error(PRISM_E_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (rc && fp) unlink(tmp);
    free(tmp);
    free(text);
    return rc;
}

/* Checks that a fits m and that the base checkpoint holds every adapted weight. */
static prism_status check_fit(const prism_model *m, const prism_adapter *a) {
    if (a->n_layers != m->cfg.n_layers)
        return prism_error(PRISM_E_ARG, "adapter %s has %d layers, the model %d", prism_adapter_name(a), a->n_layers,
                           m->cfg.n_layers);
    char name[160];
    for (int32_t l = 0; l < a->n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            const lora_module *md = lora_mod(a, l, (lora_target)t);
            if (md->r <= 0) continue;
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, lora_target_parent[t], lora_target_names[t]);
            const st_tensor *w = st_find(m->st, name);
            if (!w) return prism_error(PRISM_E_ARG, "%s: the base checkpoint has no %s", m->dir, name);
            if (w->ndim != 2 || w->shape[0] != md->out || w->shape[1] != md->in)
                return prism_error(PRISM_E_ARG, "adapter %s: %s is [%lld, %lld] in the adapter, [%lld, %lld] in %s",
                                   prism_adapter_name(a), name, (long long)md->out, (long long)md->in,
                                   (long long)w->shape[0], (long long)(w->ndim > 1 ? w->shape[1] : 0), m->dir);
            if (w->dtype != ST_F32 && w->dtype != ST_BF16 && w->dtype != ST_F16)
                return prism_error(PRISM_E_UNSUPPORTED, "%s: %s has dtype %s; merging needs F32, BF16 or F16", m->dir,
                                   name, st_dtype_name(w->dtype));
        }
    for (size_t i = 0; i < st_count(m->st); i++)
        if (st_at(m->st, i)->dtype == ST_OTHER)
            return prism_error(PRISM_E_UNSUPPORTED, "%s: tensor %s has a dtype prism cannot write", m->dir,
                               st_at(m->st, i)->name);
    return PRISM_OK;
}

static int same_dir(const char *x, const char *y) {
    struct stat a, b;
    return stat(x, &a) == 0 && stat(y, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

prism_status lora_export_merged_sharded(const prism_model *m, const prism_adapter *a, const char *out_dir,
                                        uint64_t max_shard_bytes) {
    if (!m || !a || !out_dir || !*out_dir)
        return prism_error(PRISM_E_ARG, "prism_adapter_export_merged: NULL model, adapter or directory");
    prism_status rc = check_fit(m, a);
    if (rc) return rc;
    if (same_dir(out_dir, m->dir))
        return prism_error(PRISM_E_ARG, "%s: the merged checkpoint cannot overwrite the base model's directory", out_dir);
    if ((rc = lora_mkdir_p(out_dir))) return rc;
    for (size_t i = 0; i < sizeof copied_files / sizeof *copied_files && !rc; i++)
        rc = copy_if_present(m->dir, out_dir, copied_files[i]);
    if (rc) return rc;

    /* Shard plan: consecutive tensors in the base order, each shard <= max_shard_bytes. */
    const size_t n = st_count(m->st);
    size_t *start = malloc((n + 1) * sizeof *start);
    if (!start) return prism_error(PRISM_E_NOMEM, "out of memory");
    size_t n_shards = 0;
    uint64_t cur = 0, total = 0;
    int64_t max_in = 1;
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_at(m->st, i);
        if (i == 0 || (cur > 0 && cur + t->nbytes > max_shard_bytes)) {
            start[n_shards++] = i;
            cur = 0;
        }
        cur += t->nbytes;
        total += t->nbytes;
    }
    start[n_shards] = n;
    for (int64_t i = 0; i < (int64_t)a->n_layers * LORA_N_TARGETS; i++)
        if (a->mod[i].r > 0 && a->mod[i].in > max_in) max_in = a->mod[i].in;
    float *wbuf = malloc((size_t)(2 * MERGE_ROWS * max_in) * sizeof(float));
    void *obuf = malloc((size_t)(MERGE_ROWS * max_in) * sizeof(float));
    if (!wbuf || !obuf) rc = prism_error(PRISM_E_NOMEM, "out of memory");

    char *single = lora_path_join(out_dir, "model.safetensors");
    char *index = lora_path_join(out_dir, "model.safetensors.index.json");
    if (!rc && (!single || !index)) rc = prism_error(PRISM_E_NOMEM, "out of memory");
    if (!rc && n_shards <= 1) {
        rc = write_shard(m, a, 0, n, single, wbuf, obuf);
        if (!rc) unlink(index); /* a stale index would describe other files */
    } else if (!rc) {
        json_t *map = json_object();
        char fname[64];
        for (size_t s = 0; s < n_shards && !rc; s++) {
            snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", s + 1, n_shards);
            char *p = lora_path_join(out_dir, fname);
            if (!p) rc = prism_error(PRISM_E_NOMEM, "out of memory");
            else rc = write_shard(m, a, start[s], start[s + 1], p, wbuf, obuf);
            free(p);
            for (size_t i = start[s]; i < start[s + 1] && !rc; i++)
                json_object_set_new(map, st_at(m->st, i)->name, json_string(fname));
        }
        if (!rc) {
            json_t *root = json_object(), *meta = json_object();
            json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
            json_object_set_new(root, "metadata", meta);
            json_object_set_new(root, "weight_map", json_incref(map));
            char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
            json_decref(root);
            if (!text) rc = prism_error(PRISM_E_NOMEM, "out of memory");
            else rc = lora_write_atomic(index, text, strlen(text));
            free(text);
            /* The loader prefers model.safetensors: remove a stale one. */
            if (!rc) unlink(single);
        }
        json_decref(map);
    }
    free(single);
    free(index);
    free(wbuf);
    free(obuf);
    free(start);
    return rc;
}

prism_status prism_adapter_export_merged(const prism_model *m, const prism_adapter *a, const char *out_dir) {
    return lora_export_merged_sharded(m, a, out_dir, MERGE_SHARD_BYTES);
}
