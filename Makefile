# The front door. `make run` starts the box; `make test` runs every test. Both install the
# Debian packages they need first (scripts/install-deps.sh; quiet when all are present).
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_ARGS ?=
# CI=true (set by CI) turns warnings into errors.
ifeq ($(CI),true)
CMAKE_ARGS += -DINFERBOX_WERROR=ON
endif
RUN_DIR := $(CURDIR)/.inferbox

.PHONY: all deps configure build run test fuzz packages update-bundle format format-check clean

all: build

deps:
	@./scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD_DIR) -G Ninja $(CMAKE_ARGS) >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

# Starts inferboxd in the foreground with its embedded default configuration: loopback
# only (OpenAI HTTP 127.0.0.1:8080, gRPC 127.0.0.1:7070, metrics 127.0.0.1:9400), serving
# the tiny demo model on CPU; state and runtime files under ./.inferbox, no root needed.
# Ctrl-C stops it gracefully.
run: build
	@cmake --build $(BUILD_DIR) --target demo_model
	@mkdir -p $(RUN_DIR)/state/models
	@ln -sfn $(abspath $(BUILD_DIR))/models/inferbox-demo $(RUN_DIR)/state/models/inferbox-demo
	$(BUILD_DIR)/daemon/inferboxd --default-config \
	  --state-dir $(RUN_DIR)/state --runtime-dir $(RUN_DIR)/run

test: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 300

# Coverage-guided fuzzing of the parsers of untrusted input (tests/fuzz) with libFuzzer, ASan
# and UBSan: a clang build in build-fuzz, then each target for FUZZ_SECONDS (default 60).
# Findings land in build-fuzz/findings/; docs/development.md says what to do with them.
fuzz:
	@BUILD_DIR=$(BUILD_DIR) ./scripts/fuzz.sh

# The deb and rpm packages (packaging/), into $(BUILD_DIR)/packages; docs/install.md.
packages: build
	@cmake --build $(BUILD_DIR) --target package

# A signed update bundle of those packages for `inferboxctl update apply` (docs/updates.md),
# $(BUILD_DIR)/packages/inferbox-update_<version>.ibu. Signed with UPDATE_KEY, by default a
# test key made once into the build folder; its public half, update-test-key.pub.pem beside
# it, goes into a test box's /etc/inferbox/update-keys/. Release bundles use the release key.
UPDATE_KEY ?= $(BUILD_DIR)/update-test-key.pem
update-bundle: packages
	@[ -f "$(UPDATE_KEY)" ] || openssl genpkey -algorithm ed25519 -out "$(UPDATE_KEY)"
	@openssl pkey -in "$(UPDATE_KEY)" -pubout -out "$(basename $(UPDATE_KEY)).pub.pem"
	@cd $(BUILD_DIR)/packages && $(abspath $(BUILD_DIR))/tools/inferbox-bundle update \
	  $$(for deb in inferbox_*.deb inferbox-tools_*.deb; do echo "--package $$deb"; done) \
	  --out "inferbox-update_$$(dpkg-deb -f inferbox_*.deb Version).ibu" \
	  --sign-key "$(abspath $(UPDATE_KEY))"

format:
	@git ls-files -z '*.h' '*.cc' '*.cu' '*.cuh' | xargs -0 -r clang-format -i

format-check:
	@git ls-files -z '*.h' '*.cc' '*.cu' '*.cuh' | xargs -0 -r clang-format --dry-run --Werror

clean:
	@rm -rf $(BUILD_DIR) $(RUN_DIR)
