/* store.c — append-only JSONL record stores, stage manifests, atomic files.
 * See store.h for the on-disk format and the crash-safety argument. */
#include "prism/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "prism/text.h"
#include "util/error.h"

/* ---------------------------------------------------------------- JSONL record store */

static prism_status fsync_parent(const char *path, bool missing_ok);

struct jstore {
    char *path;
    int fd;
    bool sync;
    bool broken;          /* a failed append could not be undone: refuse more */
    uint64_t size;        /* bytes of complete records in the file */
    uint64_t repaired;
    json_t **rec;         /* [n] records in file order (one reference each) */
    size_t n, cap;
    size_t *slot;         /* [n_slot] open-addressing table of record index + 1 (0 = empty) */
    size_t n_slot;        /* power of two, > 2 n */
};

uint64_t fnv1a64(const void *data, size_t n, uint64_t h) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static const char *rec_key(const json_t *r) { return json_string_value(json_object_get(r, "key")); }

static size_t table_find(const jstore *s, const char *key) {
    size_t mask = s->n_slot - 1, i = (size_t)fnv1a64(key, strlen(key), FNV1A64_INIT) & mask;
    while (s->slot[i] && strcmp(rec_key(s->rec[s->slot[i] - 1]), key)) i = (i + 1) & mask;
    return i;
}

static prism_status table_grow(jstore *s) {
    size_t ns = s->n_slot ? s->n_slot * 2 : 64;
    size_t *old = s->slot, old_n = s->n_slot;
    s->slot = calloc(ns, sizeof *s->slot);
    if (!s->slot) {
        s->slot = old;
        return prism_error(PRISM_E_NOMEM, "%s: out of memory for the key table", s->path);
    }
    s->n_slot = ns;
    for (size_t i = 0; i < old_n; i++)
        if (old[i]) s->slot[table_find(s, rec_key(s->rec[old[i] - 1]))] = old[i];
    free(old);
    return PRISM_OK;
}

/* Makes room for one more record (array and table), before anything is written. */
static prism_status reserve_one(jstore *s) {
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        json_t **r = realloc(s->rec, nc * sizeof *r);
        if (!r) return prism_error(PRISM_E_NOMEM, "%s: out of memory for records", s->path);
        s->rec = r;
        s->cap = nc;
    }
    if (2 * (s->n + 1) >= s->n_slot) return table_grow(s);
    return PRISM_OK;
}

/* Adds a record that reserve_one made room for and whose key is absent. */
static void add_record(jstore *s, json_t *r) {
    s->rec[s->n++] = r;
    s->slot[table_find(s, rec_key(r))] = s->n;
}

static bool blank(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r') return false;
    return true;
}

