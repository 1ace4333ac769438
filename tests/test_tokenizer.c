/* test_tokenizer.c — prism's tokenizer against Hugging Face tokenizers (Rust).
 * Expected ids and texts come from scripts/tokenizer-fixtures/generate.js,
 * which runs the HF library (Node binding) over tests/data/tokenizer/corpus.jsonl
 * for Qwen3, Llama-3, stories260K and two synthetic Metaspace variants. For each
 * text: encode with and without special tokens, decode with and without
 * skip_special, and the streaming decoder (chunks must be whole UTF-8 and join
 * to the full decode). Also: error reporting and encode speed. */
#include "prism.h"
#include "test.h"

#include <jansson.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

/* The Qwen3 and Llama-3 tokenizer.json files are stored gzip-compressed
 * (11 and 9 MB raw); each is unpacked with its tokenizer_config.json into a
 * temporary directory that the tests load like a model directory. */
static char g_tmp[64], g_qwen3[128], g_llama3[128];

static int unpack(const char *name, char *dir, size_t cap) {
    char cmd[1024];
    snprintf(dir, cap, "%s/%s", g_tmp, name);
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s && cp tests/data/tokenizer/%s/tokenizer_config.json %s/ && "
             "gzip -dc tests/data/tokenizer/%s/tokenizer.json.gz > %s/tokenizer.json",
             dir, name, dir, name, dir);
    return system(cmd) == 0;
}


static long g_ids_compared, g_texts_compared, g_decodes_compared, g_decodes_nul;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static bool valid_utf8(const char *s) {
    const unsigned char *u = (const unsigned char *)s;
    while (*u) {
        int n = *u < 0x80 ? 0 : (*u & 0xE0) == 0xC0 ? 1 : (*u & 0xF0) == 0xE0 ? 2 : (*u & 0xF8) == 0xF0 ? 3 : -1;
        if (n < 0) return false;
        u++;
        for (int i = 0; i < n; i++, u++)
            if ((*u & 0xC0) != 0x80) return false;
    }
    return true;
}

/* Compares ids with a JSON array; prints the first difference. */
static int ids_equal(const char *label, const int32_t *got, size_t n, const json_t *want) {
    size_t wn = json_array_size(want), first = (size_t)-1;
    for (size_t i = 0; i < n && i < wn; i++)
        if (got[i] != (int32_t)json_integer_value(json_array_get(want, i))) { first = i; break; }
    if (first == (size_t)-1 && n == wn) return 1;
    if (first == (size_t)-1) first = n < wn ? n : wn;
    fprintf(stderr, "  %s: %zu ids, want %zu; first difference at %zu: got", label, n, wn, first);
    for (size_t i = first; i < n && i < first + 6; i++) fprintf(stderr, " %d", got[i]);
    fprintf(stderr, " want");
    for (size_t i = first; i < wn && i < first + 6; i++) fprintf(stderr, " %d", (int)json_integer_value(json_array_get(want, i)));
    fputc('\n', stderr);
    return 0;
}

/* Full decode and streaming decode of ids against want. */
static void check_decode(const prism_tokenizer *t, const char *name, size_t line, const int32_t *ids, size_t n, bool skip,
                         const char *want) {
    char *text = NULL;
    prism_status st = prism_detokenize(t, ids, n, skip, &text);
    CHECK(st == PRISM_OK && text && strcmp(text, want) == 0, "%s line %zu: decode(skip=%d) = \"%s\", want \"%s\"", name, line,
          skip, text ? text : "(null)", want);
    g_decodes_compared++;
    prism_decoder *d = prism_decoder_new(t, skip);
    size_t cap = strlen(want) + 64, len = 0;
    char *cat = malloc(cap);
    cat[0] = 0;
    bool chunks_ok = true;
    for (size_t i = 0; i <= n; i++) {
        const char *piece = i < n ? prism_decoder_push(d, ids[i]) : prism_decoder_flush(d);
        if (!piece) { chunks_ok = false; break; }
        if (!valid_utf8(piece)) chunks_ok = false;
        size_t pl = strlen(piece);
        if (len + pl + 1 > cap) cat = realloc(cat, cap = 2 * (len + pl + 1));
        memcpy(cat + len, piece, pl + 1);
        len += pl;
    }
    CHECK(chunks_ok, "%s line %zu: streaming decoder returned NULL or a chunk that is not whole UTF-8", name, line);
    CHECK(strcmp(cat, text ? text : "") == 0, "%s line %zu: streaming (skip=%d) gave \"%s\", full decode \"%s\"", name, line,
          skip, cat, text ? text : "");
    prism_decoder_free(d);
    free(cat);
    free(text);
}

