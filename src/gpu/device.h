/* device.h — host side of the CUDA backend (see gpu.h for the module's interface). */
#ifndef PRISM_GPU_DEVICE_H
#define PRISM_GPU_DEVICE_H

#include "gpu/gpu.h"
#include "model/model.h"

/* The loaded module's table, loading it on first use; PRISM_E_UNSUPPORTED
 * with the reason (built without CUDA, libcudart missing, ...) otherwise. */
prism_status gpu_api(const prism_gpu_api **out);
/* Path of the loaded module ("" before a successful load). */
const char *gpu_module_path(void);
/* Turns a module status + message into prism_last_error(). */
prism_status gpu_check(prism_status st, const char *err);
/* Uploads m's weights to CUDA device `device` (random_init: the module fills
 * them itself, for benchmarks of shapes without checkpoints). */
prism_status gpu_model_attach(prism_model *m, int32_t device, int random_init, uint64_t seed);
void gpu_model_detach(prism_model *m);
/* a's device copy for m's device, uploaded again when a->version changed. */
prism_status gpu_adapter_for(const prism_model *m, const prism_adapter *a, const gpu_adapter **out);
void gpu_adapter_release(prism_adapter *a);

#endif
