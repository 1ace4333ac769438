/* test_safetensors.c — safetensors reader/writer: scalar bf16/f16 conversions
 * against exhaustive and nearest-value checks, write/read round trips in every
 * writable dtype, the llama3 fixture (single file and 8 BF16 shards written by
 * transformers), and malformed files that must fail with the right status and
 * a message naming the file. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "model/safetensors.h"
#include "test.h"
#include "util/error.h"

static char g_tmp[64];

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bitsf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static char *tpath(const char *name) {
    static char buf[4][512];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 512, "%s/%s", g_tmp, name);
    return p;
}

static void write_bytes(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    if (n) fwrite(buf, 1, n, f);
    fclose(f);
}

/* A safetensors file with the given header text (length field = strlen) and
 * data_len zero bytes of data. */
static void write_st(const char *path, const char *header, size_t data_len) {
    size_t hl = strlen(header);
    unsigned char *b = calloc(1, 8 + hl + data_len);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    write_bytes(path, b, 8 + hl + data_len);
    free(b);
}

/* Expects st_open(path) to fail with code and a message containing needle. */
static void expect_open_fail(const char *label, const char *path, prism_status code, const char *needle) {
    st_set *s = (st_set *)1;
    prism_error_clear();
    prism_status rc = st_open(path, &s);
    CHECK(rc == code, "%s: status %d (%s), want %d; msg: %s", label, rc, prism_status_str(rc), code, prism_last_error());
    CHECK(s == NULL, "%s: *out not NULL on failure", label);
    CHECK(strstr(prism_last_error(), needle) != NULL, "%s: message \"%s\" does not name \"%s\"", label,
          prism_last_error(), needle);
    printf("     %-28s -> %s\n", label, prism_last_error());
    if (rc == PRISM_OK) st_close(s);
}

/* ---------------------------------------------------------------- scalar conversions */