static prism_status read_whole(int fd, const char *path, char **buf, size_t *len) {
    struct stat st;
    if (fstat(fd, &st) != 0) return prism_error(PRISM_E_IO, "%s: cannot stat: %s", path, strerror(errno));
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *b = malloc(cap);
    if (!b) return prism_error(PRISM_E_NOMEM, "%s: out of memory reading %zu bytes", path, cap);
    for (;;) {
        if (n == cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
            }
            b = nb;
            cap *= 2;
        }
        ssize_t r = pread(fd, b + n, cap - n, (off_t)n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            free(b);
            return prism_error(PRISM_E_IO, "%s: read failed: %s", path, strerror(errno));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    *buf = b;
    *len = n;
    return PRISM_OK;
}

/* Parses buf into s; *good_end receives the end of the last complete record. */
static prism_status load_records(jstore *s, const char *buf, size_t len, size_t *good_end) {
    size_t pos = 0, line = 0;
    *good_end = 0;
    while (pos < len) {
        line++;
        const char *nl = memchr(buf + pos, '\n', len - pos);
        if (!nl) return PRISM_OK; /* torn last line: no '\n' (also a zero-filled tail) */
        size_t n = (size_t)(nl - (buf + pos)), next = pos + n + 1;
        if (blank(buf + pos, n)) {
            pos = *good_end = next;
            continue;
        }
        json_error_t err;
        json_t *r = json_loadb(buf + pos, n, JSON_REJECT_DUPLICATES, &err);
        if (!r) {
            if (next == len) return PRISM_OK; /* torn last line: cut on open */
            return prism_error(PRISM_E_FORMAT, "%s:%zu: malformed record (%s at column %d)", s->path, line,
                               err.text, err.column);
        }
        const char *key = rec_key(r);
        if (!json_is_object(r) || !key || !*key) {
            json_decref(r);
            return prism_error(PRISM_E_FORMAT, "%s:%zu: record has no string \"key\"", s->path, line);
        }
        prism_status rc = reserve_one(s);
        if (rc) {
            json_decref(r);
            return rc;
        }
        size_t at = table_find(s, key);
        if (s->slot[at]) {
            /* Find the first occurrence's line number for the message. */
            size_t first_idx = s->slot[at] - 1, ln = 0, p = 0, seen = 0;
            while (p < pos) {
                const char *e = memchr(buf + p, '\n', pos - p);
                ln++;
                if (!blank(buf + p, (size_t)(e - (buf + p))) && seen++ == first_idx) break;
                p = (size_t)(e - buf) + 1;
            }
            rc = prism_error(PRISM_E_FORMAT, "%s:%zu: duplicate key %s (first at line %zu)", s->path, line, key, ln);
            json_decref(r);
            return rc;
        }
        add_record(s, r);
        pos = *good_end = next;
    }
    return PRISM_OK;
}

prism_status jstore_open(const char *path, jstore **out) {
    *out = NULL;
    jstore *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    }
    s->sync = true;
    s->fd = -1;
    prism_status rc;
    bool existed = access(path, F_OK) == 0;
    s->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (s->fd < 0) {
        rc = prism_error(PRISM_E_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (!existed) {
        /* Make the new file's directory entry durable too. */
        if ((rc = fsync_parent(path, false))) goto fail;
    }
    char *buf = NULL;
    size_t len = 0, good_end = 0;
    if ((rc = read_whole(s->fd, path, &buf, &len))) goto fail;
    rc = load_records(s, buf, len, &good_end);
    free(buf);
    if (rc) goto fail;
    if (good_end < len) {
        if (ftruncate(s->fd, (off_t)good_end) != 0 || fsync(s->fd) != 0) {
            rc = prism_error(PRISM_E_IO, "%s: cannot cut off the incomplete last record (%zu bytes): %s", path,
                             len - good_end, strerror(errno));
            goto fail;
        }
        s->repaired = len - good_end;
    }
    s->size = good_end;
    *out = s;
    return PRISM_OK;
fail:
    jstore_close(s);
    return rc;
}

void jstore_close(jstore *s) {
    if (!s) return;
    if (s->fd >= 0) close(s->fd);
    for (size_t i = 0; i < s->n; i++) json_decref(s->rec[i]);
    free(s->rec);
    free(s->slot);
    free(s->path);
    free(s);
}

void jstore_set_sync(jstore *s, bool sync) { s->sync = sync; }
size_t jstore_count(const jstore *s) { return s->n; }
const json_t *jstore_at(const jstore *s, size_t i) { return i < s->n ? s->rec[i] : NULL; }
uint64_t jstore_repaired_bytes(const jstore *s) { return s->repaired; }
const char *jstore_path(const jstore *s) { return s->path; }

const json_t *jstore_get(const jstore *s, const char *key) {
    if (!key || !s->n_slot) return NULL;
    size_t i = table_find(s, key);
    return s->slot[i] ? s->rec[s->slot[i] - 1] : NULL;
}

/* Cuts the file back to the last acknowledged record after a failed append. */
static void undo_append(jstore *s) {
    if (ftruncate(s->fd, (off_t)s->size) != 0) s->broken = true;
}

prism_status jstore_append(jstore *s, json_t *obj) {
    const char *key = json_is_object(obj) ? rec_key(obj) : NULL;
    if (!key || !*key)
        return prism_error(PRISM_E_ARG, "%s: a record must be a JSON object with a non-empty string \"key\"",
                           s->path);
    if (s->broken)
        return prism_error(PRISM_E_IO, "%s: an earlier append failed and could not be undone; reopen the store",
                           s->path);
    if (jstore_get(s, key)) return prism_error(PRISM_E_ARG, "%s: duplicate key %s", s->path, key);
    prism_status rc = reserve_one(s);
    if (rc) return rc;

    /* Compact JSON escapes control characters, so the text has no '\n'. */
    char *txt = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!txt) return prism_error(PRISM_E_ARG, "%s: record %s cannot be serialised (invalid UTF-8?)", s->path, key);
    size_t n = strlen(txt);
    char *line = realloc(txt, n + 2);
    if (!line) {
        free(txt);
        return prism_error(PRISM_E_NOMEM, "%s: out of memory", s->path);
    }
    line[n++] = '\n';

    ssize_t w;
    do w = write(s->fd, line, n);
    while (w < 0 && errno == EINTR);
    int err = errno;
    free(line);
    if (w != (ssize_t)n) {
        undo_append(s);
        return prism_error(PRISM_E_IO, "%s: cannot append record %s: %s", s->path, key,
                           w < 0 ? strerror(err) : "short write");
    }
    if (s->sync && fdatasync(s->fd) != 0) {
        err = errno;
        undo_append(s);
        return prism_error(PRISM_E_IO, "%s: cannot sync record %s: %s", s->path, key, strerror(err));
    }
    s->size += n;
    add_record(s, json_incref(obj));
    return PRISM_OK;
}

prism_status jstore_append_new(jstore *s, json_t *obj) {
    if (!obj) return prism_error(PRISM_E_NOMEM, "%s: no record to append (allocation failed)", s->path);
    prism_status rc = jstore_append(s, obj);
    json_decref(obj);
    return rc;
}

/* ---------------------------------------------------------------- files */

prism_status store_mkdir_p(const char *dir) {
    char p[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof p) return prism_error(PRISM_E_ARG, "%s: invalid directory name", dir);
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return prism_error(PRISM_E_IO, "%s: cannot create directory: %s", p, strerror(errno));
        p[i] = c;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return prism_error(PRISM_E_IO, "%s: not a directory", dir);
    return PRISM_OK;
}

prism_status store_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return prism_error(PRISM_E_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    int r = fsync(fd), err = errno;
    close(fd);
    /* Some filesystems refuse fsync on directories; nothing more can be done there. */
    if (r != 0 && err != EINVAL && err != ENOTSUP)
        return prism_error(PRISM_E_IO, "%s: cannot sync directory: %s", dir, strerror(err));
    return PRISM_OK;
}

/* fsync of path's directory; a directory that does not exist is fine when
 * missing_ok (nothing in it to make durable). */
static prism_status fsync_parent(const char *path, bool missing_ok) {
    char dir[4096];
    const char *sl = strrchr(path, '/');
    size_t n = sl ? (size_t)(sl - path) : 1;
    if (n >= sizeof dir) return prism_error(PRISM_E_ARG, "%s: path too long", path);
    if (!sl) memcpy(dir, ".", 2);
    else if (n == 0) memcpy(dir, "/", 2);
    else {
        memcpy(dir, path, n);
        dir[n] = 0;
    }
    if (missing_ok && access(dir, F_OK) != 0) return PRISM_OK;
    return store_fsync_dir(dir);
}

/* path.tmp written, fsync'd, renamed over path, directory fsync'd. */
static prism_status write_atomic(const char *path, const char *data, size_t n) {
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return prism_error(PRISM_E_ARG, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return prism_error(PRISM_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int err = w < 0 ? errno : EIO;
            close(fd);
            unlink(tmp);
            return prism_error(PRISM_E_IO, "%s: write failed: %s", tmp, strerror(err));
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        int err = errno;
        close(fd);
        unlink(tmp);
        return prism_error(PRISM_E_IO, "%s: sync failed: %s", tmp, strerror(err));
    }
    if (close(fd) != 0) {
        unlink(tmp);
        return prism_error(PRISM_E_IO, "%s: close failed: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return prism_error(PRISM_E_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(err));
    }
    return fsync_parent(path, false);
}

prism_status write_json_atomic(const char *path, const json_t *v) {
    char *txt = json_dumps(v, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!txt) return prism_error(PRISM_E_ARG, "%s: value cannot be serialised as JSON", path);
    size_t n = strlen(txt);
    char *t = realloc(txt, n + 2);
    if (!t) {
        free(txt);
        return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    }
    t[n++] = '\n';
    prism_status rc = write_atomic(path, t, n);
    free(t);
    return rc;
}

prism_status hash_file(const char *path, uint64_t *out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return prism_error(PRISM_E_IO, "%s: cannot open: %s", path, strerror(errno));
    uint64_t h = FNV1A64_INIT;
    char buf[65536];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int err = errno;
            close(fd);
            return prism_error(PRISM_E_IO, "%s: read failed: %s", path, strerror(err));
        }
        if (r == 0) break;
        h = fnv1a64(buf, (size_t)r, h);
    }
    close(fd);
    *out = h;
    return PRISM_OK;
}

/* ---------------------------------------------------------------- stage manifests */

static prism_status stage_path(char *dst, size_t cap, const char *run_dir, const char *stage, const char *ext) {
    if (!stage || !*stage) return prism_error(PRISM_E_ARG, "%s: empty stage name", run_dir);
    for (const char *c = stage; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' ||
              *c == '-' || *c == '.'))
            return prism_error(PRISM_E_ARG, "%s: invalid stage name \"%s\" (use letters, digits, _ - .)", run_dir,
                               stage);
    if ((size_t)snprintf(dst, cap, "%s/stages/%s%s", run_dir, stage, ext) >= cap)
        return prism_error(PRISM_E_ARG, "%s: path too long", run_dir);
    return PRISM_OK;
}

