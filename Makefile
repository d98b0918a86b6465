.PHONY: setup demo test test-fast lint typecheck bench

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

# the quick loop (about a minute here): unit tests and the fast integration tests
test-fast:
	bash scripts/test.sh -m "not slow"

lint: setup
	.venv/bin/ruff check .

typecheck: setup
	.venv/bin/mypy

bench: setup
	.venv/bin/python benchmarks/bench_ufm.py
	.venv/bin/python benchmarks/bench_metrics.py
	.venv/bin/python benchmarks/bench_train.py
	.venv/bin/python benchmarks/bench_sweep.py
	.venv/bin/python benchmarks/bench_batched.py
