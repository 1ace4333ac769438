/* cmd_bootstrap.c — `prism bootstrap` and `prism report`. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "prism/bootstrap.h"

static const char *USAGE_BOOT =
    "usage: prism bootstrap --model DIR --out RUN_DIR [options]\n"
    "  data\n"
    "    --domains a,b,c            (default: the paper's 12: writing, roleplay, reasoning, math, coding,\n"
    "                               extraction, stem, humanities, critic, safety_monitor, helpful, compliant)\n"
    "    --personas DIR             DIR/<domain>.txt instead of model-written personas\n"
    "    --persona-length min|half|full   one sentence, ~60 or ~150 words (default full)\n"
    "    --queries-per-domain N     (50)     --max-candidates N (4 x queries)\n"
    "    --query-temp T (0.9)  --max-query-tokens N (96)\n"
    "    --answer-temp T (0.7) --max-answer-tokens N (512)\n"
    "    --judge-mode prob|text (prob)   --judge-max-bytes N (2000)\n"
    "    --batch N (16)  --seed S (0)  --chat-template NAME  --device cpu|cuda[:N]\n"
    "  gate\n"
    "    --gate-epochs N (200) --gate-lr X (1e-3) --gate-weight-decay X (1e-4) --gate-batch N (32)\n"
    "    --holdout F (0.2)  --route-rate P (calibrate the threshold so a fraction P of queries routes)\n"
    "  distillation (top-k KL, teacher = base model with the persona)\n"
    "    --lora-r N (16) --lora-alpha X (32) --lr X (2e-4) --weight-decay X (0.01) --warmup-ratio X (0.1)\n"
    "    --schedule linear|cosine|constant (linear) --clip X (1.0) --micro-batch N (1) --grad-accum N (16)\n"
    "    --epochs N (10) --max-len N (1024) --kl-topk K (64) --kl-temperature T (2) --no-recompute\n"
    "  process\n"
    "    --stop-after STAGE (personas|queries|answers|judge|features|gate|distill)  --quiet  --threads N\n"
    "Re-running the same command resumes where a killed run stopped.\n";

int cmd_bootstrap(int argc, char **argv) {
    bootstrap_params p = bootstrap_default_params();
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define V() cli_value(argc, argv, &i)
#define IS(s) (!strcmp(a, s))
        if (IS("--help") || IS("-h")) { fputs(USAGE_BOOT, stdout); return 0; }
        else if (IS("--model") || IS("-m")) p.model_dir = V();
        else if (IS("--out") || IS("--run")) p.run_dir = V();
        else if (IS("--domains")) p.domains = V();
        else if (IS("--personas")) p.personas_dir = V();
        else if (IS("--persona-length")) {
            const char *v = V();
            p.persona_length = !strcmp(v, "min") ? PERSONA_MIN : !strcmp(v, "half") ? PERSONA_HALF : !strcmp(v, "full") ? PERSONA_FULL : -1;
            if (p.persona_length < 0) cli_usage_error("--persona-length: expected min, half or full, got \"%s\"", v);
        }
        else if (IS("--chat-template")) p.chat_template = V();
        else if (IS("--device")) p.device = V();
        else if (IS("--queries-per-domain")) p.queries_per_domain = (int32_t)cli_long(a, V(), 1, 100000);
        else if (IS("--max-candidates")) p.max_candidates = (int32_t)cli_long(a, V(), 1, 1000000);
        else if (IS("--query-temp")) p.query_temperature = (float)cli_double(a, V(), 0, 10);
        else if (IS("--max-query-tokens")) p.max_query_tokens = (int32_t)cli_long(a, V(), 1, 4096);
        else if (IS("--answer-temp")) p.answer_temperature = (float)cli_double(a, V(), 0, 10);
        else if (IS("--max-answer-tokens")) p.max_answer_tokens = (int32_t)cli_long(a, V(), 1, 65536);
        else if (IS("--judge-mode")) {
            const char *v = V();
            if (strcmp(v, "prob") && strcmp(v, "text")) cli_usage_error("--judge-mode: expected prob or text, got \"%s\"", v);
            p.judge_text = !strcmp(v, "text");
        }
        else if (IS("--judge-max-bytes")) p.judge_max_bytes = (int32_t)cli_long(a, V(), 16, 1 << 20);
        else if (IS("--batch")) p.batch = (int32_t)cli_long(a, V(), 1, 256);
        else if (IS("--seed")) p.seed = (uint64_t)cli_long(a, V(), 0, 0x7fffffffffffffffL);
        else if (IS("--gate-epochs")) p.gate.epochs = (int32_t)cli_long(a, V(), 1, 1000000);
        else if (IS("--gate-lr")) p.gate.lr = cli_double(a, V(), 1e-9, 10);
        else if (IS("--gate-weight-decay")) p.gate.weight_decay = cli_double(a, V(), 0, 10);
        else if (IS("--gate-batch")) p.gate.batch_size = (int32_t)cli_long(a, V(), 1, 1 << 20);
        else if (IS("--holdout")) p.gate.holdout_frac = cli_double(a, V(), 0, 0.9);
        else if (IS("--route-rate")) p.route_rate = cli_double(a, V(), 0, 1);
        else if (IS("--lora-r")) p.lora.r = (int32_t)cli_long(a, V(), 1, 4096);
        else if (IS("--lora-alpha")) p.lora.alpha = (float)cli_double(a, V(), 1e-6, 1e6);
        else if (IS("--lr")) p.lr = cli_double(a, V(), 1e-12, 10);
        else if (IS("--weight-decay")) p.weight_decay = cli_double(a, V(), 0, 10);
        else if (IS("--warmup-ratio")) p.warmup_ratio = cli_double(a, V(), 0, 1);
        else if (IS("--schedule")) p.schedule = V();
        else if (IS("--clip")) p.max_grad_norm = cli_double(a, V(), 0, 1e9);
        else if (IS("--micro-batch")) p.micro_batch = (int32_t)cli_long(a, V(), 1, 4096);
        else if (IS("--grad-accum")) p.grad_accum = (int32_t)cli_long(a, V(), 1, 4096);
        else if (IS("--epochs")) p.epochs = (int32_t)cli_long(a, V(), 1, 100000);
        else if (IS("--max-len")) p.max_len = (int32_t)cli_long(a, V(), 2, 1 << 20);
        else if (IS("--kl-topk")) p.kl_topk = (int32_t)cli_long(a, V(), 1, 1 << 20);
        else if (IS("--kl-temperature")) p.kl_temperature = (float)cli_double(a, V(), 1e-3, 1e3);
        else if (IS("--no-recompute")) p.recompute = false;
        else if (IS("--stop-after")) p.stop_after = V();
        else if (IS("--quiet") || IS("-q")) p.quiet = true;
        else if (IS("--threads") || IS("-t")) threads = (int)cli_long(a, V(), 1, 1024);
        else cli_usage_error("bootstrap: unknown option \"%s\"", a);
#undef V
#undef IS
    }
    if (!p.model_dir || !p.run_dir) cli_usage_error("bootstrap: --model DIR and --out RUN_DIR are required");
    if (threads > 0) omp_set_num_threads(threads);
    if (prism_bootstrap(&p)) cli_die("bootstrap");
    if (!p.quiet) fprintf(stderr, "bootstrap: %s is ready; see prism report %s\n", p.run_dir, p.run_dir);
    return 0;
}

int cmd_report(int argc, char **argv) {
    if (argc != 2 || argv[1][0] == '-') cli_usage_error("usage: prism report RUN_DIR");
    if (prism_report(argv[1])) cli_die("report");
    return 0;
}