static void test_conversions(void) {
    /* bf16: ties to even */
    CHECK(st_f32_to_bf16(1.0f) == 0x3f80, "1.0");
    CHECK(st_f32_to_bf16(1.00390625f) == 0x3f80, "1+2^-8 is a tie -> even 1.0, got %04x", st_f32_to_bf16(1.00390625f));
    CHECK(st_f32_to_bf16(1.01171875f) == 0x3f82, "1+3*2^-8 tie -> even 0x3f82, got %04x", st_f32_to_bf16(1.01171875f));
    CHECK(st_f32_to_bf16(bitsf(0x3f808001)) == 0x3f81, "just above the tie rounds up");
    CHECK(st_f32_to_bf16(-2.0f) == 0xc000, "-2");
    CHECK(st_f32_to_bf16(-0.0f) == 0x8000, "-0");
    CHECK(st_f32_to_bf16(bitsf(0x7f7fffff)) == 0x7f80, "FLT_MAX rounds to inf");
    CHECK(st_f32_to_bf16(bitsf(0x7f800000)) == 0x7f80, "inf");
    uint16_t qn = st_f32_to_bf16(bitsf(0x7f800001)); /* signalling NaN whose payload is only in the low bits */
    CHECK((qn & 0x7f80) == 0x7f80 && (qn & 0x7f), "NaN stays NaN, got %04x", qn);
    CHECK(st_f32_to_bf16(bitsf(0xffc00000)) == 0xffc0, "-qNaN");

    /* every non-NaN bf16 round-trips */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_bf16_to_f32((uint16_t)h);
        uint16_t back = st_f32_to_bf16(f);
        if (f != f) bad += !(back & 0x7f && (back & 0x7f80) == 0x7f80);
        else bad += back != h;
    }
    CHECK(bad == 0, "bf16 round trip: %d mismatches", bad);

    /* f16 decoding of special values */
    CHECK(st_f16_to_f32(0x3c00) == 1.0f, "f16 1.0");
    CHECK(st_f16_to_f32(0x0001) == 0x1p-24f, "smallest subnormal");
    CHECK(st_f16_to_f32(0x03ff) == 0x3ffp-24f, "largest subnormal");
    CHECK(st_f16_to_f32(0x0400) == 0x1p-14f, "smallest normal");
    CHECK(st_f16_to_f32(0x7bff) == 65504.0f, "max");
    CHECK(st_f16_to_f32(0x7c00) == INFINITY && st_f16_to_f32(0xfc00) == -INFINITY, "inf");
    CHECK(isnan(st_f16_to_f32(0x7e00)) && isnan(st_f16_to_f32(0x7c01)), "nan");
    CHECK(fbits(st_f16_to_f32(0x8000)) == 0x80000000u, "-0");
    CHECK(st_f16_to_f32(0x8001) == -0x1p-24f, "negative subnormal");

    /* f16 encoding: ties to even in the normal and subnormal ranges, overflow */
    CHECK(st_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "1+2^-11 tie -> 1.0");
    CHECK(st_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "1+3*2^-11 tie -> 0x3c02");
    CHECK(st_f32_to_f16(0x1p-25f) == 0x0000, "2^-25 tie -> 0");
    CHECK(st_f32_to_f16(bitsf(0x33000001)) == 0x0001, "just above 2^-25 -> smallest subnormal");
    CHECK(st_f32_to_f16(3 * 0x1p-25f) == 0x0002, "1.5 * 2^-24 tie -> 2 * 2^-24");
    CHECK(st_f32_to_f16(5 * 0x1p-25f) == 0x0002, "2.5 * 2^-24 tie -> 2 * 2^-24");
    CHECK(st_f32_to_f16(0x3ffp-24f + 0x1p-25f) == 0x0400, "largest subnormal + half ulp carries into the min normal");
    CHECK(st_f32_to_f16(1e-10f) == 0 && st_f32_to_f16(-1e-10f) == 0x8000, "underflow keeps sign");
    CHECK(st_f32_to_f16(65504.0f) == 0x7bff, "max");
    CHECK(st_f32_to_f16(65519.0f) == 0x7bff, "65519 -> max");
    CHECK(st_f32_to_f16(65520.0f) == 0x7c00, "65520 tie -> inf");
    CHECK(st_f32_to_f16(1e9f) == 0x7c00 && st_f32_to_f16(-INFINITY) == 0xfc00, "overflow / -inf");
    uint16_t hn = st_f32_to_f16(bitsf(0x7f800001));
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff), "f16 NaN stays NaN, got %04x", hn);

    /* every non-NaN f16 round-trips */
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        uint16_t back = st_f32_to_f16(f);
        if (f != f) bad += !((back & 0x7c00) == 0x7c00 && (back & 0x3ff));
        else bad += back != h;
    }
    CHECK(bad == 0, "f16 round trip: %d mismatches", bad);

    /* Nearest-value property over a sweep of positive floats up to 65504: the
     * chosen f16 is at least as close as both neighbours, and even on a tie. */
    bad = 0;
    for (uint32_t x = 1; x < 0x477fe000u; x += 997) {
        float f = bitsf(x);
        uint16_t h = st_f32_to_f16(f);
        double d = fabs((double)st_f16_to_f32(h) - f);
        double dlo = h > 0 ? fabs((double)st_f16_to_f32((uint16_t)(h - 1)) - f) : INFINITY;
        double dhi = h < 0x7bff ? fabs((double)st_f16_to_f32((uint16_t)(h + 1)) - f) : INFINITY;
        if (d > dlo || d > dhi || ((d == dlo || d == dhi) && (h & 1))) bad++;
    }
    CHECK(bad == 0, "f16 nearest-even sweep: %d bad", bad);
    printf("ok   conversions (bf16/f16 exhaustive round trips, nearest-even sweep)\n");
}

/* ---------------------------------------------------------------- round trip */

