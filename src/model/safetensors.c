/* safetensors.c — mmap-backed reader for .safetensors files and sharded
 * Hugging Face checkpoints (model.safetensors.index.json), an atomic writer,
 * and the scalar bf16/f16 <-> f32 conversions.
 *
 * Every header field is checked against the file before any pointer into the
 * mapping is handed out: a truncated file or a lying header is an error
 * message naming the file and tensor, never an out-of-bounds read. Tensor
 * data stays in the read-only MAP_PRIVATE mapping in its stored dtype. */
#include "model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/error.h"

/* A header beyond this is not a real checkpoint (the largest real ones are a
 * few MB) and would only make jansson allocate a lot. */
#define ST_MAX_HEADER (100u * 1024u * 1024u)
#define ST_MAX_DIMS 8

typedef struct {
    char *path;
    void *map;   /* whole file, PROT_READ, MAP_PRIVATE */
    size_t size;
} st_file;

struct st_set {
    st_tensor *t;      /* [n], per file in data-offset order */
    char **dtype_str;  /* [n] dtype as written in the header, for messages */
    size_t n, cap;
    st_file *files;    /* [n_files] */
    size_t n_files;
    uint32_t *slot;    /* [n_slot] open-addressing table: tensor index + 1, 0 = empty */
    size_t n_slot;
};

/* ---------------------------------------------------------------- dtypes */

size_t st_dtype_size(st_dtype dt) {
    switch (dt) {
    case ST_F32: return 4;
    case ST_BF16: return 2;
    case ST_F16: return 2;
    case ST_I32: return 4;
    case ST_I64: return 8;
    case ST_OTHER: return 0;
    }
    return 0;
}

const char *st_dtype_name(st_dtype dt) {
    switch (dt) {
    case ST_F32: return "F32";
    case ST_BF16: return "BF16";
    case ST_F16: return "F16";
    case ST_I32: return "I32";
    case ST_I64: return "I64";
    case ST_OTHER: return "OTHER";
    }
    return "?";
}

/* Maps a header dtype string to st_dtype and its element size. Dtypes prism
 * cannot convert still get their size so the offsets can be validated; an
 * unknown string gets size 0 (offsets then only bounds-checked). */
static st_dtype parse_dtype(const char *s, size_t *elsize) {
    static const struct { const char *name; st_dtype dt; size_t size; } tab[] = {
        {"F32", ST_F32, 4},       {"BF16", ST_BF16, 2},    {"F16", ST_F16, 2},      {"I32", ST_I32, 4},
        {"I64", ST_I64, 8},       {"F64", ST_OTHER, 8},    {"U64", ST_OTHER, 8},    {"U32", ST_OTHER, 4},
        {"I16", ST_OTHER, 2},     {"U16", ST_OTHER, 2},    {"I8", ST_OTHER, 1},     {"U8", ST_OTHER, 1},
        {"BOOL", ST_OTHER, 1},    {"F8_E4M3", ST_OTHER, 1}, {"F8_E5M2", ST_OTHER, 1}, {"F8_E8M0", ST_OTHER, 1},
        {"C64", ST_OTHER, 8},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(s, tab[i].name) == 0) {
            *elsize = tab[i].size;
            return tab[i].dt;
        }
    *elsize = 0;
    return ST_OTHER;
}

/* ---------------------------------------------------------------- scalar conversions */

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t st_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN: keep sign, force quiet */
    /* Round to nearest even: add 0x7fff plus the lowest kept bit; overflow
     * correctly carries into the exponent (up to inf). */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        /* zero or subnormal: m * 2^-24, exact in f32 */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13)); /* inf / NaN (payload kept) */
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));      /* rebias 15 -> 127 */
}

uint16_t st_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((x >> 13) & 0x3ffu); /* NaN stays NaN (quiet) */
    /* >= 65520 (halfway between 65504 and 2^16; 65504 is odd) rounds to inf. */
    if (x >= 0x477ff000u) return sign | 0x7c00u;
    if (x < 0x38800000u) {
        /* below 2^-14: f16 subnormal, result = round(|f| * 2^24) */
        if (x <= 0x33000000u) return sign; /* <= 2^-25: rounds (ties-to-even) to 0 */
        uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u; /* |f| = m * 2^(e-150) */
        uint32_t shift = 126u - e;                                 /* in [14, 24] */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) r++; /* may carry into the min normal 0x400: correct */
        return sign | (uint16_t)r;
    }
    uint32_t r = x - 0x38000000u; /* rebias exponent 127 -> 15 */
    r += 0xfffu + ((r >> 13) & 1u);
    return sign | (uint16_t)(r >> 13);
}

