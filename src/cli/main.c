/* main.c — the prism command: dispatch to subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

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
    "\n"
    "common options:\n"
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
    "  --stats            print load time, prefill and decode speed to stderr\n";

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
    fprintf(stderr, "prism: unknown command \"%s\"\n\n%s", cmd, USAGE);
    return 2;
}