static void test_round_trip(void) {
    const float f32v[6] = {1.0f, -2.5f, 3.14159265f, 1e-40f /* subnormal */, -0.0f, 123456.789f};
    const float bf16v[8] = {1.0f, 1.00390625f, 1.01171875f, -0.0f, INFINITY, NAN, 3.14159265f, 0.15625f};
    const float f16v[6] = {65504.0f, 0x1p-24f, 1.0f / 3.0f, 65520.0f, 1e-8f, -0.5f};
    const int32_t i32v[5] = {0, -1, 2147483647, -2147483647 - 1, 16777217};
    const float scalar = 42.0f;
    st_write_tensor w[] = {
        {"a.f32", ST_F32, 2, {2, 3}, f32v},
        {"b.bf16", ST_BF16, 3, {2, 2, 2}, bf16v},
        {"c.f16", ST_F16, 1, {6}, f16v},
        {"d.i32", ST_I32, 1, {5}, i32v},
        {"e.scalar", ST_F32, 0, {0}, &scalar},
        {"f.empty", ST_BF16, 2, {0, 4}, NULL},
    };
    const char *path = tpath("rt.safetensors");
    prism_status rc = st_write(path, w, 6, "{\"format\": \"pt\", \"note\": \"prism\"}");
    CHECK(rc == PRISM_OK, "st_write: %s", prism_last_error());
    CHECK(access(tpath("rt.safetensors.tmp"), F_OK) != 0, "temporary file left behind");

    /* header length is a multiple of 8 and the header is space-padded JSON */
    FILE *fp = fopen(path, "rb");
    unsigned char hb[8] = {0};
    CHECK(fp && fread(hb, 1, 8, fp) == 8, "read header length");
    if (fp) fclose(fp);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | hb[i];
    CHECK(hl % 8 == 0, "header length %llu not 8-aligned", (unsigned long long)hl);

    st_set *s = NULL;
    rc = st_open(path, &s);
    CHECK(rc == PRISM_OK, "st_open round trip: %s", prism_last_error());
    if (rc) return;
    CHECK(st_count(s) == 6, "count %zu", st_count(s));
    for (size_t i = 0; i < 6; i++) CHECK(strcmp(st_at(s, i)->name, w[i].name) == 0, "order: %zu is %s", i, st_at(s, i)->name);
    CHECK(strcmp(st_file_path(s, st_at(s, 0)), path) == 0, "file path");
    CHECK(st_find(s, "missing") == NULL, "st_find of an absent name");

    float out[8];
    const st_tensor *t = st_find(s, "a.f32");
    CHECK(t && t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->numel == 6 &&
              t->nbytes == 24,
          "a.f32 meta");
    if (t && st_read_f32(s, t, out) == PRISM_OK) CHECK(memcmp(out, f32v, sizeof f32v) == 0, "a.f32 bit-exact");

    t = st_find(s, "b.bf16");
    CHECK(t && t->dtype == ST_BF16 && t->ndim == 3 && t->numel == 8 && t->nbytes == 16, "b.bf16 meta");
    if (t && st_read_f32(s, t, out) == PRISM_OK) {
        const float want[8] = {1.0f, 1.0f, 1.015625f, -0.0f, INFINITY, NAN, 3.140625f, 0.15625f};
        for (int i = 0; i < 8; i++) {
            if (isnan(want[i])) CHECK(isnan(out[i]), "bf16[%d] NaN", i);
            else CHECK(fbits(out[i]) == fbits(want[i]), "bf16[%d] = %.9g want %.9g", i, out[i], want[i]);
        }
        uint16_t raw[8];
        memcpy(raw, t->data, 16);
        for (int i = 0; i < 8; i++)
            CHECK(raw[i] == st_f32_to_bf16(bf16v[i]), "bf16 raw[%d] %04x", i, raw[i]);
    }

    t = st_find(s, "c.f16");
    CHECK(t && t->dtype == ST_F16 && t->numel == 6 && t->nbytes == 12, "c.f16 meta");
    if (t && st_read_f32(s, t, out) == PRISM_OK) {
        const float want[6] = {65504.0f, 0x1p-24f, 0x1.554p-2f /* 0x3555 */, INFINITY, 0.0f, -0.5f};
        for (int i = 0; i < 6; i++) CHECK(fbits(out[i]) == fbits(want[i]), "f16[%d] = %a want %a", i, out[i], want[i]);
    }

    t = st_find(s, "d.i32");
    CHECK(t && t->dtype == ST_I32 && t->nbytes == 20, "d.i32 meta");
    if (t) {
        int32_t raw[5];
        memcpy(raw, t->data, 20);
        CHECK(memcmp(raw, i32v, 20) == 0, "i32 raw bit-exact");
        if (st_read_f32(s, t, out) == PRISM_OK)
            for (int i = 0; i < 5; i++) CHECK(out[i] == (float)i32v[i], "i32[%d] as float %g", i, out[i]);
    }

    t = st_find(s, "e.scalar");
    CHECK(t && t->ndim == 0 && t->numel == 1 && t->nbytes == 4, "scalar meta");
    if (t && st_read_f32(s, t, out) == PRISM_OK) CHECK(out[0] == 42.0f, "scalar value");
    t = st_find(s, "f.empty");
    CHECK(t && t->ndim == 2 && t->numel == 0 && t->nbytes == 0, "empty meta");
    if (t) CHECK(st_read_f32(s, t, out) == PRISM_OK, "empty read");
    st_close(s);

    /* writer argument errors name the path */
    st_write_tensor dup[2] = {{"x", ST_F32, 1, {1}, &scalar}, {"x", ST_F32, 1, {1}, &scalar}};
    rc = st_write(tpath("dup.safetensors"), dup, 2, NULL);
    CHECK(rc == PRISM_E_ARG && strstr(prism_last_error(), "dup.safetensors"), "duplicate names: %d %s", rc,
          prism_last_error());
    CHECK(access(tpath("dup.safetensors"), F_OK) != 0, "nothing written on error");
    st_write_tensor i64[1] = {{"x", ST_I64, 1, {1}, &scalar}};
    rc = st_write(tpath("i64.safetensors"), i64, 1, NULL);
    CHECK(rc == PRISM_E_ARG, "unwritable dtype: %d", rc);
    rc = st_write(tpath("md.safetensors"), w, 1, "[1]");
    CHECK(rc == PRISM_E_ARG, "metadata not an object: %d", rc);
    rc = st_write("/nonexistent-dir/x.safetensors", w, 1, NULL);
    CHECK(rc == PRISM_E_IO && strstr(prism_last_error(), "/nonexistent-dir/x.safetensors"), "unwritable path: %s",
          prism_last_error());
    printf("ok   round trip F32/BF16/F16/I32/scalar/empty\n");
}

