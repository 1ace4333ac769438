/* cmd_eval.c — `prism eval` and `prism study`. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "eval/eval.h"

static const char *USAGE_EVAL =
    "usage: prism eval --model DIR --out EVAL_DIR [options]\n"
    "  what\n"
    "    --suite LIST      mmlu,mtbench,harmbench,jbb,advbench,xstest,jbb_benign (default all; \"safety\" = the\n"
    "                      five safety sets; jbb brings jbb_benign along)\n"
    "    --mode LIST       base,persona,adapter,prism (default all; adapter and prism need --prism)\n"
    "    --prism RUN_DIR   a bootstrapped PRISM run: its adapter, gate and personas\n"
    "    --limit N         at most N items per MMLU subject, MT-Bench category and safety set\n"
    "    --shots 0|5|0,5   MMLU few-shot settings (default 0,5)\n"
    "    --pairwise X:Y,.. MT-Bench pairwise judging of mode X against mode Y, both orders\n"
    "  personas (persona mode)\n"
    "    --personas DIR    DIR/<domain>.txt (or <domain>.<min|half|full>.txt) before the run's and the built-in ones\n"
    "    --persona-map K=D,..   persona domain per suite or suite.category (defaults: mtbench.<cat> = <cat>,\n"
    "                      safety sets = safety_monitor, mmlu = helpful)\n"
    "  models\n"
    "    --judge DIR       judge model (default the model itself)   --judge-chat-template NAME\n"
    "    --chat-template NAME  --ctx N  --threads N  --precision exact|fast\n"
    "  generation\n"
    "    --max-tokens N (512)  --judge-max-tokens N (512)  --judge-max-bytes N (4000)  --temp T (0 = greedy)\n"
    "    --batch N (8)  --seed S (0)  --resamples N (1000 bootstrap resamples)\n"
    "  process\n"
    "    --data DIR (the repository's data/)  --quiet\n"
    "    --no-sync         do not fdatasync each record (faster; a killed process loses nothing, a power cut may)\n"
    "Re-running the same command resumes where a killed run stopped; results.json and report.md are\n"
    "rewritten from all records at the end.\n";

static const char *USAGE_STUDY =
    "usage: prism study --model DIR --out DIR [options]\n"
    "  The paper's persona grid: persona length (min = first sentence, half, full) x placement (system\n"
    "  prompt or in front of the user message), each against base, over the chosen suites.\n"
    "    --lengths min,half,full  --placements system,user\n"
    "  and every prism eval option except --mode and --pairwise (--prism only supplies personas).\n";

static int run(int argc, char **argv, bool study) {
    eval_params p = eval_default_params();
    p.study = study;
    cli_common c = {0};
    c.precision = PRISM_PRECISION_FAST;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define V() cli_value(argc, argv, &i)
#define IS(s) (!strcmp(a, s))
        if (IS("--help") || IS("-h")) { fputs(study ? USAGE_STUDY : USAGE_EVAL, stdout); return 0; }
        else if (cli_common_opt(&c, argc, argv, &i)) {}
        else if (IS("--out")) p.out_dir = V();
        else if (IS("--prism")) p.run_dir = V();
        else if (IS("--judge")) p.judge_dir = V();
        else if (IS("--judge-chat-template")) p.judge_chat_template = V();
        else if (IS("--suite") || IS("--suites")) p.suites = V();
        else if (!study && (IS("--mode") || IS("--modes"))) p.modes = V();
        else if (!study && IS("--pairwise")) p.pairwise = V();
        else if (study && IS("--lengths")) p.lengths = V();
        else if (study && IS("--placements")) p.placements = V();
        else if (IS("--limit")) p.limit = (int32_t)cli_long(a, V(), 0, 1000000);
        else if (IS("--shots")) {
            const char *v = V();
            p.shots0 = !strcmp(v, "0") || !strcmp(v, "0,5") || !strcmp(v, "5,0");
            p.shots5 = !strcmp(v, "5") || !strcmp(v, "0,5") || !strcmp(v, "5,0");
            if (!p.shots0 && !p.shots5) cli_usage_error("--shots: expected 0, 5 or 0,5, got \"%s\"", v);
        }
        else if (IS("--personas")) p.personas_dir = V();
        else if (IS("--persona-map")) p.persona_map = V();
        else if (IS("--max-tokens") || IS("-n")) p.max_tokens = (int32_t)cli_long(a, V(), 1, 1 << 20);
        else if (IS("--judge-max-tokens")) p.judge_max_tokens = (int32_t)cli_long(a, V(), 1, 1 << 20);
        else if (IS("--judge-max-bytes")) p.judge_max_bytes = (int32_t)cli_long(a, V(), 64, 1 << 24);
        else if (IS("--temp")) p.temperature = (float)cli_double(a, V(), 0, 10);
        else if (IS("--batch")) p.batch = (int32_t)cli_long(a, V(), 1, 256);
        else if (IS("--seed")) p.seed = (uint64_t)cli_long(a, V(), 0, 0x7fffffffffffffffL);
        else if (IS("--resamples")) p.resamples = (int32_t)cli_long(a, V(), 0, 1000000);
        else if (IS("--data")) p.data_dir = V();
        else if (IS("--quiet") || IS("-q")) p.quiet = true;
        else if (IS("--no-sync")) p.no_sync = true;
        else cli_usage_error("%s: unknown option \"%s\"", study ? "study" : "eval", a);
#undef V
#undef IS
    }
    if (!c.model || !p.out_dir) cli_usage_error("%s: --model DIR and --out DIR are required", study ? "study" : "eval");
    p.model_dir = c.model;
    p.chat_template = c.chat_template;
    p.n_ctx = c.n_ctx;
    p.mp.n_threads = c.threads;
    p.mp.precision = c.precision;
    cli_apply_device(c.device, &p.mp);
    if (c.threads > 0) omp_set_num_threads(c.threads);
    if (prism_eval(&p)) cli_die(study ? "study" : "eval");
    return 0;
}

int cmd_eval(int argc, char **argv) { return run(argc, argv, false); }
int cmd_study(int argc, char **argv) { return run(argc, argv, true); }
