# monovlm-edge: `make test` (set-up + every check CI runs), `make demo` (set-up + the main job).
CARGO ?= cargo
export ORT_DYLIB_PATH ?= $(CURDIR)/.ort/libonnxruntime.so

.PHONY: setup test fmt lint unit demo bench

setup:
	@bash scripts/setup

test: setup fmt lint unit

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --locked --workspace --all-targets --all-features -- -D warnings

unit:
	$(CARGO) test --locked --workspace

demo:
	@bash scripts/setup --no-torch
	$(CARGO) run --locked --release -p monovlm-runtime --bin monovlm-edge -- info
	@echo "(no model package yet: grounding arrives with the exporter, runtime and nano-model issues)"

bench: setup
	$(CARGO) bench -p monovlm-calib --bench iou
