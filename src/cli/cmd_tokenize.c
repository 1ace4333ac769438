/* cmd_tokenize.c — `prism tokenize`: text -> ids as a JSON array. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL, *file = NULL, *text = NULL;
    bool add_special = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--model") || !strcmp(a, "-m")) dir = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--text-file")) file = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--text")) text = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--add-special")) add_special = true;
        else cli_usage_error("tokenize: unknown option \"%s\"", a);
    }
    if (!dir) cli_usage_error("tokenize: --model DIR is required");
    if (!file == !text) cli_usage_error("tokenize: give exactly one of --text-file F or --text T");
    prism_tokenizer *tok = NULL;
    if (prism_tokenizer_load(dir, &tok)) cli_die("loading tokenizer");
    size_t len = 0;
    char *buf = file ? cli_read_file(file, &len) : NULL;
    if (text) len = strlen(text);
    int32_t *ids = NULL;
    size_t n = 0;
    if (prism_tokenize(tok, file ? buf : text, len, add_special, &ids, &n)) cli_die(file ? file : "tokenizing");
    putchar('[');
    for (size_t k = 0; k < n; k++) printf(k ? ", %d" : "%d", ids[k]);
    puts("]");
    free(ids);
    free(buf);
    prism_tokenizer_free(tok);
    return 0;
}
