/* test_chat.c — chat template detection and rendering against references.
 *
 * tests/data/chat/<name>.jinja are real chat_template strings (Qwen2.5, Qwen3,
 * Llama-3/3.1/3.2, Mistral v0.1/v0.3, Llama-2, plain ChatML);
 * expected.jsonl holds what @huggingface/jinja renders from them
 * (scripts/chat-fixtures/render.mjs). For each record a tokenizer_config.json
 * holding the template is written to a temp dir, the family prism detects is
 * checked, and prism_chat_render is compared byte for byte (or must fail
 * where the template raises). Then the error paths.
 * Run from the repository root (or set PRISM_CHAT_DATA).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prism.h"
#include "test.h"

static char g_tmp[256];

static const char *data_dir(void) {
    const char *d = getenv("PRISM_CHAT_DATA");
    return d && *d ? d : "tests/data/chat";
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

static void write_text(const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_tmp, name);
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    fputs(text, f);
    fclose(f);
}

/* tokenizer_config.json with chat_template = value (stolen reference). */
static void write_config(json_t *chat_template) {
    json_t *root = json_object();
    json_object_set_new(root, "bos_token", json_string("<s>"));
    if (chat_template) json_object_set_new(root, "chat_template", chat_template);
    char *s = json_dumps(root, JSON_INDENT(2));
    write_text("tokenizer_config.json", s);
    free(s);
    json_decref(root);
}

static void show_diff(const char *got, const char *want) {
    size_t i = 0;
    while (got[i] && got[i] == want[i]) i++;
    fprintf(stderr, "    first difference at byte %zu\n    got:  ", i);
    for (const char *p = got + (i > 20 ? i - 20 : 0); *p && p < got + i + 40; p++)
        fputs(*p == '\n' ? "\\n" : (char[]){*p, 0}, stderr);
    fprintf(stderr, "\n    want: ");
    for (const char *p = want + (i > 20 ? i - 20 : 0); *p && p < want + i + 40; p++)
        fputs(*p == '\n' ? "\\n" : (char[]){*p, 0}, stderr);
    fputc('\n', stderr);
}

static void test_references(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/expected.jsonl", data_dir());
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "cannot open %s (run from the repository root)", path);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    int n_rec = 0, n_ok = 0;
    char last_template[128] = "";
    while (getline(&line, &cap, f) > 0) {
        json_error_t err;
        json_t *r = json_loads(line, 0, &err);
        CHECK(r != NULL, "%s: line %d: %s", path, err.line, err.text);
        if (!r) continue;
        const char *tfile = json_string_value(json_object_get(r, "template"));
        const char *detect = json_string_value(json_object_get(r, "detect"));
        const char *name = json_string_value(json_object_get(r, "name"));
        const char *id = json_string_value(json_object_get(r, "id"));
        bool gen = json_is_true(json_object_get(r, "add_generation_prompt"));
        const char *expected = json_string_value(json_object_get(r, "expected"));
        json_t *jm = json_object_get(r, "messages");

        if (strcmp(tfile, last_template)) {
            char tpath[512];
            snprintf(tpath, sizeof tpath, "%s/%s", data_dir(), tfile);
            char *tmpl = read_file(tpath);
            CHECK(tmpl != NULL, "cannot read %s", tpath);
            write_config(json_string(tmpl ? tmpl : ""));
            free(tmpl);
            snprintf(last_template, sizeof last_template, "%s", tfile);
        }
        prism_chat *c = NULL;
        prism_status st = prism_chat_load(g_tmp, NULL, &c);
        CHECK(st == PRISM_OK && !strcmp(prism_chat_name(c), detect), "%s: detected %s, want %s (%s)", tfile,
              st == PRISM_OK ? prism_chat_name(c) : "nothing", detect, prism_last_error());
        if (st == PRISM_OK && strcmp(name, detect)) {
            prism_chat_free(c);
            c = NULL;
            st = prism_chat_load(g_tmp, name, &c);
            CHECK(st == PRISM_OK, "override %s: %s", name, prism_last_error());
        }
        if (st == PRISM_OK) {
            size_t n = json_array_size(jm);
            prism_chat_message *msgs = calloc(n ? n : 1, sizeof *msgs);
            for (size_t i = 0; i < n; i++) {
                msgs[i].role = json_string_value(json_object_get(json_array_get(jm, i), "role"));
                msgs[i].content = json_string_value(json_object_get(json_array_get(jm, i), "content"));
            }
            char *text = NULL;
            st = prism_chat_render(c, msgs, n, gen, &text);
            if (expected) {
                bool ok = st == PRISM_OK && !strcmp(text, expected);
                CHECK(ok, "%s [%s] %s: rendering differs from @huggingface/jinja%s%s", tfile, name, id,
                      st ? ": " : "", st ? prism_last_error() : "");
                if (!ok && text) show_diff(text, expected);
                n_ok += ok;
            } else {
                const char *want_err = json_string_value(json_object_get(r, "error"));
                bool ok = st == PRISM_E_ARG && strstr(prism_last_error(), want_err);
                CHECK(ok, "%s [%s] %s: template raises '%s'; prism gave status %d '%s'", tfile, name, id, want_err,
                      st, prism_last_error());
                n_ok += ok;
            }
            free(text);
            free(msgs);
        }
        prism_chat_free(c);
        json_decref(r);
        n_rec++;
    }
    free(line);
    fclose(f);
    printf("reference renderings: %d/%d match\n", n_ok, n_rec);
    CHECK(n_rec >= 100, "only %d reference records", n_rec);
}