/* ---------------------------------------------------------------- set bookkeeping */

static void file_unmap(st_file *f) {
    if (f->map) munmap(f->map, f->size);
    free(f->path);
    f->map = NULL;
    f->path = NULL;
}

void st_close(st_set *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->t[i].name);
        free(s->dtype_str[i]);
    }
    for (size_t i = 0; i < s->n_files; i++) file_unmap(&s->files[i]);
    free(s->t);
    free(s->dtype_str);
    free(s->files);
    free(s->slot);
    free(s);
}

size_t st_count(const st_set *s) { return s ? s->n : 0; }

const st_tensor *st_at(const st_set *s, size_t i) { return s && i < s->n ? &s->t[i] : NULL; }

const char *st_file_path(const st_set *s, const st_tensor *t) {
    if (!s || !t || t->file < 0 || (size_t)t->file >= s->n_files) return "?";
    return s->files[t->file].path;
}

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

const st_tensor *st_find(const st_set *s, const char *name) {
    if (!s || !name || !s->n_slot) return NULL;
    size_t mask = s->n_slot - 1;
    for (size_t i = (size_t)hash_str(name) & mask;; i = (i + 1) & mask) {
        uint32_t v = s->slot[i];
        if (!v) return NULL;
        if (strcmp(s->t[v - 1].name, name) == 0) return &s->t[v - 1];
    }
}

/* Builds the name table once all files are read; a name seen twice (within
 * a file jansson already rejects it, so across shards) is an error. */
static prism_status build_index(st_set *s) {
    size_t n_slot = 16;
    while (n_slot < 2 * s->n) n_slot *= 2;
    s->slot = calloc(n_slot, sizeof *s->slot);
    if (!s->slot) return prism_error(PRISM_E_NOMEM, "safetensors: out of memory for tensor index");
    s->n_slot = n_slot;
    for (size_t k = 0; k < s->n; k++) {
        size_t i = (size_t)hash_str(s->t[k].name) & (n_slot - 1);
        for (; s->slot[i]; i = (i + 1) & (n_slot - 1)) {
            const st_tensor *o = &s->t[s->slot[i] - 1];
            if (strcmp(o->name, s->t[k].name) == 0)
                return prism_error(PRISM_E_FORMAT, "tensor %s appears in both %s and %s", o->name,
                                   s->files[o->file].path, s->files[s->t[k].file].path);
        }
        s->slot[i] = (uint32_t)(k + 1);
    }
    return PRISM_OK;
}

/* ---------------------------------------------------------------- reading one file */

typedef struct {
    st_tensor t;
    char *dtype_str;
} st_entry;

static int cmp_offset(const void *a, const void *b) {
    const st_tensor *x = &((const st_entry *)a)->t, *y = &((const st_entry *)b)->t;
    if (x->data != y->data) return (const char *)x->data < (const char *)y->data ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Puts the tensors [first, n) of one file in storage order: deterministic
 * whatever the JSON key order, and sequential for anyone walking them.
 * t and dtype_str are parallel arrays, so they are sorted together. */
static prism_status sort_by_offset(st_set *s, size_t first, const char *path) {
    size_t m = s->n - first;
    if (m < 2) return PRISM_OK;
    st_entry *e = malloc(m * sizeof *e);
    if (!e) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < m; i++) e[i] = (st_entry){s->t[first + i], s->dtype_str[first + i]};
    qsort(e, m, sizeof *e, cmp_offset);
    for (size_t i = 0; i < m; i++) {
        s->t[first + i] = e[i].t;
        s->dtype_str[first + i] = e[i].dtype_str;
    }
    free(e);
    return PRISM_OK;
}

/* Reads a non-negative JSON integer; false for anything else. */
static int json_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return 0;
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

/* Validates one header entry and appends it to s (name/dtype strings are
 * owned by s from then on). region: start of the data region, region_size bytes. */
