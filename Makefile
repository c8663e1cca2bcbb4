# monovlm-edge: `make test` (set-up + every check CI runs), `make demo` (set-up + the main job).
CARGO ?= cargo
export ORT_DYLIB_PATH ?= $(CURDIR)/.ort/libonnxruntime.so

.PHONY: setup test fmt lint unit demo bench nano-model

setup:
	@bash scripts/setup

test: setup fmt lint unit

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --locked --workspace --all-targets --all-features -- -D warnings

unit:
	$(CARGO) test --locked --workspace

# The bundled nano model on the bundled demo sequence (assets/demo, never seen in training): one
# JSON line per frame and query on stdout, annotated frames in target/demo/. `make demo SERVE=1`
# serves the live viewer on http://127.0.0.1:8080/ instead (Ctrl-C stops it).
DEMO_QUERIES ?= --query "The nearest car in our lane." --query "The white truck." --query "The green van."
demo:
	@bash scripts/setup --no-torch
	$(CARGO) build --locked --release -p monovlm-runtime --bin monovlm-edge
ifdef SERVE
	target/release/monovlm-edge serve --demo --model models/nano $(DEMO_QUERIES)
else
	target/release/monovlm-edge --demo --model models/nano $(DEMO_QUERIES) --annotate target/demo
	@echo "annotated frames: target/demo/"
endif

# Reproduces models/nano/ and docs/results.md's numbers from scratch (about two hours on two cores).
nano-model: setup
	$(CARGO) build --locked --release -p monovlm-trainer -p monovlm-exporter -p monovlm-runtime
	bash scripts/nano-model
	bash scripts/nano-model install

bench: setup
	$(CARGO) bench -p monovlm-calib --bench iou
