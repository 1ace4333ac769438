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

.DEFAULT_GOAL := all

# Optional CUDA module (src/cuda/*.cu -> $(B)/prism-cuda.so), built when nvcc
# is found (CUDA=auto) or forced (CUDA=1); CUDA=0 skips it. The prism binary
# never links CUDA: it loads the module with dlopen for --device cuda.
CUDA ?= auto
NVCC ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA_ARCHS ?= 80 86 89 90
CUDA_SRC := $(sort $(wildcard src/cuda/*.cu))
CUDA_OBJ := $(CUDA_SRC:%.cu=$(B)/obj/%.o)
NVCCFLAGS ?= -O3 -lineinfo
NVCCFLAGS += -std=c++17 -Iinclude -Isrc -Xcompiler -fPIC,-Wall,-Wextra,-fvisibility=hidden \
             $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
             -gencode arch=compute_$(lastword $(CUDA_ARCHS)),code=compute_$(lastword $(CUDA_ARCHS)) \
             -DPRISM_CUDA_ARCHS='"$(foreach a,$(CUDA_ARCHS),sm_$(a))"'
ifeq ($(CUDA),0)
CUDA_LIB :=
else ifeq ($(CUDA)$(NVCC),auto)
CUDA_LIB :=
else ifeq ($(CUDA),auto)
CUDA_LIB := cuda-module-optional
else
CUDA_LIB := $(B)/prism-cuda.so
endif

# CUDA=auto: a toolkit that cannot build the module (too old, headers missing)
# leaves prism CPU-only with a warning instead of failing the build.
cuda-module-optional:
	@$(MAKE) --no-print-directory $(B)/prism-cuda.so || \
	    echo "warning: the CUDA module did not build; prism runs on the CPU only (make CUDA=1 to see the failure as an error)"

all: $(B)/prism $(TEST_BIN) $(BENCH_BIN) $(CUDA_LIB) $(B)/emu/prism-cuda.so $(B)/emu/test_flash

# The GPU architectures compiled for: a change of CUDA_ARCHS (or of nvcc) rebuilds the CUDA objects.
CUDA_STAMP := $(B)/obj/cuda-archs
$(CUDA_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo "$(CUDA_ARCHS) $(NVCC)" | cmp -s - $@ || echo "$(CUDA_ARCHS) $(NVCC)" > $@
FORCE:

$(B)/obj/%.o: %.cu src/cuda/common.cuh src/gpu/gpu.h $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(B)/prism-cuda.so: $(CUDA_OBJ)
	$(NVCC) -shared -cudart static -o $@ $^ -lcublas -lcublasLt

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

# The CUDA module compiled for the CPU against tests/cuda_emu (no toolkit;
# -fno-strict-aliasing: kernels reinterpret BF16 data as 16-byte vectors, as CUDA allows)
# needed): test_gpu runs the GPU parity suite through it on machines without a GPU.
EMU_B := $(B)/emu
EMU_CPP := $(CUDA_SRC:src/cuda/%.cu=$(EMU_B)/%.cpp)
CXX ?= g++
$(EMU_B)/%.cpp: src/cuda/%.cu
	@mkdir -p $(dir $@)
	sed -E 's/([A-Za-z_][A-Za-z0-9_]*(<[A-Za-z0-9_, ]+>)?)<<<(.*)>>>\(/emu::launch(emu::cfg(\3), \1, /' $< > $@
$(EMU_B)/prism-cuda.so: $(EMU_CPP) tests/cuda_emu/cuda_emu.cpp tests/cuda_emu/cuda_emu.h src/cuda/common.cuh src/gpu/gpu.h
	$(CXX) -std=c++17 -O2 -g -fPIC -shared -fno-strict-aliasing -Wall -Wextra -Wno-unknown-pragmas -DPRISM_CUDA_EMU \
	    -DPRISM_CUDA_ARCHS='"emulated"' -Iinclude -Isrc -Itests/cuda_emu -o $@ $(EMU_CPP) tests/cuda_emu/cuda_emu.cpp
emu: $(EMU_B)/prism-cuda.so $(EMU_B)/test_flash

# tests/test_flash.cu (the trainer's tensor-core attention against a reference)
# on the emulator; on a GPU: $(B)/tests/test_flash (gpu_check.sh).
$(EMU_B)/test_flash.cpp: tests/test_flash.cu
	@mkdir -p $(dir $@)
	sed -E 's/([A-Za-z_][A-Za-z0-9_]*(<[A-Za-z0-9_, ]+>)?)<<<(.*)>>>\(/emu::launch(emu::cfg(\3), \1, /' $< > $@
$(EMU_B)/test_flash: $(EMU_B)/test_flash.cpp $(EMU_B)/flash.cpp tests/cuda_emu/cuda_emu.cpp tests/cuda_emu/cuda_emu.h src/cuda/common.cuh
	$(CXX) -std=c++17 -O2 -g -fno-strict-aliasing -Wall -Wextra -Wno-unknown-pragmas -DPRISM_CUDA_EMU \
	    -Iinclude -Isrc -Itests/cuda_emu -o $@ $(EMU_B)/test_flash.cpp $(EMU_B)/flash.cpp tests/cuda_emu/cuda_emu.cpp -ldl
$(B)/tests/test_flash: tests/test_flash.cu src/cuda/flash.cu src/cuda/common.cuh $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -o $@ tests/test_flash.cu src/cuda/flash.cu

test: all
	./tests/run_all.sh

# AddressSanitizer + UBSan build in build-asan/
debug:
	$(MAKE) B=build-asan CUDA=0 OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer" \
	        LDLIBS="$(LDLIBS) -fsanitize=address,undefined"

clean:
	rm -rf build build-asan

.PHONY: all test debug clean emu cuda-module-optional FORCE
-include $(shell find $(B) -name '*.d' 2>/dev/null)
