/* test_text.c — query cleaning on realistic raw model outputs, near-duplicate
 * detection on reworded vs distinct questions, UTF-8-safe truncation.
 * Expected values are written by hand from the rules in src/prism/text.h. */
#include <string.h>

#include "prism/text.h"
#include "test.h"

/* clean_query(raw) must equal want (NULL = dropped). */
static void check_clean(const char *raw, const char *want) {
    char *got = clean_query(raw);
    bool ok = want ? got && !strcmp(got, want) : got == NULL;
    CHECK(ok, "clean_query(\"%s\")\n     got  %s%s%s\n     want %s%s%s", raw, got ? "\"" : "", got ? got : "NULL",
          got ? "\"" : "", want ? "\"" : "", want ? want : "NULL", want ? "\"" : "");
    free(got);
}

static void test_clean_query(void) {
    /* Plain and whitespace. */
    check_clean("What is the capital of Australia?", "What is the capital of Australia?");
    check_clean("  \n\n   How do vaccines train the immune system?  \n", "How do vaccines train the immune system?");
    check_clean("\xEF\xBB\xBF\xC2\xA0How do tides depend on the moon?\r\n", "How do tides depend on the moon?");
    /* Numbering and bullets. */
    check_clean("1. How does compound interest work over long periods?",
                "How does compound interest work over long periods?");
    check_clean("1) What causes the northern lights to appear?", "What causes the northern lights to appear?");
    check_clean("(3) Why is the sky blue during the day?", "Why is the sky blue during the day?");
    check_clean("#1: How can I make sourdough bread at home?", "How can I make sourdough bread at home?");
    check_clean("[2] Which programming language should I learn first?",
                "Which programming language should I learn first?");
    check_clean("- What are good exercises for lower back pain?", "What are good exercises for lower back pain?");
    check_clean("* How do I negotiate a higher salary?", "How do I negotiate a higher salary?");
    check_clean("\xE2\x80\xA2 What is the difference between weather and climate?",
                "What is the difference between weather and climate?");
    check_clean("### 1. What is a black hole made of?", "What is a black hole made of?");
    /* Labels, with and without numbers and markdown. */
    check_clean("Question: How do I center a div in CSS?", "How do I center a div in CSS?");
    check_clean("QUERY: best practices for storing passwords securely", "best practices for storing passwords securely");
    check_clean("Q1: What are the symptoms of dehydration?", "What are the symptoms of dehydration?");
    check_clean("Q: Why do cats purr when they are happy?", "Why do cats purr when they are happy?");
    check_clean("Question 4: How is a bill passed into law in the US?", "How is a bill passed into law in the US?");
    check_clean("**Question:** What is the role of mitochondria in a cell?",
                "What is the role of mitochondria in a cell?");
    check_clean("**Question 2**: How do electric cars compare to hybrids?",
                "How do electric cars compare to hybrids?");
    check_clean("User query: recommend a good book about ancient Rome", "recommend a good book about ancient Rome");
    check_clean("1. Question: What is the tallest mountain in Africa?", "What is the tallest mountain in Africa?");
    /* Quotes, including Unicode quotes and repeated wrapping. */
    check_clean("\"How do noise-cancelling headphones work?\"", "How do noise-cancelling headphones work?");
    check_clean("\xE2\x80\x9CWhat should I pack for a week in Iceland?\xE2\x80\x9D",
                "What should I pack for a week in Iceland?");
    check_clean("'What's the best way to store fresh herbs?'", "What's the best way to store fresh herbs?");
    check_clean("\xC2\xAB Comment apprendre le piano rapidement ? \xC2\xBB", "Comment apprendre le piano rapidement ?");
    check_clean("1. \"**How do I fix a leaking kitchen faucet?**\"", "How do I fix a leaking kitchen faucet?");
    check_clean("`How do I undo the last git commit?`", "How do I undo the last git commit?");
    check_clean("\"How long should I boil an egg for a soft yolk?", "How long should I boil an egg for a soft yolk?");
    /* An apostrophe or an inner quotation is not a surrounding quote. */
    check_clean("What's the difference between \"affect\" and \"effect\"?",
                "What's the difference between \"affect\" and \"effect\"?");
    check_clean("\xE2\x80\x9CHello\xE2\x80\x9D is a greeting, but where did the word come from?",
                "\xE2\x80\x9CHello\xE2\x80\x9D is a greeting, but where did the word come from?");
    /* Markdown emphasis wrapping the whole line only. */
    check_clean("**What is the meaning of life according to Stoics?**",
                "What is the meaning of life according to Stoics?");
    check_clean("*How do I train a puppy to sit?*", "How do I train a puppy to sit?");
    check_clean("Is **Python** or *Java* better for beginners?", "Is **Python** or *Java* better for beginners?");
    /* Multi-line: only the first line with content is kept. */
    check_clean("What is the speed of light in a vacuum?\nThis question tests basic physics knowledge.",
                "What is the speed of light in a vacuum?");
    check_clean("**Question:**\nHow can small businesses use social media effectively?\n\nExplanation: ...",
                "How can small businesses use social media effectively?");
    check_clean("```\nHow do I read a file line by line in C?\n```", "How do I read a file line by line in C?");
    /* Numbers that are part of the question are kept. */
    check_clean("1.5 million people live in which European capital?",
                "1.5 million people live in which European capital?");
    check_clean("2024 was a leap year; how are leap years decided?", "2024 was a leap year; how are leap years decided?");
    check_clean("Q3 earnings: how do analysts judge them?", "Q3 earnings: how do analysts judge them?");
    check_clean("Questions about taxes are hard: what is a deduction?",
                "Questions about taxes are hard: what is a deduction?");
    /* Short junk and the 15/16 character boundary (code points). */
    check_clean("", NULL);
    check_clean("   \n \n", NULL);
    check_clean("1.", NULL);
    check_clean("Question:", NULL);
    check_clean("\"Sure!\"", NULL);
    check_clean("What is love?", NULL);                 /* 13 */
    check_clean("123456789012345", NULL);               /* exactly 15 */
    check_clean("1234567890123456", "1234567890123456"); /* 16 */
    check_clean("\"abcdefghijklmno\"", NULL);           /* 15 inside quotes */
    check_clean("\"abcdefghijklmnop\"", "abcdefghijklmnop");
    /* CJK counts code points: 16 CJK characters (48 bytes) stay, 15 (45 bytes) go. */
#define CJK15 "\xE5\xA6\x82\xE4\xBD\x95\xE5\x9C\xA8\xE8\x87\xAA\xE5\xB7\xB1\xE5\xAE\xB6\xE9\x87\x8C\xE7\xA7\x8D" \
              "\xE6\xA4\x8D\xE6\x96\xB0\xE9\xB2\x9C\xE7\x95\xAA\xE8\x8C\x84\xE5\x92\x8C\xE8\xBE\xA3"
#define CJK16 CJK15 "\xE6\xA4\x92"
    check_clean(CJK16, CJK16);
    check_clean(CJK15, NULL);
    check_clean("\xE3\x80\x8C" CJK16 "\xE3\x80\x8D", CJK16);            /* 「...」 */
    check_clean("\xE2\x80\x9C" CJK15 "\xE2\x80\x9D", NULL);            /* quotes do not count */
    check_clean("Query\xEF\xBC\x9A" CJK16, CJK16);                      /* full-width colon */
    check_clean("2. " CJK16 "\n" CJK15, CJK16);
    /* Invalid UTF-8 and control characters never reach the JSON writer. */
    check_clean("How do I fix \xFF\xFE broken bytes\x01 in a file?",
                "How do I fix \xEF\xBF\xBD\xEF\xBF\xBD broken bytes  in a file?");
}

