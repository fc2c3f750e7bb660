# The two set-up commands of the README: `make run` and `make test`.
# Each installs what is missing, configures, builds, then runs.
JOBS ?= $(shell nproc)
BUILD ?= build

.PHONY: run test test-asan deps build bench clean

deps:
	@bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

# The main job on the built-in default: the built-in model (stories260K) with the
# fp16 and the TQ3 cache side by side.
run: build
	./$(BUILD)/tq run

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# AddressSanitizer + UndefinedBehaviorSanitizer build of the whole suite.
test-asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTQ_SANITIZE=ON -DTQ_BUILD_BENCH=OFF -DTQ_CUDA=OFF
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ctest --output-on-failure -j $(JOBS)

bench: build
	./$(BUILD)/bench/tq_microbench

clean:
	rm -rf $(BUILD) build-asan build-debug
