/* test_store.c — the JSONL record store (round trip, repair of a torn last
 * line, errors naming FILE:LINE, a kill -9 crash loop), stage manifests and
 * the atomic-file helpers. Everything runs in a fresh directory under /tmp. */
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "prism/store.h"
#include "test.h"

static char g_dir[64];

static void path_in(char *dst, size_t cap, const char *name) { snprintf(dst, cap, "%s/%s", g_dir, name); }

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void write_raw(const char *path, const char *data, size_t n, bool append) {
    int fd = open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
    if (fd < 0 || write(fd, data, n) != (ssize_t)n) fprintf(stderr, "cannot write %s\n", path);
    if (fd >= 0) close(fd);
}

static bool contains(const char *hay, const char *needle) { return hay && strstr(hay, needle) != NULL; }

static json_t *rec(const char *key, int v) { return json_pack("{s:s, s:i, s:s}", "key", key, "v", v, "text", "a\nb\"c"); }

static void test_round_trip(void) {
    char p[128];
    path_in(p, sizeof p, "rt.jsonl");
    jstore *s = NULL;
    prism_status rc = jstore_open(p, &s);
    CHECK(rc == PRISM_OK, "open new store: %s", prism_last_error());
    if (rc) return;
    jstore_set_sync(s, false);
    CHECK(jstore_count(s) == 0, "new store has %zu records", jstore_count(s));
    CHECK(jstore_append_new(s, rec("a", 1)) == PRISM_OK, "append a: %s", prism_last_error());
    CHECK(jstore_append_new(s, rec("b", 2)) == PRISM_OK, "append b: %s", prism_last_error());
    json_t *c = rec("c", 3);
    CHECK(jstore_append(s, c) == PRISM_OK, "append c: %s", prism_last_error());
    CHECK(c->refcount == 2, "the store holds its own reference (refcount %zu)", (size_t)c->refcount);
    json_decref(c);
    /* Refusals leave the store and the file unchanged. */
    long before = file_size(p);
    CHECK(jstore_append_new(s, rec("b", 9)) == PRISM_E_ARG, "duplicate key must be refused");
    CHECK(contains(prism_last_error(), "duplicate key b"), "message: %s", prism_last_error());
    CHECK(jstore_append_new(s, json_pack("{s:i}", "v", 1)) == PRISM_E_ARG, "record without key");
    CHECK(jstore_append_new(s, json_pack("{s:i}", "key", 1)) == PRISM_E_ARG, "non-string key");
    CHECK(jstore_append_new(s, json_pack("{s:s}", "key", "")) == PRISM_E_ARG, "empty key");
    CHECK(jstore_append_new(s, json_pack("[i]", 1)) == PRISM_E_ARG, "non-object record");
    CHECK(jstore_append_new(s, NULL) == PRISM_E_NOMEM, "NULL record");
    CHECK(file_size(p) == before, "refused appends changed the file (%ld -> %ld bytes)", before, file_size(p));
    CHECK(jstore_count(s) == 3, "count %zu after refusals, want 3", jstore_count(s));
    jstore_close(s);

    /* The file is one compact object per line. */
    FILE *f = fopen(p, "r");
    char line[256];
    int lines = 0;
    while (f && fgets(line, sizeof line, f)) lines++;
    if (f) fclose(f);
    CHECK(lines == 3, "file has %d lines, want 3 (embedded newlines must be escaped)", lines);

    rc = jstore_open(p, &s);
    CHECK(rc == PRISM_OK, "reopen: %s", prism_last_error());
    if (rc) return;
    CHECK(jstore_count(s) == 3, "reopened count %zu, want 3", jstore_count(s));
    CHECK(jstore_repaired_bytes(s) == 0, "nothing to repair, got %llu", (unsigned long long)jstore_repaired_bytes(s));
    const char *order[] = {"a", "b", "c"};
    for (size_t i = 0; i < 3; i++) {
        const json_t *r = jstore_at(s, i);
        CHECK(r && !strcmp(json_string_value(json_object_get(r, "key")), order[i]), "record %zu out of order", i);
        CHECK(r && json_integer_value(json_object_get(r, "v")) == (json_int_t)i + 1, "record %zu value", i);
        CHECK(r && !strcmp(json_string_value(json_object_get(r, "text")), "a\nb\"c"), "record %zu text", i);
    }
    CHECK(jstore_at(s, 3) == NULL, "jstore_at past the end");
    CHECK(jstore_get(s, "b") == jstore_at(s, 1), "jstore_get(b)");
    CHECK(jstore_get(s, "zz") == NULL, "jstore_get of a missing key");
    CHECK(jstore_append_new(s, rec("a", 0)) == PRISM_E_ARG, "duplicate of a reloaded key refused");
    /* Many keys: the table grows and every key stays reachable. */
    jstore_set_sync(s, false);
    char k[32];
    for (int i = 0; i < 500; i++) {
        snprintf(k, sizeof k, "k%d", i);
        if (jstore_append_new(s, rec(k, i)) != PRISM_OK) break;
    }
    int found = 0;
    for (int i = 0; i < 500; i++) {
        snprintf(k, sizeof k, "k%d", i);
        const json_t *r = jstore_get(s, k);
        found += r && json_integer_value(json_object_get(r, "v")) == i;
    }
    CHECK(found == 500, "%d of 500 keys found after growth", found);
    jstore_close(s);
    jstore_close(NULL);
}

