/* cmd_export.c — `prism export-lora`: base weights with a LoRA adapter merged
 * in (W += scale·B·A), written as a Hugging Face checkpoint directory. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

int cmd_export(int argc, char **argv);

int cmd_export(int argc, char **argv) {
    cli_common c = {.precision = PRISM_PRECISION_EXACT};
    const char *adapter = NULL, *merged = NULL;
    for (int i = 1; i < argc; i++) {
        if (cli_common_opt(&c, argc, argv, &i)) continue;
        if (!strcmp(argv[i], "--adapter")) {
            if (adapter) cli_usage_error("export-lora: give one --adapter");
            adapter = cli_value(argc, argv, &i);
        } else if (!strcmp(argv[i], "--merged") || !strcmp(argv[i], "--out") || !strcmp(argv[i], "-o"))
            merged = cli_value(argc, argv, &i);
        else cli_usage_error("export-lora: unknown option \"%s\"", argv[i]);
    }
    if (!adapter) cli_usage_error("export-lora: --adapter DIR is required");
    if (!merged) cli_usage_error("export-lora: --merged OUT_DIR is required");
    prism_model *m = cli_load_model(&c, NULL);
    prism_adapter *a = NULL;
    if (prism_adapter_load(m, adapter, &a)) cli_die("loading the adapter");
    if (prism_adapter_export_merged(m, a, merged)) cli_die("export-lora");
    fprintf(stderr, "wrote %s: %s merged with adapter %s\n", merged, c.model, adapter);
    prism_adapter_free(a);
    prism_model_free(m);
    return 0;
}
