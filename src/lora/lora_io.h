/* lora_io.h — internals shared by adapter.c (PEFT adapter directories) and
 * merge.c (merged checkpoint export); not part of the public API. */
#ifndef PRISM_LORA_LORA_IO_H
#define PRISM_LORA_LORA_IO_H

#include <stddef.h>
#include <stdint.h>

#include "lora/lora.h"
#include "model/model.h"

/* The base Linear that target t of layer l adapts (model.layers.l.<parent>.<name>). */
const linear_w *lora_base_linear(const prism_model *m, int32_t layer, lora_target t);

/* "dir/name", malloc'd (caller frees); NULL when out of memory. */
char *lora_path_join(const char *dir, const char *name);

/* mkdir -p; errors name the directory. */
prism_status lora_mkdir_p(const char *dir);

/* Writes n bytes to path atomically: path.tmp, fsync, rename. */
prism_status lora_write_atomic(const char *path, const void *data, size_t n);

/* prism_adapter_export_merged with a chosen shard limit: one model.safetensors
 * when every tensor fits in max_shard_bytes, else model-0000i-of-0000n.safetensors
 * shards of at most max_shard_bytes (a larger tensor gets a shard of its own)
 * plus model.safetensors.index.json. */
prism_status lora_export_merged_sharded(const prism_model *m, const prism_adapter *a, const char *out_dir,
                                        uint64_t max_shard_bytes);

#endif