static prism_status add_tensor(st_set *s, const char *path, const char *name, json_t *info, const char *region,
                               uint64_t region_size, int32_t file) {
    if (!json_is_object(info)) return prism_error(PRISM_E_FORMAT, "%s: tensor %s: entry is not a JSON object", path, name);
    json_t *jdt = json_object_get(info, "dtype"), *jshape = json_object_get(info, "shape"),
           *joff = json_object_get(info, "data_offsets");
    if (!json_is_string(jdt)) return prism_error(PRISM_E_FORMAT, "%s: tensor %s: missing or non-string dtype", path, name);
    if (!json_is_array(jshape)) return prism_error(PRISM_E_FORMAT, "%s: tensor %s: missing shape array", path, name);
    if (!json_is_array(joff) || json_array_size(joff) != 2)
        return prism_error(PRISM_E_FORMAT, "%s: tensor %s: data_offsets must be an array [begin, end]", path, name);

    st_tensor t = {0};
    size_t elsize;
    const char *dts = json_string_value(jdt);
    t.dtype = parse_dtype(dts, &elsize);

    size_t nd = json_array_size(jshape);
    if (nd > ST_MAX_DIMS)
        return prism_error(PRISM_E_UNSUPPORTED, "%s: tensor %s: %zu dimensions (at most %d supported)", path, name, nd,
                           ST_MAX_DIMS);
    t.ndim = (int32_t)nd;
    t.numel = 1;
    for (size_t d = 0; d < nd; d++) {
        json_t *jd = json_array_get(jshape, d);
        if (!json_is_integer(jd) || json_integer_value(jd) < 0)
            return prism_error(PRISM_E_FORMAT, "%s: tensor %s: shape[%zu] is not a non-negative integer", path, name, d);
        int64_t v = json_integer_value(jd);
        if (v > 0 && t.numel > INT64_MAX / v)
            return prism_error(PRISM_E_FORMAT, "%s: tensor %s: element count overflows", path, name);
        t.shape[d] = v;
        t.numel *= v;
    }

    uint64_t b, e;
    if (!json_u64(json_array_get(joff, 0), &b) || !json_u64(json_array_get(joff, 1), &e))
        return prism_error(PRISM_E_FORMAT, "%s: tensor %s: data_offsets are not non-negative integers", path, name);
    if (b > e)
        return prism_error(PRISM_E_FORMAT, "%s: tensor %s: data_offsets [%llu, %llu] have begin > end", path, name,
                           (unsigned long long)b, (unsigned long long)e);
    if (e > region_size)
        return prism_error(PRISM_E_FORMAT, "%s: tensor %s: data_offsets [%llu, %llu] exceed data region of %llu bytes",
                           path, name, (unsigned long long)b, (unsigned long long)e, (unsigned long long)region_size);
    if (elsize) {
        if ((uint64_t)t.numel > UINT64_MAX / elsize)
            return prism_error(PRISM_E_FORMAT, "%s: tensor %s: byte size overflows", path, name);
        uint64_t want = (uint64_t)t.numel * elsize;
        if (e - b != want)
            return prism_error(PRISM_E_FORMAT,
                               "%s: tensor %s: data_offsets [%llu, %llu] hold %llu bytes, shape x %s needs %llu", path,
                               name, (unsigned long long)b, (unsigned long long)e, (unsigned long long)(e - b), dts,
                               (unsigned long long)want);
    }
    t.data = region + b;
    t.nbytes = (size_t)(e - b);
    t.file = file;

    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        st_tensor *nt = realloc(s->t, cap * sizeof *nt);
        if (nt) s->t = nt;
        char **nd2 = nt ? realloc(s->dtype_str, cap * sizeof *nd2) : NULL;
        if (nd2) s->dtype_str = nd2;
        if (!nt || !nd2) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
        s->cap = cap;
    }
    t.name = strdup(name);
    char *dcopy = strdup(dts);
    if (!t.name || !dcopy) {
        free(t.name);
        free(dcopy);
        return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    }
    if (s->n >= UINT32_MAX - 1) return prism_error(PRISM_E_RANGE, "%s: too many tensors", path);
    s->t[s->n] = t;
    s->dtype_str[s->n] = dcopy;
    s->n++;
    return PRISM_OK;
}