/* A crash mid-append leaves a partial last line: cut off on open, then appends continue. */
static void test_repair(void) {
    char p[128];
    path_in(p, sizeof p, "torn.jsonl");
    const char *good = "{\"key\":\"a\",\"v\":1}\n{\"key\":\"b\",\"v\":2}\n";
    const char *tails[] = {
        "{\"key\":\"c\",\"v\"",       /* no newline */
        "{\"key\":\"c\",\"v\":3}",    /* complete JSON but no newline: never acknowledged */
        "{\"key\":\"c\",\"v\n",       /* newline but does not parse, last line */
        "\0\0\0\0\0\0\0\0",           /* zero-filled tail (power loss) */
    };
    const size_t tail_len[] = {strlen(tails[0]), strlen(tails[1]), strlen(tails[2]), 8};
    for (size_t t = 0; t < 4; t++) {
        write_raw(p, good, strlen(good), false);
        write_raw(p, tails[t], tail_len[t], true);
        jstore *s = NULL;
        prism_status rc = jstore_open(p, &s);
        CHECK(rc == PRISM_OK, "tail %zu: open must repair, got %s", t, prism_last_error());
        if (rc) continue;
        CHECK(jstore_count(s) == 2, "tail %zu: %zu records, want 2", t, jstore_count(s));
        CHECK(jstore_repaired_bytes(s) == tail_len[t], "tail %zu: repaired %llu bytes, want %zu", t,
              (unsigned long long)jstore_repaired_bytes(s), tail_len[t]);
        CHECK(file_size(p) == (long)strlen(good), "tail %zu: file is %ld bytes after repair, want %zu", t,
              file_size(p), strlen(good));
        CHECK(jstore_append_new(s, rec("c", 3)) == PRISM_OK, "tail %zu: append after repair: %s", t,
              prism_last_error());
        jstore_close(s);
        rc = jstore_open(p, &s);
        CHECK(rc == PRISM_OK && jstore_count(s) == 3 && jstore_get(s, "c") && jstore_repaired_bytes(s) == 0,
              "tail %zu: reopened after the append: %s", t, rc ? prism_last_error() : "wrong contents");
        jstore_close(s);
    }
}

static void check_open_fails(const char *name, const char *content, prism_status want, const char *msg) {
    char p[128], expect[256];
    path_in(p, sizeof p, name);
    write_raw(p, content, strlen(content), false);
    long before = file_size(p);
    jstore *s = NULL;
    prism_status rc = jstore_open(p, &s);
    snprintf(expect, sizeof expect, "%s:%s", p, msg);
    CHECK(rc == want && s == NULL, "%s: open returned %d, want %d", name, rc, want);
    CHECK(contains(prism_last_error(), expect), "%s: message \"%s\" lacks \"%s\"", name, prism_last_error(), expect);
    CHECK(file_size(p) == before, "%s: a failed open must not modify the file", name);
    jstore_close(s);
}