static json_t **read_jsonl(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    *n = 0;
    if (!f) return NULL;
    json_t **v = NULL;
    size_t cap = 0;
    json_error_t e;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t r;
    while ((r = getline(&line, &lcap, f)) > 0) {
        if (r <= 1) continue;
        json_t *j = json_loadb(line, (size_t)r, JSON_ALLOW_NUL, &e);
        if (!j) { fprintf(stderr, "%s: %s\n", path, e.text); continue; }
        if (*n == cap) v = realloc(v, (cap = cap ? 2 * cap : 256) * sizeof *v);
        v[(*n)++] = j;
    }
    free(line);
    fclose(f);
    return v;
}

static void free_jsonl(json_t **v, size_t n) {
    for (size_t i = 0; i < n; i++) json_decref(v[i]);
    free(v);
}

static prism_tokenizer *load(const char *dir) {
    prism_tokenizer *t = NULL;
    double t0 = now_s();
    prism_status st = prism_tokenizer_load(dir, &t);
    CHECK(st == PRISM_OK, "load %s: %s", dir, prism_last_error());
    if (t) printf("loaded %-40s in %6.1f ms, n_vocab %d, bos %d, eos %d\n", dir, 1e3 * (now_s() - t0),
                  prism_tokenizer_n_vocab(t), prism_tokenizer_bos(t), prism_tokenizer_eos(t));
    return t;
}

static void parity(const char *name, const char *dir, json_t **corpus, size_t n_corpus) {
    prism_tokenizer *t = load(dir);
    if (!t) return;
    char path[256];
    snprintf(path, sizeof path, "tests/data/tokenizer/expected_%s.jsonl", name);
    size_t n;
    json_t **exp = read_jsonl(path, &n);
    CHECK(exp && n > n_corpus, "%s: cannot read %s", name, path);
    int mismatched = 0;
    long ids_before = g_ids_compared;
    for (size_t k = 0; k < n; k++) {
        const json_t *e = exp[k];
        const json_t *rand_ids = json_object_get(e, "rand_ids");
        const json_t *jd = json_object_get(e, "decode"), *jds = json_object_get(e, "decode_skip");
        const char *dec = json_string_value(jd), *dec_skip = json_string_value(jds);
        /* the C API returns NUL-terminated text: texts holding U+0000 cannot be compared */
        bool has_nul = strlen(dec) != json_string_length(jd) || strlen(dec_skip) != json_string_length(jds);
        if (has_nul) g_decodes_nul++;
        if (rand_ids) {
            size_t m = json_array_size(rand_ids);
            int32_t *ids = malloc((m + 1) * sizeof *ids);
            for (size_t i = 0; i < m; i++) ids[i] = (int32_t)json_integer_value(json_array_get(rand_ids, i));
            if (!has_nul) {
                check_decode(t, name, k + 1, ids, m, false, dec);
                check_decode(t, name, k + 1, ids, m, true, dec_skip);
            }
            free(ids);
            continue;
        }
        size_t ci = (size_t)json_integer_value(json_object_get(e, "i"));
        CHECK(ci < n_corpus, "%s line %zu: corpus index %zu out of range", name, k + 1, ci);
        if (ci >= n_corpus) continue;
        const json_t *jt = json_object_get(corpus[ci], "text");
        const char *text = json_string_value(jt);
        size_t tl = json_string_length(jt);
        for (int special = 0; special < 2; special++) {
            int32_t *ids = NULL;
            size_t nid = 0;
            prism_status st = prism_tokenize(t, text, tl, special, &ids, &nid);
            char label[64];
            snprintf(label, sizeof label, "%s text %zu%s", name, ci, special ? " +special" : "");
            const json_t *want = json_object_get(e, special ? "ids_special" : "ids");
            int ok = st == PRISM_OK && ids_equal(label, ids, nid, want);
            if (!ok && mismatched++ < 8) fprintf(stderr, "  text: \"%.200s\"\n", text);
            CHECK(ok, "%s (status %d %s)", label, st, prism_last_error());
            g_ids_compared += (long)json_array_size(want);
            g_texts_compared++;
            if (special && st == PRISM_OK && !has_nul) {
                check_decode(t, name, k + 1, ids, nid, false, dec);
                check_decode(t, name, k + 1, ids, nid, true, dec_skip);
            }
            free(ids);
        }
    }
    printf("%-22s %zu texts x 2, %ld ids compared, %d texts differ\n", name, n_corpus, g_ids_compared - ids_before, mismatched);
    free_jsonl(exp, n);
    prism_tokenizer_free(t);
}