/* mmaps path, validates its header and appends its tensors to s. */
static prism_status open_file(st_set *s, const char *path) {
    st_file *nf = realloc(s->files, (s->n_files + 1) * sizeof *nf);
    if (!nf) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    s->files = nf;
    st_file *f = &s->files[s->n_files];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    int32_t fidx = (int32_t)s->n_files++; /* counted now so st_close frees the path on error */

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return prism_error(PRISM_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return prism_error(PRISM_E_IO, "%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return prism_error(PRISM_E_IO, "%s: not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return prism_error(PRISM_E_FORMAT, "%s: file is %lld bytes, too short for the 8-byte header length", path,
                           (long long)st.st_size);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return prism_error(PRISM_E_UNSUPPORTED, "%s: file too large to map", path);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return prism_error(PRISM_E_IO, "%s: mmap failed: %s", path, strerror(err));
    f->map = map;
    f->size = (size_t)st.st_size;

    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i]; /* little-endian u64 */
    if (hlen > f->size - 8)
        return prism_error(PRISM_E_FORMAT, "%s: header length %llu exceeds the file (%zu bytes after the length)", path,
                           (unsigned long long)hlen, f->size - 8);
    if (hlen >= ST_MAX_HEADER)
        return prism_error(PRISM_E_FORMAT, "%s: header length %llu is implausibly large (limit %u)", path,
                           (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen < 2) return prism_error(PRISM_E_FORMAT, "%s: header length %llu is too short for a JSON object", path,
                                     (unsigned long long)hlen);

    /* Some writers pad with NULs instead of spaces; jansson would reject them. */
    size_t jlen = (size_t)hlen;
    while (jlen > 0 && p[8 + jlen - 1] == 0) jlen--;
    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, jlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return prism_error(PRISM_E_FORMAT, "%s: header is not valid JSON: %s (at byte %d)", path, jerr.text,
                           jerr.position);
    if (!json_is_object(root)) {
        json_decref(root);
        return prism_error(PRISM_E_FORMAT, "%s: header JSON is not an object", path);
    }

    const char *region = (const char *)p + 8 + hlen;
    uint64_t region_size = f->size - 8 - hlen;
    size_t first = s->n;
    const char *key;
    json_t *val;
    prism_status rc = PRISM_OK;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        rc = add_tensor(s, path, key, val, region, region_size, fidx);
        if (rc) break;
    }
    json_decref(root);
    if (rc) return rc;
    return sort_by_offset(s, first, path);
}

/* ---------------------------------------------------------------- opening sets */

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

/* dir/model.safetensors.index.json: opens every distinct shard of weight_map
 * once, then checks that each listed tensor is in the shard that names it. */
static prism_status open_index(st_set *s, const char *dir, const char *index_path) {
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return prism_error(PRISM_E_FORMAT, "%s: not valid JSON: %s (line %d)", index_path, jerr.text, jerr.line);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        json_decref(root);
        return prism_error(PRISM_E_FORMAT, "%s: no \"weight_map\" object", index_path);
    }

    prism_status rc = PRISM_OK;
    const char *key;
    json_t *val;
    /* shard names in order of first appearance; files[i] was opened from shards[i] */
    const char **shards = NULL;
    size_t n_shards = 0;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val) || !*json_string_value(val)) {
            rc = prism_error(PRISM_E_FORMAT, "%s: weight_map entry for %s is not a file name", index_path, key);
            break;
        }
        const char *sh = json_string_value(val);
        if (sh[0] == '/' || strcmp(sh, "..") == 0 || strncmp(sh, "../", 3) == 0 || strstr(sh, "/../")) {
            rc = prism_error(PRISM_E_FORMAT, "%s: weight_map entry for %s names shard %s outside the directory",
                             index_path, key, sh);
            break;
        }
        size_t i = 0;
        while (i < n_shards && strcmp(shards[i], sh) != 0) i++;
        if (i < n_shards) continue;
        const char **ns = realloc(shards, (n_shards + 1) * sizeof *ns);
        if (!ns) {
            rc = prism_error(PRISM_E_NOMEM, "%s: out of memory", index_path);
            break;
        }
        shards = ns;
        shards[n_shards] = sh;
        char *sp = path_join(dir, sh);
        if (!sp) {
            rc = prism_error(PRISM_E_NOMEM, "%s: out of memory", index_path);
            break;
        }
        if (!is_file(sp)) {
            rc = prism_error(PRISM_E_IO, "%s: shard %s named in the weight_map is missing (%s)", index_path, sh, sp);
            free(sp);
            break;
        }
        rc = open_file(s, sp);
        free(sp);
        if (rc) break;
        n_shards++;
    }
    if (!rc && n_shards == 0) rc = prism_error(PRISM_E_FORMAT, "%s: weight_map is empty", index_path);
    if (!rc) rc = build_index(s);
    if (!rc) {
        json_object_foreach(wm, key, val) {
            const st_tensor *t = st_find(s, key);
            const char *sh = json_string_value(val);
            if (!t) {
                rc = prism_error(PRISM_E_FORMAT, "%s: tensor %s is listed in shard %s but not found there", index_path,
                                 key, sh);
                break;
            }
            size_t i = 0;
            while (i < n_shards && strcmp(shards[i], sh) != 0) i++;
            if ((size_t)t->file != i) {
                rc = prism_error(PRISM_E_FORMAT, "%s: tensor %s is listed in shard %s but found in %s", index_path, key,
                                 sh, s->files[t->file].path);
                break;
            }
        }
    }
    free(shards);
    json_decref(root);
    return rc;
}