static void test_bad_files(void) {
    check_open_fails("mid.jsonl", "{\"key\":\"a\"}\n{\"key\":\"b\",oops}\n{\"key\":\"c\"}\n", PRISM_E_FORMAT,
                     "2: malformed record");
    check_open_fails("dup.jsonl", "{\"key\":\"a\"}\n{\"key\":\"b\"}\n{\"key\":\"a\"}\n", PRISM_E_FORMAT,
                     "3: duplicate key a (first at line 1)");
    check_open_fails("nokey.jsonl", "{\"key\":\"a\"}\n{\"id\":\"b\"}\n", PRISM_E_FORMAT, "2: record has no string");
    check_open_fails("array.jsonl", "[1,2]\n{\"key\":\"a\"}\n", PRISM_E_FORMAT, "1: record has no string");
    /* Blank lines carry no data and are skipped; line numbers still count them. */
    check_open_fails("blank.jsonl", "{\"key\":\"a\"}\n\n{\"key\":\"a\"}\n", PRISM_E_FORMAT,
                     "3: duplicate key a (first at line 1)");
    char p[128];
    path_in(p, sizeof p, "nodir/x.jsonl");
    jstore *s = NULL;
    CHECK(jstore_open(p, &s) == PRISM_E_IO && contains(prism_last_error(), p), "missing directory: %s",
          prism_last_error());
}

/* A write that fails part-way (here: the file size limit) leaves the file and
 * the store as they were. Runs in a child so the limit does not leak. */
static int short_write_child(const char *p) {
    signal(SIGXFSZ, SIG_IGN);
    jstore *s = NULL;
    if (jstore_open(p, &s)) return 10;
    jstore_set_sync(s, false);
    long before = file_size(p);
    struct rlimit rl = {(rlim_t)before + 64, (rlim_t)before + 64};
    if (setrlimit(RLIMIT_FSIZE, &rl)) return 11;
    char big[1024];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    if (jstore_append_new(s, json_pack("{s:s, s:s}", "key", "big", "body", big)) != PRISM_E_IO) return 12;
    if (file_size(p) != before || jstore_count(s) != 2 || jstore_get(s, "big")) return 13;
    if (jstore_append_new(s, json_pack("{s:s}", "key", "small")) != PRISM_OK) return 14;
    jstore_close(s);
    return 0;
}

static void test_short_write(void) {
    char p[128];
    path_in(p, sizeof p, "short.jsonl");
    write_raw(p, "{\"key\":\"a\"}\n{\"key\":\"b\"}\n", 24, false);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) _exit(short_write_child(p));
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "short write must be undone (child status %d)", st);
    jstore *s = NULL;
    CHECK(jstore_open(p, &s) == PRISM_OK && jstore_count(s) == 3 && jstore_get(s, "small") &&
              jstore_repaired_bytes(s) == 0,
          "after a failed append: %s", prism_last_error());
    jstore_close(s);
}

/* ---------------------------------------------------------------- kill -9 */

#define CRASH_N 2000

/* Payload of record i: varying length (up to ~2 KB) so some writes cross pages. */
static void payload(int i, char *buf, size_t cap) {
    size_t n = 20 + (size_t)(i * 7919 % 1900);
    if (n >= cap) n = cap - 1;
    for (size_t j = 0; j < n; j++) buf[j] = (char)('a' + (i + j) % 26);
    buf[n] = 0;
}

/* Appends records count..CRASH_N-1; returns 0 on success. */
static int append_until_done(const char *path, bool sync) {
    jstore *s = NULL;
    if (jstore_open(path, &s)) return 1;
    jstore_set_sync(s, sync);
    char key[16], body[2048];
    for (int i = (int)jstore_count(s); i < CRASH_N; i++) {
        snprintf(key, sizeof key, "%d", i);
        payload(i, body, sizeof body);
        if (jstore_append_new(s, json_pack("{s:s, s:i, s:s}", "key", key, "i", i, "body", body))) {
            jstore_close(s);
            return 1;
        }
    }
    jstore_close(s);
    return 0;
}

/* Keys must be "0".."n-1" in order, each record complete. Returns n or -1. */
static long verify_prefix(const char *path, uint64_t *repaired) {
    jstore *s = NULL;
    if (jstore_open(path, &s)) {
        fprintf(stderr, "reopen after kill: %s\n", prism_last_error());
        return -1;
    }
    *repaired = jstore_repaired_bytes(s);
    long n = (long)jstore_count(s), bad = 0;
    char key[24], body[2048];
    for (long i = 0; i < n; i++) {
        const json_t *r = jstore_at(s, (size_t)i);
        snprintf(key, sizeof key, "%ld", i);
        payload((int)i, body, sizeof body);
        const char *k = json_string_value(json_object_get(r, "key")), *b = json_string_value(json_object_get(r, "body"));
        if (!k || strcmp(k, key) || json_integer_value(json_object_get(r, "i")) != i || !b || strcmp(b, body)) bad++;
    }
    jstore_close(s);
    return bad ? -1 : n;
}