static void expect_load_error(const char *what, prism_status want, const char *needle) {
    prism_chat *c = (prism_chat *)1;
    prism_status st = prism_chat_load(g_tmp, NULL, &c);
    CHECK(st == want && c == NULL && strstr(prism_last_error(), needle), "%s: status %d (want %d), message '%s'",
          what, st, want, prism_last_error());
    printf("%-32s -> %s\n", what, prism_last_error());
}

static void test_errors(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", g_tmp);

    unlink(path);
    expect_load_error("missing tokenizer_config.json", PRISM_E_IO, path);

    write_text("tokenizer_config.json", "{\n  \"chat_template\": \"abc\",\n  oops\n}\n");
    expect_load_error("malformed JSON", PRISM_E_FORMAT, "line 3");

    write_config(NULL);
    expect_load_error("no chat_template", PRISM_E_UNSUPPORTED, "no chat template");
    CHECK(strstr(prism_last_error(), "--chat-template") != NULL, "message names the option");

    write_config(json_string("{% for m in messages %}<|user|>{{ m.content }}{% endfor %}"));
    expect_load_error("unknown template", PRISM_E_UNSUPPORTED, "not recognised (starts with '{% for m in messages %}");
    CHECK(strstr(prism_last_error(), "chatml|") && strstr(prism_last_error(), "|raw"), "lists the names");

    /* a list of named templates: "default" is used */
    char *q3 = NULL;
    {
        char tpath[512];
        snprintf(tpath, sizeof tpath, "%s/qwen3.jinja", data_dir());
        q3 = read_file(tpath);
    }
    json_t *list = json_array();
    json_array_append_new(list, json_pack("{s:s, s:s}", "name", "tool_use", "template", "{{ 'x' }}"));
    json_array_append_new(list, json_pack("{s:s, s:s}", "name", "default", "template", q3 ? q3 : ""));
    write_config(list);
    free(q3);
    prism_chat *c = NULL;
    prism_status st = prism_chat_load(g_tmp, NULL, &c);
    CHECK(st == PRISM_OK && !strcmp(prism_chat_name(c), "qwen3"), "list form: %s", prism_last_error());
    prism_chat_free(c);

    json_t *list2 = json_array();
    json_array_append_new(list2, json_pack("{s:s, s:s}", "name", "tool_use", "template", "{{ 'x' }}"));
    write_config(list2);
    expect_load_error("list without default", PRISM_E_UNSUPPORTED, "default");

    /* overrides need no tokenizer_config.json (e.g. stories260K) */
    unlink(path);
    c = NULL;
    st = prism_chat_load(g_tmp, "raw", &c);
    CHECK(st == PRISM_OK && !strcmp(prism_chat_name(c), "raw"), "override raw: %s", prism_last_error());
    if (c) {
        prism_chat_message m[] = {{"system", "A"}, {"user", "b"}, {"assistant", " c\n"}};
        char *t = NULL;
        CHECK(prism_chat_render(c, m, 3, true, &t) == PRISM_OK && !strcmp(t, "Ab c\n"), "raw renders contents: '%s'",
              t ? t : "");
        free(t);
        CHECK(prism_chat_has_system_role(c), "raw has a system role");
        prism_chat_message bad[] = {{"tool", "x"}};
        CHECK(prism_chat_render(c, bad, 1, true, &t) == PRISM_E_ARG, "role 'tool' is rejected");
    }
    prism_chat_free(c);
    c = (prism_chat *)1;
    st = prism_chat_load(g_tmp, "jinja2", &c);
    CHECK(st == PRISM_E_ARG && c == NULL && strstr(prism_last_error(), "qwen3-nothink"),
          "unknown override: %d %s", st, prism_last_error());

    const char *with_sys[] = {"chatml", "chatml-plain", "qwen3", "qwen3-nothink", "llama3", "llama3.1", "llama2"};
    for (size_t i = 0; i < sizeof with_sys / sizeof *with_sys; i++) {
        c = NULL;
        st = prism_chat_load(NULL, with_sys[i], &c);
        CHECK(st == PRISM_OK && prism_chat_has_system_role(c) && !strcmp(prism_chat_name(c), with_sys[i]),
              "%s has a system role", with_sys[i]);
        prism_chat_free(c);
    }
    const char *no_sys[] = {"mistral", "mistral-v0.1"};
    for (size_t i = 0; i < 2; i++) {
        c = NULL;
        st = prism_chat_load(NULL, no_sys[i], &c);
        CHECK(st == PRISM_OK && !prism_chat_has_system_role(c), "%s has no system role", no_sys[i]);
        prism_chat_free(c);
    }
    prism_chat_free(NULL);

    /* the real Qwen3 tokenizer_config.json in shared/, when present */
    const char *q3dir = "../shared/data/tokenizers/qwen3";
    if (access(q3dir, R_OK) == 0) {
        c = NULL;
        st = prism_chat_load(q3dir, NULL, &c);
        CHECK(st == PRISM_OK && !strcmp(prism_chat_name(c), "qwen3"), "%s: %s", q3dir, prism_last_error());
        prism_chat_free(c);
    }
}