prism_status st_open(const char *path, st_set **out) {
    if (!out) return prism_error(PRISM_E_ARG, "st_open: out is NULL");
    *out = NULL;
    if (!path || !*path) return prism_error(PRISM_E_ARG, "st_open: empty path");
    st_set *s = calloc(1, sizeof *s);
    if (!s) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);

    prism_status rc;
    struct stat st;
    if (stat(path, &st) != 0) {
        rc = prism_error(PRISM_E_IO, "%s: cannot open: %s", path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        char *single = path_join(path, "model.safetensors");
        char *index = path_join(path, "model.safetensors.index.json");
        if (!single || !index) rc = prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
        else if (is_file(single)) {
            rc = open_file(s, single);
            if (!rc) rc = build_index(s);
        } else if (is_file(index)) rc = open_index(s, path, index);
        else rc = prism_error(PRISM_E_IO, "no model.safetensors or model.safetensors.index.json in %s", path);
        free(single);
        free(index);
    } else {
        rc = open_file(s, path);
        if (!rc) rc = build_index(s);
    }
    if (rc) {
        st_close(s);
        return rc;
    }
    *out = s;
    return PRISM_OK;
}

/* ---------------------------------------------------------------- conversion */

prism_status st_read_f32(const st_set *s, const st_tensor *t, float *dst) {
    if (!s || !t || (!dst && t->numel)) return prism_error(PRISM_E_ARG, "st_read_f32: NULL argument");
    const unsigned char *p = t->data; /* may be unaligned: read through memcpy */
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, p, n * 4);
        return PRISM_OK;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = st_bf16_to_f32(h);
        }
        return PRISM_OK;
    case ST_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = st_f16_to_f32(h);
        }
        return PRISM_OK;
    case ST_I32:
        for (size_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            dst[i] = (float)v;
        }
        return PRISM_OK;
    case ST_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            dst[i] = (float)v;
        }
        return PRISM_OK;
    case ST_OTHER: break;
    }
    const char *dts = "?";
    if (t >= s->t && t < s->t + s->n) dts = s->dtype_str[t - s->t];
    return prism_error(PRISM_E_UNSUPPORTED, "%s: tensor %s: dtype %s cannot be converted to F32", st_file_path(s, t),
                       t->name, dts);
}

/* ---------------------------------------------------------------- writer */

static prism_status write_all(FILE *fp, const void *buf, size_t n, const char *tmp) {
    if (n && fwrite(buf, 1, n, fp) != n) return prism_error(PRISM_E_IO, "%s: write failed: %s", tmp, strerror(errno));
    return PRISM_OK;
}

/* Converts src[n] (F32, or int32 for ST_I32) to dt and writes it, in chunks. */
static prism_status write_tensor_data(FILE *fp, const st_write_tensor *w, int64_t numel, const char *tmp) {
    enum { CHUNK = 16384 };
    unsigned char buf[CHUNK * 2];
    const unsigned char *src = w->data;
    size_t n = (size_t)numel;
    if (w->dtype == ST_F32 || w->dtype == ST_I32) return write_all(fp, src, n * 4, tmp);
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        for (size_t k = 0; k < m; k++) {
            float v;
            memcpy(&v, src + 4 * (i + k), 4);
            uint16_t h = w->dtype == ST_BF16 ? st_f32_to_bf16(v) : st_f32_to_f16(v);
            memcpy(buf + 2 * k, &h, 2);
        }
        prism_status rc = write_all(fp, buf, 2 * m, tmp);
        if (rc) return rc;
    }
    return PRISM_OK;
}

/* Builds the header object: "__metadata__" first, then tensors in order with
 * contiguous offsets. *numels receives each tensor's element count. */