static prism_status stages_dir(const char *run_dir) {
    char d[4096];
    if ((size_t)snprintf(d, sizeof d, "%s/stages", run_dir) >= sizeof d)
        return prism_error(PRISM_E_ARG, "%s: path too long", run_dir);
    return store_mkdir_p(d);
}

/* Compact text of a setting's value for messages, cut to a readable length. */
static char *show_value(const json_t *v) {
    char *t = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (!t) return NULL;
    if (strlen(t) <= 80) return t;
    char *cut = truncate_utf8(t, 77);
    free(t);
    if (!cut) return NULL;
    size_t n = strlen(cut);
    char *r = realloc(cut, n + 4);
    if (!r) {
        free(cut);
        return NULL;
    }
    memcpy(r + n, "...", 4);
    return r;
}

/* Appends printf text to a growing heap string; false on allocation failure. */
static bool sappend(char **s, size_t *len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool sappend(char **s, size_t *len, const char *fmt, ...) {
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *n = k >= 0 ? realloc(*s, *len + (size_t)k + 1) : NULL;
    if (!n) {
        va_end(ap2);
        return false;
    }
    vsnprintf(n + *len, (size_t)k + 1, fmt, ap2);
    va_end(ap2);
    *s = n;
    *len += (size_t)k;
    return true;
}

/* "setting K changed from A to B, setting L added (now C), ..." over the union of keys. */
static char *describe_changes(const json_t *old, const json_t *cur) {
    json_t *keys = json_object();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)old, k, v) json_object_set(keys, k, json_true());
    json_object_foreach((json_t *)cur, k, v) json_object_set(keys, k, json_true());
    char *out = NULL;
    size_t len = 0;
    bool ok = true;
    /* Sorted key order keeps the message stable. */
    const char **names = malloc((json_object_size(keys) + 1) * sizeof *names);
    size_t nk = 0;
    if (!names) ok = false;
    else
        json_object_foreach(keys, k, v) names[nk++] = k;
    for (size_t i = 1; ok && i < nk; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            const char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    for (size_t i = 0; ok && i < nk; i++) {
        const json_t *a = json_object_get(old, names[i]), *b = json_object_get(cur, names[i]);
        if (a && b && json_equal((json_t *)a, (json_t *)b)) continue;
        char *sa = a ? show_value(a) : NULL, *sb = b ? show_value(b) : NULL;
        const char *sep = len ? ", " : "";
        if (a && b)
            ok = sappend(&out, &len, "%ssetting %s changed from %s to %s", sep, names[i], sa ? sa : "?",
                         sb ? sb : "?");
        else if (b)
            ok = sappend(&out, &len, "%ssetting %s added (now %s)", sep, names[i], sb ? sb : "?");
        else
            ok = sappend(&out, &len, "%ssetting %s removed (was %s)", sep, names[i], sa ? sa : "?");
        free(sa);
        free(sb);
    }
    free(names);
    json_decref(keys);
    if (!ok) {
        free(out);
        return NULL;
    }
    return out;
}

