/* main.c — the prism command: dispatch to subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

int cmd_train(int argc, char **argv);  /* cmd_train.c */
int cmd_export(int argc, char **argv); /* cmd_export.c */
int cmd_eval(int argc, char **argv), cmd_study(int argc, char **argv); /* cmd_eval.c */
int cmd_serve(int argc, char **argv);  /* cmd_serve.c */

static const char *USAGE =
    "usage: prism <command> [options]\n"
    "\n"
    "commands:\n"
    "  generate  --model DIR (--prompt TEXT | --chat TEXT | --ids 1,2,3) [options]\n"
    "            generate a continuation; --prompt and --chat may repeat (one batch)\n"
    "  chat      --model DIR            interactive multi-turn chat, streamed\n"
    "  tokenize  --model DIR (--text-file F | --text T) [--add-special]\n"
    "            print token ids as a JSON array (DIR may hold only tokenizer files)\n"
    "  logits    --model DIR --ids 1,2,3 --out F.safetensors\n"
    "            write F32 logits of every position as tensor \"logits\" [T, vocab]\n"
    "  info      --model DIR            architecture, sizes, dtype, memory needed\n"
    "  train-lora --model DIR --data train.jsonl --out ADAPTER_DIR [options]\n"
    "            train a LoRA adapter (see \"train-lora options\" below and the README)\n"
    "  export-lora --model DIR --adapter A --merged OUT\n"
    "            write base + adapter merged as a Hugging Face checkpoint\n"
    "  bootstrap --model DIR --out RUN_DIR [--domains a,b] [options]\n"
    "            PRISM: personas, queries, answers, self-judging, gate, distillation\n"
    "            (prism bootstrap --help lists every option; re-run to resume)\n"
    "  report    RUN_DIR                per-domain queries, win rate, gate accuracy, routing\n"
    "  eval      --model DIR --out EVAL_DIR [--prism RUN_DIR] [--suite LIST] [--mode LIST] [--limit N]\n"
    "            MMLU, MT-Bench, safety and over-refusal per mode, routing analysis (prism eval --help)\n"
    "  study     --model DIR --out DIR  persona length x placement grid against base (prism study --help)\n"
    "  serve     --model DIR [--prism RUN_DIR] [--adapter NAME=DIR] [--port 8080]\n"
    "            OpenAI-compatible HTTP server, continuous batching (prism serve --help)\n"
    "\n"
    "common options:\n"
    "  --device cpu|cuda[:N]  where the model runs (default $PRISM_DEVICE, else cpu); cuda needs\n"
    "                     the module build/prism-cuda.so (built when nvcc is found) and a GPU\n"
    "                     of compute capability 8.0+; `prism info --device cuda` checks both\n"
    "  --threads N        worker threads (default: all cores)\n"
    "  --precision exact|fast   exact = F32 activations everywhere (matches transformers to\n"
    "                     ~1e-6); fast (default) = BF16 activations in prefill matmuls of BF16 models\n"
    "  --ctx N            max tokens per sequence (default min(max_position_embeddings, 4096))\n"
    "  --chat-template NAME  override template detection: chatml, chatml-plain, qwen3,\n"
    "                     qwen3-nothink, llama3, llama3.1, mistral, mistral-v0.1, llama2, raw\n"
    "\n"
    "generate / chat options:\n"
    "  --system TEXT      system prompt for --chat and chat\n"
    "  -n, --max-tokens N new tokens (default 256)\n"
    "  --temp T           temperature, 0 = greedy (defaults for all sampling options come\n"
    "                     from generation_config.json; greedy when it does not sample)\n"
    "  --top-k K  --top-p P  --min-p P  --repeat-penalty R  --repeat-last-n N  --seed S\n"
    "  --stop STR         stop string (repeatable)\n"
    "  --ignore-eos       keep generating past end-of-sequence tokens\n"
    "  --ids-out          print the generated ids as a JSON array instead of text\n"
    "  --stats            print load time, prefill and decode speed to stderr\n"
    "  --prism RUN_DIR    PRISM routed inference (generate, chat, logits): the gate reads layer 0\n"
    "                     at the last prompt token and picks base or adapter; --stats prints\n"
    "                     \"route: base|adapter gate=P\"\n"
    "  --route base|adapter|auto   force a route for comparison (default auto)\n"
    "\n"
    "adapters (generate, chat, logits):\n"
    "  --adapter DIR      load a PEFT LoRA adapter (repeatable); the first one applies to\n"
    "                     every sequence unless --use picks another\n"
    "  --use NAME         apply the loaded adapter with this name (its directory's base name)\n"
    "\n"
    "train-lora options:\n"
    "  --loss ce|kl       masked cross-entropy on assistant tokens (default) or top-k KL\n"
    "                     self-distillation from the base model's teacher top-k\n"
    "  -r, --rank N       LoRA rank (default 16)   --alpha A (default 2*rank)   --rslora\n"
    "  --targets LIST     q,k,v,o,gate,up,down, attn, mlp or all (default all)\n"
    "  --layers B:E       adapted layers B..E-1 (default 1: = all but the first), or all\n"
    "  --lr LR            peak learning rate (default 2e-4)\n"
    "  --schedule S       linear (default), cosine or constant, after --warmup N steps (default 0)\n"
    "  --weight-decay W   AdamW decoupled weight decay (default 0)\n"
    "  --max-grad-norm G  clip the global gradient norm (default 1; 0 = off)\n"
    "  --epochs N (default 1)  --batch-size N (default 1)  --grad-accum N (default 1)\n"
    "  --max-steps N      run exactly N optimizer steps (overrides --epochs)\n"
    "  --max-len N        longer examples are truncated with a warning (default 1024);\n"
    "                     --skip-long skips them instead\n"
    "  --seed S           adapter initialisation and per-epoch shuffle (default 42); --no-shuffle\n"
    "  --kl-topk K (default 64)  --kl-temperature T (default 2)   teacher top-k for --loss kl\n"
    "  --save-every N     checkpoint to OUT/checkpoint every N steps (always at the end)\n"
    "  --stop-at-step N   stop after step N with a checkpoint; continue with --resume\n"
    "  --resume           continue exactly from OUT/checkpoint (same options and data)\n"
    "  --save-dtype T     F32 (default), BF16 or F16 for the final adapter\n"
    "  --no-recompute     keep all activations instead of recomputing them per layer\n"
    "  --quiet            no per-step progress lines\n";

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "chat")) return cmd_chat(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "logits")) return cmd_logits(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "bootstrap")) return cmd_bootstrap(argc - 1, argv + 1);
    if (!strcmp(cmd, "report")) return cmd_report(argc - 1, argv + 1);
    if (!strcmp(cmd, "train-lora")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "export-lora")) return cmd_export(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "study")) return cmd_study(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    fprintf(stderr, "prism: unknown command \"%s\"\n\n%s", cmd, USAGE);
    return 2;
}
