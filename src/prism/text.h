/* text.h — pure text helpers for the PRISM pipeline: cleaning a model's raw
 * query output, near-duplicate detection, UTF-8-safe truncation.
 * All functions take NUL-terminated UTF-8 and never split a code point. */
#ifndef PRISM_PRISM_TEXT_H
#define PRISM_PRISM_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* ---------------------------------------------------------------- query cleaning */

/* Queries shorter than this many code points (after cleaning) are dropped: the
 * paper drops anything of 15 characters or fewer. */
#define CLEAN_QUERY_MIN_CHARS 16

/* Turns a model's raw answer to "write a question about X" into one query,
 * or NULL when nothing usable is left (or on allocation failure). Caller frees.
 *
 * Rules, in order:
 *  1. Invalid UTF-8 becomes U+FFFD; control characters other than '\n' become
 *     spaces (so the result always serialises as JSON).
 *  2. Lines are split on '\n' ('\r' counts as whitespace). The first line that
 *     is non-empty after rules 3-6 is kept; everything after it (explanations,
 *     answers, further questions) is dropped. A line that cleans to nothing
 *     (a bare "Question:" label, "**") is skipped, and so is a code fence
 *     (a line starting with "```").
 *  3. Whitespace is trimmed at both ends (ASCII whitespace, NBSP, U+3000, BOM).
 *  4. Leading list markers and labels are removed, repeatedly and in any mix:
 *     - bullets followed by a space: "- ", "* ", "+ ", "• ", "· ", "– ", "— ";
 *     - markdown headings: "#", "##", ... followed by a space;
 *     - numbering of 1-3 digits: "1.", "1)", "1:", "1 -", "(1)", "[1]", "#1",
 *       "#1:", each followed by a space or the end of the line ("1.5 million"
 *       and "2024 was" are left alone);
 *     - labels, case-insensitive, with an optional number and ending in ':'
 *       (or '.', ')', '-' after a number): "Question:", "Query:", "Q:", "Q1:",
 *       "Question 1:", "Question #2.", "User query:", "Prompt:", "Generated
 *       question:", "New question:", "Example question:", "Sample query:";
 *       the label may be wrapped in markdown emphasis: "**Question:**",
 *       "**Question 1**:", "__Query:__", "*Q:*".
 *  5. Surrounding quotes are removed, repeatedly: any of " “ ” „ « » ‹ › 「 」
 *     『 』 ` at both ends; ' ‘ ’ only as a pair at both ends (an apostrophe is
 *     not a quote); a lone opening or closing " “ ” « » 「 」 ` is removed
 *     when it does not occur anywhere else in the line (a cut-off quotation).
 *  6. Markdown emphasis wrapping the whole line is removed: ***x***, **x**,
 *     __x__, *x*, _x_ (only when the marker does not occur inside x).
 *  Rules 3-6 repeat until nothing changes, so '1. "**Why ...?**"' cleans fully.
 *  7. The result has fewer than CLEAN_QUERY_MIN_CHARS code points (15 or
 *     fewer) -> NULL. Internal text is kept as is. */
char *clean_query(const char *raw);

/* ---------------------------------------------------------------- near-duplicates */

#define NEAR_DUP_THRESHOLD 0.7

/* Jaccard similarity (0..1) of the character 3-gram shingle sets of the
 * normalised texts: ASCII lowercased, every ASCII character that is not a
 * letter or digit becomes a space, runs of spaces collapse, ends trimmed;
 * other code points are kept (so CJK text compares by its characters). Texts
 * of fewer than 3 code points form one shingle. Equal normalised texts -> 1,
 * two empty texts -> 1.
 * Why 3-grams: on short questions, 3-grams put light rewordings ("What is" /
 * "What's", "How do I" / "How can I", singular/plural) above 0.7 and questions
 * that differ in their subject ("capital of France" / "of Germany") below it;
 * 4- and 5-grams (and word 3-grams) let most rewordings through.
 * Limit: a long shared frame with a short different subject ("What are common
 * mistakes people make with orchids?" / "... with bitcoin?") can reach 0.7
 * under any shingle size; such templated questions may be merged. */
double text_similarity(const char *a, const char *b);

/* True when similarity >= threshold (threshold <= 0: NEAR_DUP_THRESHOLD), and
 * always when the normalised texts are equal. */
bool near_duplicate(const char *a, const char *b, double threshold);

/* A set of accepted texts; each add compares against every entry (O(n)
 * shingle-set merges), comfortably fast for a few thousand entries. */
typedef struct dedup_set dedup_set;

/* threshold <= 0: NEAR_DUP_THRESHOLD. NULL on allocation failure. */
dedup_set *dedup_new(double threshold);
/* Adds text unless it is a near-duplicate of an entry: returns true when it
 * was added, false when it is a near-duplicate. (On allocation failure it
 * returns true without remembering the text: never drops a query for that.) */
bool dedup_add(dedup_set *d, const char *text);
/* Same test without adding. */
bool dedup_contains(const dedup_set *d, const char *text);
size_t dedup_count(const dedup_set *d);
void dedup_free(dedup_set *d);

/* ---------------------------------------------------------------- UTF-8 */

/* Code points in s (each invalid byte counts as one). */
size_t utf8_count(const char *s);
/* Length in bytes of the longest prefix of s of at most max_bytes bytes that
 * does not end inside a code point. */
size_t utf8_prefix_len(const char *s, size_t max_bytes);
/* Copy of the longest prefix of s of at most max_bytes bytes that does not end
 * inside a code point. Caller frees; NULL on allocation failure. */
char *truncate_utf8(const char *s, size_t max_bytes);
/* As truncate_utf8, but when s must be cut, cuts at the last whitespace within
 * the limit (trailing whitespace dropped) provided that keeps at least half of
 * max_bytes; otherwise falls back to the code-point cut. */
char *truncate_utf8_words(const char *s, size_t max_bytes);

#endif