static void check_dup(const char *a, const char *b, bool want) {
    bool got = near_duplicate(a, b, 0);
    CHECK(got == want, "near_duplicate(\"%s\", \"%s\") = %d (similarity %.3f), want %d", a, b, got,
          text_similarity(a, b), want);
}

static void test_near_duplicate(void) {
    /* Rewordings of one question: duplicates. */
    check_dup("What is the capital of France?", "what's the capital of France", true);
    check_dup("How do I reverse a linked list in Python?", "How can I reverse a linked list in Python?", true);
    check_dup("What are the main causes of the French Revolution?",
              "What were the main causes of the French Revolution?", true);
    check_dup("Explain the difference between TCP and UDP.", "Explain the differences between TCP and UDP protocols.",
              true);
    check_dup("How does photosynthesis work in plants?", "How does photosynthesis work in green plants?", true);
    check_dup("Can you explain the concept of opportunity cost in economics?",
              "Could you explain the concept of opportunity cost in economics?", true);
    check_dup("What are some tips for writing a good cover letter?",
              "What are some tips for writing a great cover letter?", true);
    check_dup("How do I set up a Python virtual environment on Windows?",
              "How do I set up a Python virtual environment on Windows 10?", true);
    /* Exact duplicates after normalisation: always. */
    check_dup("HOW DO I BAKE BREAD???", "how do i bake bread", true);
    check_dup("  Why -- is the sky blue?", "why is the sky blue", true);
    /* Distinct questions, even with the same frame: not duplicates. */
    check_dup("What is the capital of France?", "What is the capital of Germany?", false);
    check_dup("How do I reverse a linked list in Python?", "How do I sort a dictionary by value in Python?", false);
    check_dup("What are the health benefits of green tea?", "What are the health risks of smoking cigarettes?",
              false);
    check_dup("What are the advantages of using Rust over C++ for systems programming?",
              "What are the advantages of using Go over Java for web development?", false);
    check_dup("How can I improve my time management skills at work?",
              "How can I improve my public speaking skills at work?", false);
    check_dup("What are the symptoms of vitamin D deficiency in adults?",
              "What are the symptoms of iron deficiency in children?", false);
    check_dup("Can you explain the concept of opportunity cost in economics?",
              "Can you explain the concept of supply and demand in economics?", false);
    check_dup("What is the difference between a stock and a bond?",
              "What is the difference between a Roth IRA and a traditional IRA?", false);
    /* The threshold is honoured. */
    CHECK(near_duplicate("What is the capital of France?", "What is the capital of Germany?", 0.5),
          "threshold 0.5 should merge France/Germany (similarity %.3f)",
          text_similarity("What is the capital of France?", "What is the capital of Germany?"));
    CHECK(text_similarity("abc def", "abc def") == 1.0, "identical texts");
    CHECK(text_similarity("", "") == 1.0, "two empty texts");
    CHECK(text_similarity("hello there friend", "") == 0.0, "one empty text");

    /* The set: keeps the first of each group, in order. */
    dedup_set *d = dedup_new(0);
    const char *qs[] = {
        "How do I reverse a linked list in Python?",           /* kept */
        "How can I reverse a linked list in Python?",          /* dup of 0 */
        "What is the capital of France?",                      /* kept */
        "What is the capital of Germany?",                     /* kept */
        "what is the capital of germany",                      /* dup of 3 */
        "What are some tips for writing a great cover letter?", /* kept */
        "What are some tips for writing a good cover letter?", /* dup of 5 */
    };
    const bool want[] = {true, false, true, true, false, true, false};
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++) {
        bool got = dedup_add(d, qs[i]);
        CHECK(got == want[i], "dedup_add(\"%s\") = %d, want %d", qs[i], got, want[i]);
    }
    CHECK(dedup_count(d) == 4, "dedup_count %zu, want 4", dedup_count(d));
    CHECK(dedup_contains(d, "How do I reverse a linked-list in Python"), "contains a rewording");
    CHECK(!dedup_contains(d, "How do I bake sourdough bread at home?"), "does not contain a new question");
    CHECK(dedup_count(d) == 4, "dedup_contains must not add");
    /* Distinct questions of one domain (as a persona would ask them) all stay. */
    dedup_set *big = dedup_new(0.7);
    static const char *cooking[] = {
        "How long should I rest a steak after grilling it?",
        "What is the best oil for deep frying at home?",
        "How do I keep homemade pasta from sticking together?",
        "Why does my sourdough starter smell like acetone?",
        "Can I substitute baking soda for baking powder in cookies?",
        "What knife should a beginner cook buy first?",
        "How do I make a roux without lumps?",
        "Is it safe to refreeze chicken that has thawed in the fridge?",
        "What spices go well with roasted cauliflower?",
        "How do professional kitchens keep herbs fresh for a week?",
        "Why do my pancakes come out flat and dense?",
        "What is the difference between braising and stewing?",
        "How can I cook rice perfectly without a rice cooker?",
        "Which vegetables can be pickled with a quick brine?",
        "How do I season a new cast iron skillet?",
        "What temperature should pork tenderloin reach to be safe?",
        "How do I stop my cakes from sinking in the middle?",
        "What are good vegetarian sources of umami flavour?",
        "How do I make a stable whipped cream for piping?",
        "Why is my homemade bread crust too hard?",
    };
    size_t kept = 0, tried = sizeof cooking / sizeof *cooking;
    for (size_t i = 0; i < tried; i++) kept += dedup_add(big, cooking[i]);
    CHECK(kept == tried, "%zu of %zu distinct questions kept", kept, tried);
    /* Each again in capitals with other punctuation is refused (equal once normalised). */
    size_t refused = 0;
    for (size_t i = 0; i < tried; i++) {
        char q[200];
        snprintf(q, sizeof q, "  %s!!", cooking[i]);
        for (char *c = q; *c; c++)
            if (*c >= 'a' && *c <= 'z') *c = (char)(*c - 'a' + 'A');
        refused += !dedup_add(big, q);
    }
    CHECK(refused == tried, "%zu of %zu reworded repeats refused", refused, tried);
    dedup_free(big);
    dedup_free(d);
    dedup_free(NULL);
}