/* ---------------------------------------------------------------- fixtures */

static void test_fixture(void) {
    char sdir[512], shard_dir[512], single[600], index[600];
    snprintf(sdir, sizeof sdir, "%s/llama3/model", fixtures_root());
    snprintf(single, sizeof single, "%s/model.safetensors", sdir);
    snprintf(shard_dir, sizeof shard_dir, "%s/llama3/model-bf16-sharded", fixtures_root());
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", shard_dir);

    st_set *f = NULL, *d = NULL, *sh = NULL;
    prism_status rc = st_open(single, &f);
    CHECK(rc == PRISM_OK, "open %s: %s", single, prism_last_error());
    rc = st_open(sdir, &d);
    CHECK(rc == PRISM_OK, "open dir %s: %s", sdir, prism_last_error());
    rc = st_open(shard_dir, &sh);
    CHECK(rc == PRISM_OK, "open sharded %s: %s", shard_dir, prism_last_error());
    if (!f || !d || !sh) goto done;

    /* 3-layer Llama: embed, lm_head, final norm + 9 tensors per layer */
    CHECK(st_count(f) == 30 && st_count(d) == 30, "tensor count %zu / %zu, want 30", st_count(f), st_count(d));
    const st_tensor *lm = st_find(f, "lm_head.weight"); /* [vocab=384, hidden=96] */
    CHECK(lm && lm->dtype == ST_F32 && lm->ndim == 2 && lm->shape[0] == 384 && lm->shape[1] == 96, "lm_head meta");
    CHECK(st_find(f, "model.layers.2.self_attn.q_proj.weight") != NULL, "last layer q_proj present");
    CHECK(st_find(f, "model.layers.3.self_attn.q_proj.weight") == NULL, "no layer 3");

    json_error_t jerr;
    json_t *idx = json_load_file(index, 0, &jerr);
    json_t *wm = json_object_get(idx, "weight_map");
    CHECK(json_is_object(wm), "fixture index parses");
    CHECK(st_count(sh) == json_object_size(wm), "sharded count %zu, weight_map %zu", st_count(sh), json_object_size(wm));
    const char *name;
    json_t *v;
    int wrong_file = 0, mismatched = 0;
    size_t compared = 0;
    json_object_foreach(wm, name, v) {
        const st_tensor *t = st_find(sh, name);
        if (!t) { wrong_file++; continue; }
        const char *fp = st_file_path(sh, t), *want = json_string_value(v);
        size_t lf = strlen(fp), lw = strlen(want);
        if (lf < lw || strcmp(fp + lf - lw, want) != 0) wrong_file++;
    }
    CHECK(wrong_file == 0, "%d tensors not in the shard the index names", wrong_file);
    /* every BF16 shard tensor equals the F32 checkpoint rounded to nearest even */
    for (size_t i = 0; i < st_count(sh); i++) {
        const st_tensor *b = st_at(sh, i), *r = st_find(f, b->name);
        if (!r || b->dtype != ST_BF16 || r->numel != b->numel || b->ndim != r->ndim) { mismatched++; continue; }
        float *ref = malloc((size_t)r->numel * 4), *got = malloc((size_t)b->numel * 4);
        st_read_f32(f, r, ref);
        st_read_f32(sh, b, got);
        for (int64_t k = 0; k < r->numel; k++)
            if (fbits(got[k]) != fbits(st_bf16_to_f32(st_f32_to_bf16(ref[k])))) { mismatched++; break; }
        compared += (size_t)r->numel;
        free(ref);
        free(got);
    }
    CHECK(mismatched == 0, "%d BF16 shard tensors differ from rounded F32", mismatched);
    printf("ok   fixture: %zu tensors, %zu BF16 values equal rounded F32\n", st_count(sh), compared);
    json_decref(idx);
done:
    st_close(f);
    st_close(d);
    st_close(sh);
}