static void check_accessors(void) {
    prism_tokenizer *q = NULL, *l = NULL, *s = NULL;
    if (prism_tokenizer_load(g_qwen3, &q) == PRISM_OK) {
        CHECK(prism_tokenizer_n_vocab(q) == 151669, "qwen3 n_vocab %d", prism_tokenizer_n_vocab(q));
        CHECK(prism_tokenizer_bos(q) == -1, "qwen3 bos %d", prism_tokenizer_bos(q));
        CHECK(prism_tokenizer_eos(q) == 151645, "qwen3 eos %d (<|im_end|>)", prism_tokenizer_eos(q));
        CHECK(prism_tokenizer_token_id(q, "<|im_start|>") == 151644, "qwen3 <|im_start|>");
        CHECK(prism_tokenizer_token_id(q, "hello") == 14990, "qwen3 hello = %d", prism_tokenizer_token_id(q, "hello"));
        CHECK(prism_tokenizer_token_id(q, "no-such-token-xyz") == -1, "qwen3 absent token");
        CHECK(prism_tokenizer_is_special(q, 151645) && !prism_tokenizer_is_special(q, 14990), "qwen3 is_special");
    }
    if (prism_tokenizer_load(g_llama3, &l) == PRISM_OK) {
        CHECK(prism_tokenizer_bos(l) == 128000 && prism_tokenizer_eos(l) == 128001, "llama3 bos %d eos %d",
              prism_tokenizer_bos(l), prism_tokenizer_eos(l));
        CHECK(prism_tokenizer_n_vocab(l) == 128256, "llama3 n_vocab %d", prism_tokenizer_n_vocab(l));
    }
    if (prism_tokenizer_load("models/stories260K", &s) == PRISM_OK) {
        CHECK(prism_tokenizer_bos(s) == 1 && prism_tokenizer_eos(s) == 2, "stories bos %d eos %d", prism_tokenizer_bos(s),
              prism_tokenizer_eos(s));
        CHECK(prism_tokenizer_n_vocab(s) == 512, "stories n_vocab %d", prism_tokenizer_n_vocab(s));
        CHECK(prism_tokenizer_token_id(s, "<0x0A>") == 13, "stories <0x0A>");
    }
    /* invalid UTF-8 input is refused, not guessed at */
    int32_t *ids = NULL;
    size_t n = 0;
    if (q) CHECK(prism_tokenize(q, "a\xff", 2, false, &ids, &n) == PRISM_E_ARG, "invalid UTF-8 must give PRISM_E_ARG");
    free(ids);
    prism_tokenizer_free(q);
    prism_tokenizer_free(l);
    prism_tokenizer_free(s);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f) { fputs(text, f); fclose(f); }
}

static void check_errors(void) {
    prism_tokenizer *t = NULL;
    prism_status st = prism_tokenizer_load("tests/data/tokenizer/no-such-dir", &t);
    CHECK(st == PRISM_E_IO && t == NULL && strstr(prism_last_error(), "no-such-dir/tokenizer.json"),
          "missing dir: status %d, message \"%s\"", st, prism_last_error());

    char dir[] = "/tmp/prism_tok_XXXXXX", path[64];
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_file(path, "{\n  \"model\": {\n    \"type\": \"BPE\",\n    \"vocab\": {\"a\": 0,,}\n  }\n}\n");
    st = prism_tokenizer_load(dir, &t);
    CHECK(st == PRISM_E_FORMAT && strstr(prism_last_error(), "tokenizer.json:4:"), "malformed JSON: status %d, \"%s\"", st,
          prism_last_error());
    printf("malformed:   %s\n", prism_last_error());

    const char *types[] = {"WordPiece", "Unigram", "WordLevel"};
    for (int i = 0; i < 3; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"model\": {\"type\": \"%s\", \"vocab\": {\"a\": 0}}}", types[i]);
        write_file(path, json);
        st = prism_tokenizer_load(dir, &t);
        CHECK(st == PRISM_E_UNSUPPORTED && strstr(prism_last_error(), types[i]), "%s: status %d, \"%s\"", types[i], st,
              prism_last_error());
    }
    printf("unsupported: %s\n", prism_last_error());
    write_file(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                     " \"normalizer\": {\"type\": \"Precompiled\"}}");
    st = prism_tokenizer_load(dir, &t);
    CHECK(st == PRISM_E_UNSUPPORTED && strstr(prism_last_error(), "Precompiled"), "Precompiled normalizer: %d \"%s\"", st,
          prism_last_error());
    write_file(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}");
    st = prism_tokenizer_load(dir, &t);
    CHECK(st == PRISM_E_FORMAT && strstr(prism_last_error(), "merges[0]"), "bad merge: %d \"%s\"", st, prism_last_error());
    remove(path);
    rmdir(dir);
}

