/* store.h — the run directory's on-disk records: append-only JSONL stores that
 * survive kill -9, per-stage settings manifests that detect invalidated stages,
 * and small atomic-file helpers.
 *
 * A JSONL store is a plain file of one JSON object per line, each with a string
 * field "key" that is unique in the file. There is no header, so `jq`, `grep`
 * and `wc -l` work on it directly. Crash safety rests on three facts:
 *  - an append is a single write() of "<compact json>\n" on an O_APPEND
 *    descriptor, followed by fdatasync (unless jstore_set_sync(s, false));
 *  - the writer never produces a line without its '\n', a malformed line or a
 *    repeated key, so on open the only damage a crash can leave is an
 *    incomplete (or zero-filled) LAST line, which is cut off and counted in
 *    jstore_repaired_bytes;
 *  - anything else wrong (a malformed line before the last, a duplicate key) is
 *    someone else's doing and is reported as PRISM_E_FORMAT "FILE:LINE: ...",
 *    never dropped silently.
 * A record is visible (jstore_get/at/count) only once its line is on disk.
 * Blank lines are skipped. One writer per file at a time (not locked).
 *
 * Stage manifests: RUN_DIR/stages/<stage>.json holds the settings a stage's
 * records were made with (pretty JSON, sorted keys) and RUN_DIR/stages/<stage>.done
 * marks a finished stage. Stage names are [A-Za-z0-9_.-]+.
 */
#ifndef PRISM_PRISM_STORE_H
#define PRISM_PRISM_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prism.h"

/* ---------------------------------------------------------------- JSONL record store */
typedef struct jstore jstore;

/* Opens path (created if missing, its directory must exist) and loads every
 * record. A torn last line is truncated away (ftruncate + fsync). Errors:
 * PRISM_E_IO (cannot open/read/repair), PRISM_E_FORMAT "path:LINE: malformed
 * record" / "path:LINE: record has no string \"key\"" / "path:LINE: duplicate
 * key K (first at line M)". */
prism_status jstore_open(const char *path, jstore **out);
/* Closes the file and frees every record; accepts NULL. */
void jstore_close(jstore *s);

/* fdatasync after every append (default true). Off only where durability does
 * not matter (tests, scratch runs): a crash then may lose acknowledged records,
 * but still never leaves a half-written one behind once reopened. */
void jstore_set_sync(jstore *s, bool sync);

size_t jstore_count(const jstore *s);
/* Record i in file order (0 <= i < count), NULL when out of range. Owned by the store. */
const json_t *jstore_at(const jstore *s, size_t i);
/* Record with this key, NULL if none. Owned by the store. */
const json_t *jstore_get(const jstore *s, const char *key);
/* Bytes cut off a torn last line when the store was opened (0 if none). */
uint64_t jstore_repaired_bytes(const jstore *s);
const char *jstore_path(const jstore *s);

/* Appends obj (a JSON object with a non-empty string "key" not yet in the
 * store) as one line and, when sync is on, waits until it is on disk. obj is
 * borrowed: on success the store takes its own reference, so the caller must
 * not modify obj afterwards. On failure nothing is kept (the file is truncated
 * back to its previous length) and the error is PRISM_E_ARG (not an object,
 * no key, duplicate key), PRISM_E_NOMEM or PRISM_E_IO. */
prism_status jstore_append(jstore *s, json_t *obj);
/* As jstore_append, but steals obj (decref'd in every case), for
 * jstore_append_new(s, json_pack(...)). A NULL obj is PRISM_E_NOMEM. */
prism_status jstore_append_new(jstore *s, json_t *obj);

/* ---------------------------------------------------------------- stage manifests */

/* Compares a stage's settings (settings_json: a JSON object in text) with
 * RUN_DIR/stages/<stage>.json. Absent: creates RUN_DIR and RUN_DIR/stages if
 * needed, writes the manifest atomically and returns PRISM_OK. Equal (as JSON
 * values; key order and whitespace do not matter): PRISM_OK. Different:
 * PRISM_E_ARG, and *why (if why is not NULL; caller frees) and the error
 * message both read e.g. "stage answers: setting max_answer_tokens changed
 * from 48 to 64; earlier records were made with the old settings — use a new
 * RUN_DIR or --force-restage answers". Settings added or removed are named as
 * such. *why is NULL whenever the result is PRISM_OK. */
prism_status stage_check(const char *run_dir, const char *stage, const char *settings_json, char **why);

/* Marks a stage finished: RUN_DIR/stages/<stage>.done, created atomically. */
prism_status stage_mark_done(const char *run_dir, const char *stage);
/* True when RUN_DIR/stages/<stage>.done exists. */
bool stage_is_done(const char *run_dir, const char *stage);
/* Forgets a stage: removes the done marker, then the n record files (paths as
 * given; missing ones are fine), then the manifest, in that order, so that a
 * crash part-way never leaves old records under a fresh manifest. */
prism_status stage_reset(const char *run_dir, const char *stage, const char *const *record_files, size_t n);

/* ---------------------------------------------------------------- files */

/* Writes v as pretty JSON (2-space indent, sorted keys, trailing newline) to
 * path atomically: path.tmp, fsync, rename, fsync of the directory. */
prism_status write_json_atomic(const char *path, const json_t *v);

/* 64-bit FNV-1a: fnv1a64(data, n, FNV1A64_INIT) hashes a buffer; pass the
 * previous result as h to continue over several buffers. */
#define FNV1A64_INIT 0xcbf29ce484222325ULL
uint64_t fnv1a64(const void *data, size_t n, uint64_t h);
/* FNV-1a 64 of the bytes of a file (e.g. config.json for the model identity). */
prism_status hash_file(const char *path, uint64_t *out);

/* mkdir -p (mode 0755); errors name the directory. */
prism_status store_mkdir_p(const char *dir);
/* fsync of a directory, so renames and creations in it are durable. */
prism_status store_fsync_dir(const char *dir);

#endif
