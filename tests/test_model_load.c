/* test_model_load.c — model loading: both config.json styles give the same
 * model, and every kind of bad checkpoint gets a clear error (status code +
 * a message naming the file and the problem), never a crash. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "test.h"

static char tmp[256];

static void write_file(const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmp, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
}

static void copy_file(const char *src, const char *name, long truncate_to) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmp, name);
    FILE *in = fopen(src, "rb"), *out = fopen(p, "wb");
    if (!in || !out) { fprintf(stderr, "copy %s failed\n", src); exit(2); }
    char buf[65536];
    size_t n;
    long total = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
        if (truncate_to >= 0 && total + (long)n > truncate_to) n = (size_t)(truncate_to - total);
        fwrite(buf, 1, n, out);
        total += (long)n;
        if (truncate_to >= 0 && total >= truncate_to) break;
    }
    fclose(in);
    fclose(out);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc(n + 1);
    if (fread(s, 1, n, f) != (size_t)n) exit(2);
    s[n] = 0;
    fclose(f);
    return s;
}

/* Expects loading tmp to fail with code and a message containing every needle. */
static void expect_fail(const char *what, prism_status code, const char *n1, const char *n2) {
    prism_model *m = NULL;
    prism_status st = prism_model_load(tmp, prism_model_default_params(), &m);
    const char *msg = prism_last_error();
    int ok = st == code && m == NULL && strstr(msg, n1) && (!n2 || strstr(msg, n2));
    CHECK(ok, "%s: got status %d (%s), message \"%s\"; want status %d mentioning \"%s\"%s%s", what, st,
          prism_status_str(st), msg, code, n1, n2 ? " and " : "", n2 ? n2 : "");
    if (ok) printf("ok   %-34s -> %s\n", what, msg);
    prism_model_free(m);
}

static char *replace(const char *s, const char *from, const char *to) {
    const char *p = strstr(s, from);
    if (!p) { fprintf(stderr, "replace: \"%s\" not found\n", from); exit(2); }
    char *r = malloc(strlen(s) + strlen(to) + 1);
    memcpy(r, s, p - s);
    strcpy(r + (p - s), to);
    strcat(r, p + strlen(from));
    return r;
}

