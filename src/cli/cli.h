/* cli.h — shared pieces of the prism command: option parsing helpers and the
 * subcommands. Only the CLI prints and exits; the library returns errors. */
#ifndef PRISM_CLI_H
#define PRISM_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "prism.h"

/* Options common to every model command. */
typedef struct {
    const char *model;
    int32_t threads;
    prism_precision precision;
    int32_t n_ctx;
    const char *chat_template;
    const char *device; /* --device: NULL = the library default ($PRISM_DEVICE or cpu) */
} cli_common;

/* Parses "--name value" style options; returns the index of the value or
 * exits with a message if it is missing. */
const char *cli_value(int argc, char **argv, int *i);
/* Number parsing with range checks; exits with "option: expected ..." on error. */
long cli_long(const char *opt, const char *v, long lo, long hi);
double cli_double(const char *opt, const char *v, double lo, double hi);
/* Parses the common options at argv[*i]; returns true if consumed. */
bool cli_common_opt(cli_common *c, int argc, char **argv, int *i);
/* Parses "1,2,3" (or a JSON array "[1, 2, 3]"); exits on malformed input. */
int32_t *cli_parse_ids(const char *opt, const char *s, int32_t *n);
/* Reads a whole file; exits with a message naming it on failure. */
char *cli_read_file(const char *path, size_t *len);
/* Prints "prism: <what>: <last error>" and exits 1. */
_Noreturn void cli_die(const char *what);
_Noreturn void cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
prism_model *cli_load_model(const cli_common *c, double *load_s);
/* Applies --device (if given) to model params; exits on an unknown device. */
void cli_apply_device(const char *device, prism_model_params *mp);

/* Sampling / generation options shared by generate and chat; returns true if
 * argv[*i] was one of them. Options given are recorded in *set (bit per field)
 * so model defaults fill the rest. */
typedef struct {
    prism_generate_params g;
    unsigned set;
    const char *stops[64];
} cli_gen;
bool cli_gen_opt(cli_gen *o, int argc, char **argv, int *i);
/* Fills unset sampling fields from generation_config.json. */
void cli_gen_finish(cli_gen *o, const prism_model *m);

int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_bootstrap(int argc, char **argv);
int cmd_report(int argc, char **argv);

#endif
