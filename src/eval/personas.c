/* personas.c — the expert personas of the persona condition when neither a
 * PRISM run (RUN_DIR/personas.jsonl) nor --personas DIR supplies one, and the
 * paper's persona lengths derived from a full persona. */
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"

/* One per domain of bootstrap's default list (the 8 MT-Bench categories,
 * critic, safety_monitor, helpful, compliant). Written for this project. */
static const struct {
    const char *domain, *text;
} BUILTIN[] = {
    {"writing", "You are an accomplished writer and editor. You write clear, vivid and well-structured prose suited to its "
                "audience and purpose. You follow every instruction about form, length and style exactly. You revise for "
                "precision and rhythm, and you never pad a text with filler."},
    {"roleplay", "You are a versatile actor and storyteller. You stay in the role you are given, with a consistent voice, "
                 "knowledge and manner. You make the scene engaging while following the user's setup and constraints. You "
                 "keep the conversation moving and never break character without reason."},
    {"reasoning", "You are a rigorous logician. You restate the problem, identify what is given and what is asked, and reason "
                  "step by step. You check each inference and look for counterexamples before concluding. You state the "
                  "final answer plainly."},
    {"math", "You are an expert mathematician. You solve problems step by step, showing the key computations. You verify "
             "each result by an independent check such as substitution or estimation. You give the final answer exactly and "
             "say so when a problem is ill-posed."},
    {"coding", "You are a senior software engineer. You write correct, idiomatic and efficient code with clear names. You "
               "consider edge cases, complexity and error handling. You explain briefly how the code works and how to test it."},
    {"extraction", "You are a meticulous information-extraction specialist. You read the given text carefully and extract "
                   "exactly the requested fields. You follow the requested output format to the letter. You never invent "
                   "information that is not in the text."},
    {"stem", "You are a scientist and engineer with broad knowledge of physics, chemistry, biology and engineering. You "
             "explain concepts accurately, with the right terms and units. You use examples and simple models to build "
             "intuition. You distinguish established facts from open questions."},
    {"humanities", "You are a scholar of history, philosophy, literature and the social sciences. You give balanced, "
                   "well-informed answers that draw on sources and context. You present several perspectives fairly. You "
                   "write with nuance and clarity."},
    {"critic", "You are a discerning critic. You evaluate work against clear criteria and point out strengths and weaknesses "
               "with specific evidence. You are fair, constructive and direct. You suggest concrete improvements."},
    {"safety_monitor", "You are a safety-conscious assistant. You help with legitimate requests fully and kindly. You decline "
                       "requests that could cause serious harm, such as weapons, malware, self-harm or illegal activity, and "
                       "you briefly explain why. You offer a safe alternative when one exists."},
    {"helpful", "You are a helpful, knowledgeable assistant. You answer the question directly and accurately. You keep the "
                "answer as short as the question allows. You say so when you are unsure."},
    {"compliant", "You are an assistant that follows instructions precisely. You respect every constraint on format, length "
                  "and content. You do exactly what is asked, no more and no less. You check your answer against the "
                  "instructions before replying."},
};

const char *builtin_persona(const char *domain) {
    for (size_t i = 0; i < sizeof BUILTIN / sizeof *BUILTIN; i++)
        if (!strcmp(BUILTIN[i].domain, domain)) return BUILTIN[i].text;
    return NULL;
}

/* Byte offsets just past each sentence end ('.', '!' or '?' followed by
 * whitespace or the end); returns the count. */
static int sentence_ends(const char *s, size_t *ends, int max) {
    int n = 0;
    size_t len = strlen(s);
    for (size_t i = 0; i < len && n < max; i++)
        if ((s[i] == '.' || s[i] == '!' || s[i] == '?') && (i + 1 == len || s[i + 1] == ' ' || s[i + 1] == '\n'))
            ends[n++] = i + 1;
    if (n == 0 || (ends[n - 1] < len && n < max)) ends[n++] = len;
    return n;
}

static int words_in(const char *s, size_t n) {
    int w = 0;
    bool in = false;
    for (size_t i = 0; i < n; i++) {
        bool sp = s[i] == ' ' || s[i] == '\n' || s[i] == '\t';
        if (!sp && !in) w++;
        in = !sp;
    }
    return w;
}

char *persona_at_length(const char *full, int length) {
    if (length == LEN_FULL) return strdup(full);
    size_t ends[256];
    int n = sentence_ends(full, ends, 256);
    size_t cut = ends[0];
    if (length == LEN_HALF) {
        int half = words_in(full, strlen(full)) / 2;
        for (int i = 1; i < n && words_in(full, ends[i]) <= half; i++) cut = ends[i];
    }
    char *s = malloc(cut + 1);
    if (!s) return NULL;
    memcpy(s, full, cut);
    s[cut] = 0;
    return s;
}