static void check_trunc(const char *s, size_t max, const char *want) {
    char *got = truncate_utf8(s, max);
    CHECK(got && !strcmp(got, want), "truncate_utf8(\"%s\", %zu) = \"%s\", want \"%s\"", s, max, got ? got : "(null)",
          want);
    free(got);
}

static void test_truncate(void) {
    check_trunc("hello", 10, "hello");
    check_trunc("hello", 5, "hello");
    check_trunc("hello", 3, "hel");
    check_trunc("hello", 0, "");
    /* "héllo": é is 2 bytes (bytes 1-2). */
    check_trunc("h\xC3\xA9llo", 1, "h");
    check_trunc("h\xC3\xA9llo", 2, "h");
    check_trunc("h\xC3\xA9llo", 3, "h\xC3\xA9");
    /* "a€b": € is 3 bytes; "🙂" is 4. */
    check_trunc("a\xE2\x82\xAC" "b", 2, "a");
    check_trunc("a\xE2\x82\xAC" "b", 3, "a");
    check_trunc("a\xE2\x82\xAC" "b", 4, "a\xE2\x82\xAC");
    check_trunc("\xF0\x9F\x99\x82\xF0\x9F\x99\x82", 7, "\xF0\x9F\x99\x82");
    check_trunc("\xF0\x9F\x99\x82\xF0\x9F\x99\x82", 3, "");
    check_trunc("\xF0\x9F\x99\x82\xF0\x9F\x99\x82", 8, "\xF0\x9F\x99\x82\xF0\x9F\x99\x82");
    /* Every cut of a mixed string ends on a code point boundary. */
    const char *mix = "x\xC3\xA9\xE2\x82\xAC\xF0\x9F\x99\x82y\xE4\xB8\xAD";
    size_t bad = 0;
    for (size_t m = 0; m <= strlen(mix) + 1; m++) {
        size_t k = utf8_prefix_len(mix, m);
        if (k > m || (mix[k] && ((unsigned char)mix[k] & 0xC0) == 0x80) || m - k > 3) bad++;
    }
    CHECK(bad == 0, "%zu cuts of a mixed string split a code point", bad);
    CHECK(utf8_count(mix) == 6, "utf8_count %zu, want 6", utf8_count(mix));

    char *w = truncate_utf8_words("the quick brown fox jumps", 13);
    CHECK(w && !strcmp(w, "the quick"), "truncate_utf8_words = \"%s\", want \"the quick\"", w ? w : "(null)");
    free(w);
    w = truncate_utf8_words("the quick brown fox", 9);
    CHECK(w && !strcmp(w, "the quick"), "cut just before a space: \"%s\"", w ? w : "(null)");
    free(w);
    w = truncate_utf8_words("a supercalifragilistic", 12);
    CHECK(w && !strcmp(w, "a supercalif"), "no space in the second half: code point cut, got \"%s\"", w ? w : "(null)");
    free(w);
    w = truncate_utf8_words("short", 12);
    CHECK(w && !strcmp(w, "short"), "no cut needed: \"%s\"", w ? w : "(null)");
    free(w);
}

int main(void) {
    test_clean_query();
    test_near_duplicate();
    test_truncate();
    TEST_MAIN_END();
}