prism_status stage_check(const char *run_dir, const char *stage, const char *settings_json, char **why) {
    if (why) *why = NULL;
    char path[4096];
    prism_status rc = stage_path(path, sizeof path, run_dir, stage, ".json");
    if (rc) return rc;
    json_error_t err;
    json_t *cur = json_loads(settings_json ? settings_json : "", 0, &err);
    if (!json_is_object(cur)) {
        json_decref(cur);
        return prism_error(PRISM_E_ARG, "stage %s: settings are not a JSON object (%s)", stage,
                           cur ? "another JSON value" : err.text);
    }
    if (access(path, F_OK) != 0) {
        rc = stages_dir(run_dir);
        if (!rc) rc = write_json_atomic(path, cur);
        json_decref(cur);
        return rc;
    }
    json_t *old = json_load_file(path, 0, &err);
    if (!json_is_object(old)) {
        json_decref(old);
        json_decref(cur);
        return prism_error(PRISM_E_FORMAT, "%s:%d: malformed stage manifest (%s)", path, err.line,
                           old ? "not a JSON object" : err.text);
    }
    if (json_equal(old, cur)) {
        json_decref(old);
        json_decref(cur);
        return PRISM_OK;
    }
    char *changes = describe_changes(old, cur);
    json_decref(old);
    json_decref(cur);
    char *msg = NULL;
    size_t len = 0;
    if (!changes ||
        !sappend(&msg, &len,
                 "stage %s: %s; earlier records were made with the old settings — use a new RUN_DIR or "
                 "--force-restage %s",
                 stage, changes, stage)) {
        free(changes);
        free(msg);
        return prism_error(PRISM_E_NOMEM, "stage %s: settings changed (out of memory describing how)", stage);
    }
    free(changes);
    rc = prism_error(PRISM_E_ARG, "%s", msg);
    if (why) *why = msg;
    else free(msg);
    return rc;
}

