# The two commands of the README. Both create or refresh .venv first.
SHELL := /bin/bash
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test setup data lint

setup:
	@scripts/setup.sh

data:
	@scripts/get_data.sh

demo: setup data
	.venv/bin/kdistill run configs/fashion_mnist/hinton.yaml
	.venv/bin/kdistill run configs/fashion_mnist/few_labels.yaml

# pytest exits 5 when it collects no test: say so loudly instead of failing on a technicality.
test: setup data
	@.venv/bin/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5)"; exit 0; fi; exit $$rc

lint: setup
	.venv/bin/ruff check src tests benchmarks examples
	.venv/bin/ruff format --check src tests benchmarks examples