static void test_kill9(void) {
    char p[128];
    path_in(p, sizeof p, "crash.jsonl");
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    srand(seed);
    long n = 0, kills_mid_run = 0;
    uint64_t repaired_total = 0;
    for (int round = 0; round < 6 && n < CRASH_N; round++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) _exit(append_until_done(p, true));
        CHECK(pid > 0, "fork failed");
        if (pid < 0) return;
        struct timespec ts = {0, (long)(5 + rand() % 60) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int st = 0;
        waitpid(pid, &st, 0);
        bool killed = WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
        CHECK(killed || (WIFEXITED(st) && WEXITSTATUS(st) == 0), "round %d: child failed on its own (status %d)",
              round, st);
        uint64_t rep = 0;
        long m = verify_prefix(p, &rep);
        CHECK(m >= n, "round %d (seed %u): after kill -9 the records are not 0..n-1 complete (n=%ld, before %ld)",
              round, seed, m, n);
        if (m < n) return;
        kills_mid_run += killed && m < CRASH_N;
        repaired_total += rep;
        n = m;
    }
    printf("kill -9: %ld killed mid-run, %ld records survived the last kill, %llu torn bytes repaired (seed %u)\n",
           kills_mid_run, n, (unsigned long long)repaired_total, seed);
    CHECK(kills_mid_run > 0 || n == CRASH_N, "no child was killed mid-run");
    CHECK(append_until_done(p, false) == 0, "finishing the run: %s", prism_last_error());
    uint64_t rep = 0;
    long m = verify_prefix(p, &rep);
    CHECK(m == CRASH_N, "after resuming: %ld records, want %d distinct, contiguous and complete", m, CRASH_N);
}

/* ---------------------------------------------------------------- stages and files */

static void test_stages(void) {
    char run[128], man[160], done[160], recs[160];
    path_in(run, sizeof run, "run1");
    snprintf(man, sizeof man, "%s/stages/answers.json", run);
    snprintf(done, sizeof done, "%s/stages/answers.done", run);
    snprintf(recs, sizeof recs, "%s/answers.jsonl", run);
    char *why = (char *)1;
    prism_status rc = stage_check(run, "answers", "{\"max_answer_tokens\": 48, \"temperature\": 0.7, \"model\": \"x\"}",
                                  &why);
    CHECK(rc == PRISM_OK && why == NULL, "first stage_check writes the manifest: %s", prism_last_error());
    CHECK(file_size(man) > 0, "manifest %s missing", man);
    /* Same settings in another order and spacing. */
    rc = stage_check(run, "answers", "{\"model\":\"x\",\"temperature\":0.7,   \"max_answer_tokens\":48}", &why);
    CHECK(rc == PRISM_OK && why == NULL, "same settings: %s", prism_last_error());
    /* A changed setting names the key, the old and new values and the way out. */
    rc = stage_check(run, "answers", "{\"model\":\"x\",\"temperature\":0.7,\"max_answer_tokens\":64}", &why);
    CHECK(rc == PRISM_E_ARG, "changed setting must be refused, got %d", rc);
    CHECK(contains(why, "stage answers: setting max_answer_tokens changed from 48 to 64; earlier records were made "
                        "with the old settings"),
          "why = %s", why ? why : "(null)");
    CHECK(contains(why, "--force-restage answers") && contains(prism_last_error(), "max_answer_tokens"),
          "why = %s / error = %s", why ? why : "(null)", prism_last_error());
    CHECK(!contains(why, "temperature"), "unchanged settings must not be listed: %s", why ? why : "(null)");
    free(why);
    /* Added and removed settings; why may be NULL. */
    rc = stage_check(run, "answers", "{\"model\":\"y\",\"temperature\":0.7,\"max_answer_tokens\":48,\"top_p\":0.9}",
                     &why);
    CHECK(rc == PRISM_E_ARG && contains(why, "setting model changed from \"x\" to \"y\"") &&
              contains(why, "setting top_p added (now 0.9"),
          "added/changed: %s", why ? why : "(null)");
    free(why);
    rc = stage_check(run, "answers", "{\"temperature\":0.7,\"max_answer_tokens\":48}", NULL);
    CHECK(rc == PRISM_E_ARG && contains(prism_last_error(), "setting model removed (was \"x\")"), "removed: %s",
          prism_last_error());
    /* Refusals leave the manifest as it was. */
    rc = stage_check(run, "answers", "{\"max_answer_tokens\":48,\"temperature\":0.7,\"model\":\"x\"}", NULL);
    CHECK(rc == PRISM_OK, "manifest must be unchanged by refusals: %s", prism_last_error());
    /* Bad input. */
    CHECK(stage_check(run, "answers", "[1]", NULL) == PRISM_E_ARG, "settings must be an object");
    CHECK(stage_check(run, "answers", "{oops", NULL) == PRISM_E_ARG, "settings must parse");
    CHECK(stage_check(run, "../evil", "{}", NULL) == PRISM_E_ARG, "stage names cannot hold paths");

    /* Done markers and reset. */
    CHECK(!stage_is_done(run, "answers"), "not done yet");
    CHECK(stage_mark_done(run, "answers") == PRISM_OK, "mark done: %s", prism_last_error());
    CHECK(stage_is_done(run, "answers") && file_size(done) > 0, "done marker");
    CHECK(stage_mark_done(run, "answers") == PRISM_OK, "marking twice is fine: %s", prism_last_error());
    write_raw(recs, "{\"key\":\"a\"}\n", 12, false);
    const char *files[] = {recs};
    CHECK(stage_reset(run, "answers", files, 1) == PRISM_OK, "reset: %s", prism_last_error());
    CHECK(!stage_is_done(run, "answers") && file_size(recs) < 0 && file_size(man) < 0,
          "reset must remove the marker, the records and the manifest");
    CHECK(stage_reset(run, "answers", files, 1) == PRISM_OK, "resetting twice is fine: %s", prism_last_error());
    rc = stage_check(run, "answers", "{\"max_answer_tokens\":64}", NULL);
    CHECK(rc == PRISM_OK, "after reset new settings are accepted: %s", prism_last_error());
}