/* ---------------------------------------------------------------- bad inputs */

static void test_bad_inputs(void) {
    char *p;

    p = tpath("nope.safetensors");
    expect_open_fail("missing file", p, PRISM_E_IO, p);
    write_bytes(p = tpath("empty.safetensors"), "", 0);
    expect_open_fail("empty file", p, PRISM_E_FORMAT, p);
    write_bytes(p = tpath("five.safetensors"), "\x02\0\0\0\0", 5);
    expect_open_fail("5-byte file", p, PRISM_E_FORMAT, p);
    {
        unsigned char b[16] = {0xff, 0x10}; /* header length 4351 > 8 remaining bytes */
        memcpy(b + 8, "{}      ", 8);
        write_bytes(p = tpath("longhdr.safetensors"), b, 16);
        expect_open_fail("header length > file", p, PRISM_E_FORMAT, p);
        unsigned char h[8] = {0, 0, 0, 0, 0, 0, 0, 0x80}; /* 2^63 */
        write_bytes(p = tpath("hugehdr.safetensors"), h, 8);
        expect_open_fail("header length 2^63", p, PRISM_E_FORMAT, p);
    }
    write_st(p = tpath("notjson.safetensors"), "{\"a\": {\"dtype\": ", 16);
    expect_open_fail("header not JSON", p, PRISM_E_FORMAT, p);
    write_st(p = tpath("array.safetensors"), "[1, 2, 3]", 16);
    expect_open_fail("header JSON not an object", p, PRISM_E_FORMAT, p);
    write_st(p = tpath("past.safetensors"),
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [1024], \"data_offsets\": [0, 4096]}}", 2048);
    expect_open_fail("data_offsets past the end", p, PRISM_E_FORMAT, "exceed data region of 2048 bytes");
    expect_open_fail("data_offsets past the end", p, PRISM_E_FORMAT, p);
    write_st(p = tpath("size.safetensors"),
             "{\"w\": {\"dtype\": \"BF16\", \"shape\": [4, 4], \"data_offsets\": [0, 64]}}", 64);
    expect_open_fail("offsets != shape x dtype", p, PRISM_E_FORMAT, p);
    write_st(p = tpath("neg.safetensors"),
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1, 4], \"data_offsets\": [0, 16]}}", 16);
    expect_open_fail("negative shape", p, PRISM_E_FORMAT, p);
    write_st(p = tpath("rev.safetensors"),
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 4]}}", 16);
    expect_open_fail("begin > end", p, PRISM_E_FORMAT, p);
    write_st(p = tpath("ovf.safetensors"),
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 0]}}", 16);
    expect_open_fail("numel overflow", p, PRISM_E_FORMAT, p);
    write_st(p = tpath("nodtype.safetensors"), "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4);
    expect_open_fail("missing dtype", p, PRISM_E_FORMAT, p);
    write_st(p = tpath("dupkey.safetensors"),
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
             " \"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
             4);
    expect_open_fail("duplicate key", p, PRISM_E_FORMAT, p);

    /* dtypes prism cannot convert are listed, with validated offsets, but not read */
    p = tpath("f64.safetensors");
    write_st(p, "{\"__metadata__\": {\"format\": \"pt\"}, \"d\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 16]},"
                " \"q\": {\"dtype\": \"Q4_X\", \"shape\": [3], \"data_offsets\": [16, 18]}}",
             18);
    st_set *s = NULL;
    prism_status rc = st_open(p, &s);
    CHECK(rc == PRISM_OK, "F64 file opens: %s", prism_last_error());
    if (s) {
        CHECK(st_count(s) == 2, "F64 file count %zu (metadata skipped)", st_count(s));
        const st_tensor *t = st_find(s, "d");
        CHECK(t && t->dtype == ST_OTHER && t->nbytes == 16, "F64 listed as ST_OTHER");
        float out[3];
        prism_error_clear();
        rc = t ? st_read_f32(s, t, out) : PRISM_OK;
        CHECK(rc == PRISM_E_UNSUPPORTED && strstr(prism_last_error(), p) && strstr(prism_last_error(), "F64"),
              "F64 read: %d %s", rc, prism_last_error());
        printf("     %-28s -> %s\n", "F64 via st_read_f32", prism_last_error());
        t = st_find(s, "q");
        rc = t ? st_read_f32(s, t, out) : PRISM_OK;
        CHECK(rc == PRISM_E_UNSUPPORTED && strstr(prism_last_error(), "Q4_X"), "unknown dtype read: %d %s", rc,
              prism_last_error());
        st_close(s);
    }
    write_st(p = tpath("f64bad.safetensors"),
             "{\"d\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 16);
    expect_open_fail("F64 with wrong size", p, PRISM_E_FORMAT, p);

    /* a valid file cut in half */
    {
        static float big[4096];
        for (int i = 0; i < 4096; i++) big[i] = (float)i;
        st_write_tensor w[2] = {{"a", ST_F32, 2, {64, 32}, big}, {"b", ST_BF16, 1, {2048}, big + 2048}};
        const char *full = tpath("full.safetensors");
        CHECK(st_write(full, w, 2, NULL) == PRISM_OK, "write full: %s", prism_last_error());
        FILE *fp = fopen(full, "rb");
        static unsigned char buf[1 << 16];
        size_t n = fp ? fread(buf, 1, sizeof buf, fp) : 0;
        if (fp) fclose(fp);
        write_bytes(p = tpath("half.safetensors"), buf, n / 2);
        expect_open_fail("truncated file", p, PRISM_E_FORMAT, p);
    }

    /* sharded directories */
    char d[512];
    snprintf(d, sizeof d, "%s/sh_missing", g_tmp);
    mkdir(d, 0700);
    {
        float x = 1.0f;
        st_write_tensor w1[1] = {{"w1", ST_F32, 1, {1}, &x}};
        char s1[600], ix[600];
        snprintf(s1, sizeof s1, "%s/model-00001-of-00002.safetensors", d);
        CHECK(st_write(s1, w1, 1, NULL) == PRISM_OK, "write shard 1");
        snprintf(ix, sizeof ix, "%s/model.safetensors.index.json", d);
        const char *j = "{\"metadata\": {}, \"weight_map\": {\"w1\": \"model-00001-of-00002.safetensors\","
                        " \"w2\": \"model-00002-of-00002.safetensors\"}}";
        write_bytes(ix, j, strlen(j));
        expect_open_fail("index names a missing shard", d, PRISM_E_IO, "model-00002-of-00002.safetensors");
        expect_open_fail("index names a missing shard", d, PRISM_E_IO, ix);

        /* both shards present, but w2 is not where the index says */
        char s2[600];
        snprintf(s2, sizeof s2, "%s/model-00002-of-00002.safetensors", d);
        st_write_tensor w3[1] = {{"w3", ST_F32, 1, {1}, &x}};
        CHECK(st_write(s2, w3, 1, NULL) == PRISM_OK, "write shard 2");
        expect_open_fail("tensor absent from its shard", d, PRISM_E_FORMAT, "w2");

        /* the same tensor in two shards */
        CHECK(st_write(s2, w1, 1, NULL) == PRISM_OK, "rewrite shard 2");
        expect_open_fail("tensor in two shards", d, PRISM_E_FORMAT, "model-00002-of-00002.safetensors");

        /* a correct two-shard checkpoint opens */
        st_write_tensor w2[1] = {{"w2", ST_F32, 1, {1}, &x}};
        CHECK(st_write(s2, w2, 1, NULL) == PRISM_OK, "rewrite shard 2");
        st_set *ok = NULL;
        CHECK(st_open(d, &ok) == PRISM_OK && st_count(ok) == 2, "valid 2-shard dir: %s", prism_last_error());
        st_close(ok);

        write_bytes(ix, "{\"weight_map\": ", 15);
        expect_open_fail("index.json malformed", d, PRISM_E_FORMAT, ix);
        write_bytes(ix, "{\"metadata\": {}}", 16);
        expect_open_fail("index.json without weight_map", d, PRISM_E_FORMAT, ix);
        unlink(s1);
        unlink(s2);
        unlink(ix);
    }
    expect_open_fail("dir with neither file", d, PRISM_E_IO, d);
    rmdir(d);
}

int main(void) {
    strcpy(g_tmp, "/tmp/prism_st_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 2;
    }
    test_conversions();
    test_round_trip();
    test_fixture();
    test_bad_inputs();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    TEST_MAIN_END();
}
