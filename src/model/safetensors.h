/* safetensors.h — read-only, mmap-backed access to .safetensors files and
 * sharded checkpoints (model.safetensors.index.json), plus a writer.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [b, e]}, ...,
 *    "__metadata__": {...}}
 * then the data region; offsets are relative to its start. Every header is
 * validated against the file size, the dtype size and the shape, so a lying
 * header is an error, never an out-of-bounds read. */
#ifndef PRISM_MODEL_SAFETENSORS_H
#define PRISM_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "prism.h"

typedef enum { ST_F32 = 0, ST_BF16 = 1, ST_F16 = 2, ST_I32 = 3, ST_I64 = 4, ST_OTHER = 5 } st_dtype;

size_t st_dtype_size(st_dtype dt);
const char *st_dtype_name(st_dtype dt);

typedef struct {
    char *name;
    st_dtype dtype;
    int32_t ndim;
    int64_t shape[8];
    int64_t numel;
    const void *data; /* points into the mmap */
    size_t nbytes;
    int32_t file;     /* index of the file in the set */
} st_tensor;

typedef struct st_set st_set;

/* Opens one file (path ends in .safetensors) or a checkpoint directory:
 * dir/model.safetensors, else dir/model.safetensors.index.json and every
 * shard it names. Errors name the file and the problem. */
prism_status st_open(const char *path, st_set **out);
void st_close(st_set *s);

size_t st_count(const st_set *s);
const st_tensor *st_at(const st_set *s, size_t i);
/* NULL if absent. */
const st_tensor *st_find(const st_set *s, const char *name);
/* Path of the file holding tensor t (for error messages). */
const char *st_file_path(const st_set *s, const st_tensor *t);

/* Copies tensor t converted to F32 into dst[t->numel]. Handles F32/BF16/F16/I32/I64. */
prism_status st_read_f32(const st_set *s, const st_tensor *t, float *dst);

/* Writer: tensors given as F32 data (converted to dtype on write). */
typedef struct {
    const char *name;
    st_dtype dtype;      /* ST_F32, ST_BF16, ST_F16 or ST_I32 */
    int32_t ndim;
    int64_t shape[8];
    const void *data;    /* F32 values, or int32 for ST_I32 */
} st_write_tensor;

/* Writes atomically (to path.tmp, fsync, rename). metadata_json may be NULL
 * or a JSON object text for "__metadata__". */
prism_status st_write(const char *path, const st_write_tensor *ts, size_t n, const char *metadata_json);

/* bf16/f16 <-> f32 scalar conversions (round to nearest even). */
static inline float st_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
uint16_t st_f32_to_bf16(float f);
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);

#endif
