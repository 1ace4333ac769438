# prism — build with `make` (library, CLI at build/prism, tests, bench).
# Per-ISA kernels (*_avx512.c, *_avx2.c) get their own -m flags and are
# chosen at run time, so one binary runs on any x86-64 CPU.

CC      ?= cc
OPT     ?= -O3
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -Wall -Wextra -D_GNU_SOURCE -fopenmp -Iinclude -Isrc
LDLIBS  += -fopenmp -lpcre2-8 -ljansson -lutf8proc -lmicrohttpd -lm -lpthread -ldl

AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c -mavx2
AVX2_FLAGS   := -mavx2 -mfma -mf16c

B := build
LIB_SRC  := $(shell find src -name '*.c' -not -path 'src/cli/*' | sort)
CLI_SRC  := $(shell find src/cli -name '*.c' | sort)
TEST_SRC := $(wildcard tests/test_*.c)
BENCH_SRC := $(wildcard bench/*.c)

LIB_OBJ  := $(LIB_SRC:%.c=$(B)/obj/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(B)/obj/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(B)/tests/%)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(B)/bench/%)

all: $(B)/prism $(TEST_BIN) $(BENCH_BIN)

$(B)/obj/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX512_FLAGS) -MMD -MP -c $< -o $@

$(B)/obj/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX2_FLAGS) -MMD -MP -c $< -o $@

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(B)/libprism.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/prism: $(CLI_OBJ) $(B)/libprism.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/%: tests/%.c $(B)/libprism.a tests/test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -o $@ $< $(B)/libprism.a $(LDLIBS)

$(B)/bench/%: bench/%.c $(B)/libprism.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(B)/libprism.a $(LDLIBS)

test: all
	./tests/run_all.sh

# AddressSanitizer + UBSan build in build-asan/
debug:
	$(MAKE) B=build-asan OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer" \
	        LDLIBS="$(LDLIBS) -fsanitize=address,undefined"

clean:
	rm -rf build build-asan

.PHONY: all test debug clean
-include $(shell find $(B) -name '*.d' 2>/dev/null)