static prism_status build_header(const char *path, const st_write_tensor *ts, size_t n, const char *metadata_json,
                                 int64_t *numels, json_t **out) {
    json_t *root = json_object();
    if (!root) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    if (metadata_json) {
        json_error_t jerr;
        json_t *md = json_loads(metadata_json, 0, &jerr);
        if (!json_is_object(md)) {
            json_decref(md);
            json_decref(root);
            return prism_error(PRISM_E_ARG, "%s: metadata is not a JSON object", path);
        }
        const char *k;
        json_t *v;
        json_object_foreach(md, k, v) {
            if (!json_is_string(v)) { /* the Python library only reads str -> str metadata */
                json_decref(md);
                json_decref(root);
                return prism_error(PRISM_E_ARG, "%s: metadata value for %s is not a string", path, k);
            }
        }
        json_object_set_new(root, "__metadata__", md);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const st_write_tensor *w = &ts[i];
        const char *nm = w->name ? w->name : "(null)";
        prism_status rc = PRISM_OK;
        if (!w->name || !*w->name || strcmp(w->name, "__metadata__") == 0)
            rc = prism_error(PRISM_E_ARG, "%s: tensor %zu has an invalid name \"%s\"", path, i, nm);
        else if (json_object_get(root, w->name))
            rc = prism_error(PRISM_E_ARG, "%s: tensor name %s is used twice", path, nm);
        else if (w->dtype != ST_F32 && w->dtype != ST_BF16 && w->dtype != ST_F16 && w->dtype != ST_I32)
            rc = prism_error(PRISM_E_ARG, "%s: tensor %s: cannot write dtype %s", path, nm, st_dtype_name(w->dtype));
        else if (w->ndim < 0 || w->ndim > ST_MAX_DIMS)
            rc = prism_error(PRISM_E_ARG, "%s: tensor %s: ndim %d out of range", path, nm, (int)w->ndim);
        if (rc) {
            json_decref(root);
            return rc;
        }
        json_t *shape = json_array();
        int64_t numel = 1;
        for (int d = 0; d < w->ndim && !rc; d++) {
            int64_t v = w->shape[d];
            if (v < 0 || (v > 0 && numel > INT64_MAX / v / 8))
                rc = prism_error(PRISM_E_ARG, "%s: tensor %s: bad shape[%d] = %lld", path, nm, d, (long long)v);
            else {
                numel *= v;
                json_array_append_new(shape, json_integer(v));
            }
        }
        if (!rc && numel > 0 && !w->data) rc = prism_error(PRISM_E_ARG, "%s: tensor %s: data is NULL", path, nm);
        if (rc) {
            json_decref(shape);
            json_decref(root);
            return rc;
        }
        uint64_t nb = (uint64_t)numel * st_dtype_size(w->dtype);
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(st_dtype_name(w->dtype)));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + nb)));
        json_object_set_new(root, w->name, e);
        numels[i] = numel;
        off += nb;
    }
    *out = root;
    return PRISM_OK;
}

prism_status st_write(const char *path, const st_write_tensor *ts, size_t n, const char *metadata_json) {
    if (!path || !*path) return prism_error(PRISM_E_ARG, "st_write: empty path");
    if (n && !ts) return prism_error(PRISM_E_ARG, "%s: tensor list is NULL", path);
    int64_t *numels = malloc((n ? n : 1) * sizeof *numels);
    if (!numels) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    json_t *root = NULL;
    prism_status rc = build_header(path, ts, n, metadata_json, numels, &root);
    if (rc) {
        free(numels);
        return rc;
    }
    char *hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!hdr) {
        free(numels);
        return prism_error(PRISM_E_NOMEM, "%s: cannot serialise header", path);
    }
    /* Pad with spaces so the data region starts 8-byte aligned (as the
     * Python library does). */
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) {
        free(hdr);
        free(numels);
        return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);

    FILE *fp = fopen(tmp, "wb");
    int created = fp != NULL;
    if (!fp) rc = prism_error(PRISM_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
    if (!rc) rc = write_all(fp, len8, 8, tmp);
    if (!rc) rc = write_all(fp, hdr, hlen, tmp);
    if (!rc) rc = write_all(fp, "       ", padded - hlen, tmp);
    for (size_t i = 0; i < n && !rc; i++) rc = write_tensor_data(fp, &ts[i], numels[i], tmp);
    if (!rc && (fflush(fp) != 0 || fsync(fileno(fp)) != 0))
        rc = prism_error(PRISM_E_IO, "%s: flush failed: %s", tmp, strerror(errno));
    if (created && fclose(fp) != 0 && !rc) rc = prism_error(PRISM_E_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path) != 0)
        rc = prism_error(PRISM_E_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (rc && created) unlink(tmp);
    free(tmp);
    free(hdr);
    free(numels);
    return rc;
}