prism_status stage_mark_done(const char *run_dir, const char *stage) {
    char path[4096];
    prism_status rc = stage_path(path, sizeof path, run_dir, stage, ".done");
    if (rc || (rc = stages_dir(run_dir))) return rc;
    char when[32] = "";
    time_t t = time(NULL);
    struct tm tm;
    if (gmtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *v = json_pack("{s:s, s:s}", "stage", stage, "finished", when);
    if (!v) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    rc = write_json_atomic(path, v);
    json_decref(v);
    return rc;
}

bool stage_is_done(const char *run_dir, const char *stage) {
    char path[4096];
    if (stage_path(path, sizeof path, run_dir, stage, ".done")) return false;
    return access(path, F_OK) == 0;
}

static prism_status remove_file(const char *path) {
    if (unlink(path) != 0 && errno != ENOENT)
        return prism_error(PRISM_E_IO, "%s: cannot remove: %s", path, strerror(errno));
    return PRISM_OK;
}

prism_status stage_reset(const char *run_dir, const char *stage, const char *const *record_files, size_t n) {
    char done[4096], manifest[4096];
    prism_status rc = stage_path(done, sizeof done, run_dir, stage, ".done");
    if (rc || (rc = stage_path(manifest, sizeof manifest, run_dir, stage, ".json"))) return rc;
    if ((rc = remove_file(done))) return rc;
    for (size_t i = 0; i < n; i++) {
        if ((rc = remove_file(record_files[i]))) return rc;
        if ((rc = fsync_parent(record_files[i], true))) return rc;
    }
    if ((rc = remove_file(manifest))) return rc;
    return fsync_parent(manifest, true);
}
