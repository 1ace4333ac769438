/* cmd_info.c — `prism info`: what a checkpoint is and what running it costs. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

int cmd_info(int argc, char **argv) {
    cli_common c = {.precision = PRISM_PRECISION_FAST};
    for (int i = 1; i < argc; i++)
        if (!cli_common_opt(&c, argc, argv, &i)) cli_usage_error("info: unknown option \"%s\"", argv[i]);
    char dev[512] = "cpu";
    if (c.device) {
        prism_model_params mp = prism_model_default_params();
        cli_apply_device(c.device, &mp);
        if (prism_device_describe(mp.device, dev, sizeof dev)) cli_die(c.device);
        if (!c.model) { /* `prism info --device cuda`: is the GPU usable? */
            printf("device:       %s\n", dev);
            return 0;
        }
    }
    double load_s = 0;
    prism_model *m = cli_load_model(&c, &load_s);
    prism_model_info f;
    prism_model_get_info(m, &f);
    const double GiB = 1024.0 * 1024 * 1024;
    int64_t kv = prism_model_kv_bytes_per_token(m);
    /* a CUDA model keeps its KV cache in BF16 unless --precision exact */
    const int kv_bf16 = c.device && strncmp(dev, "cpu", 3) && c.precision != PRISM_PRECISION_EXACT;
    if (kv_bf16) kv /= 2;
    int32_t ctx = c.n_ctx ? c.n_ctx : (f.max_pos < 4096 ? f.max_pos : 4096);
    printf("model:        %s\n", c.model);
    printf("architecture: %s (model_type %s)\n", f.arch, f.model_type);
    printf("parameters:   %lld (%.3f B)\n", (long long)f.n_params, f.n_params / 1e9);
    printf("weights:      %s, %.3f GiB as stored (memory-mapped, not copied)\n", f.dtype, f.weight_bytes / GiB);
    printf("layers:       %d, hidden %d, intermediate %d, vocab %d\n", f.n_layers, f.hidden, f.ffn, f.vocab);
    printf("attention:    %d heads, %d kv heads (GQA %d), head_dim %d%s%s\n", f.n_heads, f.n_kv_heads,
           f.n_heads / f.n_kv_heads, f.head_dim, f.qkv_bias ? ", q/k/v bias" : "", f.qk_norm ? ", q/k RMSNorm" : "");
    printf("rope:         %s, theta %g; max positions %d\n", f.rope_type, f.rope_theta, f.max_pos);
    printf("norm eps:     %g; embeddings %s\n", f.rms_eps, f.tied_embeddings ? "tied" : "separate lm_head");
    printf("bos:          %d; eos:", f.bos_id);
    for (int k = 0; k < f.n_eos; k++) printf(" %d", f.eos_ids[k]);
    printf("\nkv cache:     %.1f KiB per token per sequence (%s); %.3f GiB for one sequence of %d tokens\n",
           kv / 1024.0, kv_bf16 ? "BF16" : "F32", (double)kv * ctx / GiB, ctx);
    printf("memory:       ~%.3f GiB for weights + one %d-token sequence\n", (f.weight_bytes + (double)kv * ctx) / GiB, ctx);
    printf("device:       %s\n", dev);
    printf("load time:    %.3f s\n", load_s);
    prism_model_free(m);
    return 0;
}