static void check_speed(json_t **corpus, size_t n_corpus) {
    prism_tokenizer *t = NULL;
    if (prism_tokenizer_load(g_qwen3, &t) != PRISM_OK) return;
    size_t cap = 1 << 20, len = 0;
    char *big = malloc(cap + 1);
    while (len < cap) /* ~1 MB of the corpus texts, repeated */
        for (size_t i = 0; i < n_corpus && len < cap; i++) {
            const json_t *jt = json_object_get(corpus[i], "text");
            size_t l = json_string_length(jt);
            if (len + l > cap || memchr(json_string_value(jt), 0, l)) continue;
            memcpy(big + len, json_string_value(jt), l);
            len += l;
        }
    if (len == 0) { free(big); prism_tokenizer_free(t); return; }
    int32_t *ids = NULL;
    size_t n = 0;
    double t0 = now_s();
    prism_status st = prism_tokenize(t, big, len, false, &ids, &n);
    double dt = now_s() - t0;
    CHECK(st == PRISM_OK, "encode 1 MB: %s", prism_last_error());
    printf("qwen3 encode: %.2f MB in %.3f s = %.1f MB/s (%zu ids)\n", len / 1e6, dt, len / 1e6 / dt, n);
    CHECK(len / 1e6 / dt > 1.0, "encode speed %.2f MB/s, want > 1 MB/s", len / 1e6 / dt);
    free(ids);
    free(big);
    prism_tokenizer_free(t);
}

int main(void) {
    strcpy(g_tmp, "/tmp/prism-tok-XXXXXX");
    CHECK(mkdtemp(g_tmp) != NULL, "temporary directory");
    CHECK(unpack("qwen3", g_qwen3, sizeof g_qwen3), "unpack tests/data/tokenizer/qwen3/tokenizer.json.gz");
    CHECK(unpack("llama3", g_llama3, sizeof g_llama3), "unpack tests/data/tokenizer/llama3/tokenizer.json.gz");
    size_t n_corpus;
    json_t **corpus = read_jsonl("tests/data/tokenizer/corpus.jsonl", &n_corpus);
    CHECK(corpus && n_corpus >= 200, "corpus: %zu texts (run from the repo root)", n_corpus);
    if (!corpus) TEST_MAIN_END();
    parity("qwen3", g_qwen3, corpus, n_corpus);
    parity("llama3", g_llama3, corpus, n_corpus);
    parity("stories260K", "models/stories260K", corpus, n_corpus);
    parity("stories260K_metaspace", "tests/data/tokenizer/stories260K_metaspace", corpus, n_corpus);
    parity("stories260K_split", "tests/data/tokenizer/stories260K_split", corpus, n_corpus);
    parity("stories260K_added", "tests/data/tokenizer/stories260K_added", corpus, n_corpus);
    parity("bytelevel_smollm", "tests/data/tokenizer/bytelevel_smollm", corpus, n_corpus);
    parity("bytelevel_gpt2", "tests/data/tokenizer/bytelevel_gpt2", corpus, n_corpus);
    check_accessors();
    check_errors();
    check_speed(corpus, n_corpus);
    printf("summary: %ld encodes (%ld ids) and %ld decodes (+ streaming) compared with HF tokenizers; "
           "%ld decodes holding U+0000 skipped\n", g_texts_compared, g_ids_compared, g_decodes_compared, g_decodes_nul);
    free_jsonl(corpus, n_corpus);
    char rm[128];
    snprintf(rm, sizeof rm, "rm -rf %s", g_tmp);
    if (system(rm)) {}
    TEST_MAIN_END();
}