static void test_files(void) {
    char p[128], tmp[140];
    path_in(p, sizeof p, "prism.json");
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    json_t *v = json_pack("{s:s, s:i, s:{s:f}}", "zeta", "last", "alpha", 1, "gate", "accuracy", 0.875);
    CHECK(write_json_atomic(p, v) == PRISM_OK, "write_json_atomic: %s", prism_last_error());
    CHECK(file_size(tmp) < 0, "the .tmp file must be gone");
    json_error_t err;
    json_t *back = json_load_file(p, 0, &err);
    CHECK(back && json_equal(back, v), "prism.json round trip: %s", back ? "values differ" : err.text);
    FILE *f = fopen(p, "r");
    char text[512] = "";
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    text[n] = 0;
    if (f) fclose(f);
    char *a = strstr(text, "\"alpha\""), *z = strstr(text, "\"zeta\"");
    CHECK(a && z && a < z && n > 0 && text[n - 1] == '\n' && strchr(text, '\n') < a,
          "prism.json must be pretty, sorted, newline-terminated:\n%s", text);
    json_decref(back);
    json_decref(v);

    /* FNV-1a 64 reference values ("" and "abc"). */
    uint64_t h = 0;
    path_in(p, sizeof p, "empty.bin");
    write_raw(p, "", 0, false);
    CHECK(hash_file(p, &h) == PRISM_OK && h == 0xcbf29ce484222325ULL, "fnv1a64(\"\") = %016llx",
          (unsigned long long)h);
    path_in(p, sizeof p, "abc.bin");
    write_raw(p, "abc", 3, false);
    CHECK(hash_file(p, &h) == PRISM_OK && h == 0xe71fa2190541574bULL, "fnv1a64(\"abc\") = %016llx",
          (unsigned long long)h);
    CHECK(fnv1a64("bc", 2, fnv1a64("a", 1, FNV1A64_INIT)) == 0xe71fa2190541574bULL, "fnv1a64 continues");
    path_in(p, sizeof p, "missing.bin");
    CHECK(hash_file(p, &h) == PRISM_E_IO && contains(prism_last_error(), p), "missing file: %s", prism_last_error());
}

static void rm_rf(const char *dir) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/prism_test_store_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_repair();
    test_bad_files();
    test_short_write();
    test_kill9();
    test_stages();
    test_files();
    if (!t_fail) rm_rf(g_dir);
    else printf("files kept in %s\n", g_dir);
    TEST_MAIN_END();
}