/* prism_chat_render_turns == prism_chat_render of the equivalent messages; for
 * templates without a system role the system text opens the first user message. */
static void test_render_turns(void) {
    const char *user[2] = {"What is 2+2?", "And 3+3?"}, *assistant[1] = {"4"};
    const char *names[2] = {"chatml-plain", "mistral"};
    for (int k = 0; k < 2; k++) {
        prism_chat *c = NULL;
        CHECK(prism_chat_load("/nonexistent", names[k], &c) == PRISM_OK, "%s: %s", names[k], prism_last_error());
        if (!c) continue;
        bool sys = prism_chat_has_system_role(c);
        prism_chat_message m[4];
        size_t n = 0;
        if (sys) m[n++] = (prism_chat_message){"system", "Be brief."};
        m[n++] = (prism_chat_message){"user", sys ? user[0] : "Be brief.\n\nWhat is 2+2?"};
        m[n++] = (prism_chat_message){"assistant", assistant[0]};
        m[n++] = (prism_chat_message){"user", user[1]};
        char *want = NULL, *got = NULL;
        CHECK(prism_chat_render(c, m, n, true, &want) == PRISM_OK, "render");
        CHECK(prism_chat_render_turns(c, "Be brief.", user, assistant, 2, true, &got) == PRISM_OK, "render_turns");
        CHECK(want && got && !strcmp(want, got), "%s: render_turns\n%s\n!=\n%s", names[k], got ? got : "", want ? want : "");
        free(want), free(got);
        CHECK(prism_chat_render_turns(c, NULL, user, assistant, 0, true, &got) == PRISM_E_ARG, "0 turns refused");
        prism_chat_free(c);
    }
}

int main(void) {
    test_render_turns();
    snprintf(g_tmp, sizeof g_tmp, "%s/prism_chat_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 2; }
    test_references();
    test_errors();
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", g_tmp);
    unlink(path);
    rmdir(g_tmp);
    TEST_MAIN_END();
}