int main(void) {
    char src[512], cfg_path[600], st_path[600];
    snprintf(src, sizeof src, "%s/llama3/model", fixtures_root());
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", src);
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", src);
    char *cfg = read_text(cfg_path);
    strcpy(tmp, "/tmp/prism-model-XXXXXX");
    if (!mkdtemp(tmp)) return 2;

    /* the fixture as is */
    prism_model *ref = NULL;
    CHECK(prism_model_load(src, prism_model_default_params(), &ref) == PRISM_OK, "load %s: %s", src, prism_last_error());

    /* old-style config (rope_theta + rope_scaling, torch_dtype, eos list) == new style */
    copy_file(st_path, "model.safetensors", -1);
    char *old = replace(cfg, "\"rope_parameters\": {\n    \"factor\": 8.0,\n    \"high_freq_factor\": 4.0,\n    \"low_freq_factor\": 1.0,\n    \"original_max_position_embeddings\": 128,\n    \"rope_theta\": 500000.0,\n    \"rope_type\": \"llama3\"\n  }",
                        "\"rope_theta\": 500000.0, \"rope_scaling\": {\"factor\": 8.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0, \"original_max_position_embeddings\": 128, \"rope_type\": \"llama3\"}");
    char *old2 = replace(old, "\"dtype\": \"float32\"", "\"torch_dtype\": \"float32\"");
    char *old3 = replace(old2, "\"eos_token_id\": 2", "\"eos_token_id\": [2, 5]");
    write_file("config.json", old3);
    prism_model *m = NULL;
    CHECK(prism_model_load(tmp, prism_model_default_params(), &m) == PRISM_OK, "old-style config: %s", prism_last_error());
    if (m && ref) {
        CHECK(m->cfg.rope == ROPE_LLAMA3 && m->cfg.rope_theta == ref->cfg.rope_theta && m->cfg.rope_factor == 8.0f, "rope_scaling parsed");
        CHECK(!memcmp(m->rope_inv_freq, ref->rope_inv_freq, (size_t)ref->cfg.head_dim / 2 * sizeof(float)), "same inv_freq from both styles");
        CHECK(m->cfg.n_eos == 2 && m->cfg.eos_ids[0] == 2 && m->cfg.eos_ids[1] == 5, "eos list");
        CHECK(!strcmp(m->cfg.dtype, "float32"), "torch_dtype");
    }
    prism_model_free(m);
    free(old); free(old2); free(old3);
    /* generation_config.json adds eos ids */
    write_file("config.json", cfg);
    write_file("generation_config.json", "{\"eos_token_id\": [2, 7, 9], \"do_sample\": true, \"temperature\": 0.6, \"top_p\": 0.9}");
    m = NULL;
    CHECK(prism_model_load(tmp, prism_model_default_params(), &m) == PRISM_OK, "gen config: %s", prism_last_error());
    if (m) {
        CHECK(m->cfg.n_eos == 3 && m->cfg.eos_ids[2] == 9, "eos from generation_config: %d ids", m->cfg.n_eos);
        prism_sampling_params sp = prism_model_sampling_defaults(m);
        CHECK(sp.temperature > 0.59f && sp.temperature < 0.61f && sp.top_p > 0.89f, "sampling defaults");
    }
    prism_model_free(m);
    write_file("generation_config.json", "{\"eos_token_id\": [2, ");
    expect_fail("malformed generation_config.json", PRISM_E_FORMAT, "generation_config.json", "line");
    char p[600];
    snprintf(p, sizeof p, "%s/generation_config.json", tmp);
    unlink(p);

    /* config.json problems */
    snprintf(p, sizeof p, "%s/config.json", tmp);
    unlink(p);
    expect_fail("missing config.json", PRISM_E_IO, "config.json", "missing");
    write_file("config.json", "{\"architectures\": [\"LlamaForCausalLM\"], ");
    expect_fail("truncated config.json", PRISM_E_FORMAT, "config.json", "line 1");
    write_file("config.json", "[1, 2]");
    expect_fail("config.json not an object", PRISM_E_FORMAT, "config.json", "object");
    char *t = replace(cfg, "LlamaForCausalLM", "GPTNeoXForCausalLM");
    write_file("config.json", t);
    expect_fail("unknown architecture", PRISM_E_UNSUPPORTED, "GPTNeoXForCausalLM", "supported");
    free(t);
    t = replace(cfg, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 4");
    write_file("config.json", t);
    expect_fail("heads not divisible by kv heads", PRISM_E_FORMAT, "config.json", "impossible");
    free(t);
    t = replace(cfg, "\"hidden_size\": 96", "\"hidden_size\": \"96\"");
    write_file("config.json", t);
    expect_fail("size given as a string", PRISM_E_FORMAT, "config.json", "integer");
    free(t);
    t = replace(cfg, "\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\"");
    write_file("config.json", t);
    expect_fail("unsupported rope type", PRISM_E_UNSUPPORTED, "yarn", "config.json");
    free(t);
    t = replace(cfg, "\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"");
    write_file("config.json", t);
    expect_fail("unsupported activation", PRISM_E_UNSUPPORTED, "gelu", NULL);
    free(t);

    /* config.json disagreeing with the weights */
    t = replace(cfg, "\"intermediate_size\": 224", "\"intermediate_size\": 256");
    write_file("config.json", t);
    expect_fail("shape mismatch", PRISM_E_FORMAT, "mlp.gate_proj.weight", "[224, 96]");
    free(t);
    t = replace(cfg, "\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4");
    write_file("config.json", t);
    expect_fail("missing layer tensors", PRISM_E_FORMAT, "model.layers.3.", "missing");
    free(t);
    t = replace(cfg, "\"tie_word_embeddings\": false", "\"tie_word_embeddings\": true");
    write_file("config.json", t);
    m = NULL;
    CHECK(prism_model_load(tmp, prism_model_default_params(), &m) == PRISM_OK, "tied flag with lm_head present loads: %s", prism_last_error());
    if (m) CHECK(m->lm_head.w == m->embed.w, "tie_word_embeddings uses the embedding as LM head");
    prism_model_free(m);
    free(t);

    /* safetensors problems surface with the file name */
    write_file("config.json", cfg);
    copy_file(st_path, "model.safetensors", 100000);
    expect_fail("truncated model.safetensors", PRISM_E_FORMAT, "model.safetensors", NULL);
    copy_file(st_path, "model.safetensors", 4);
    expect_fail("4-byte model.safetensors", PRISM_E_FORMAT, "model.safetensors", NULL);
    snprintf(p, sizeof p, "%s/model.safetensors", tmp);
    unlink(p);
    expect_fail("no weights", PRISM_E_IO, "model.safetensors", NULL);
    char saved[256];
    strcpy(saved, tmp);
    strcat(tmp, "/no-such-model");
    expect_fail("missing directory", PRISM_E_IO, "no-such-model/config.json", NULL);
    strcpy(tmp, saved);

    /* context and batch argument checks */
    if (ref) {
        prism_ctx *c = NULL;
        prism_ctx_params cp = prism_ctx_default_params();
        cp.n_seq_max = 0;
        CHECK(prism_ctx_new(ref, cp, &c) == PRISM_E_ARG && !c, "n_seq_max 0 refused");
        cp = prism_ctx_default_params();
        cp.n_ctx = 8;
        CHECK(prism_ctx_new(ref, cp, &c) == PRISM_OK, "ctx");
        int32_t tok[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, pos[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, seq[10] = {0};
        prism_batch b = {10, tok, pos, seq, NULL};
        CHECK(prism_decode(c, &b) == PRISM_E_RANGE, "context overflow refused: %s", prism_last_error());
        b.n_tokens = 3;
        pos[1] = 5;
        CHECK(prism_decode(c, &b) == PRISM_E_ARG, "position gap refused: %s", prism_last_error());
        pos[1] = 1;
        tok[2] = 100000;
        CHECK(prism_decode(c, &b) == PRISM_E_ARG && strstr(prism_last_error(), "vocabulary"), "bad token refused: %s", prism_last_error());
        tok[2] = 3;
        seq[2] = 3;
        CHECK(prism_decode(c, &b) == PRISM_E_ARG, "bad sequence refused: %s", prism_last_error());
        seq[2] = 0;
        CHECK(prism_decode(c, &b) == PRISM_OK && prism_ctx_seq_len(c, 0) == 3, "valid batch after errors: %s", prism_last_error());
        CHECK(prism_get_logits(c, 0) == NULL && prism_get_logits(c, 2) != NULL, "default logits: last token of each sequence");
        prism_ctx_free(c);
    }
    prism_model_free(ref);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd)) return 2;
    free(cfg);
    TEST_MAIN_END();
}
