.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python benchmarks/bench_ufm.py
	.venv/bin/python benchmarks/bench_metrics.py
	.venv/bin/python benchmarks/bench_train.py
	.venv/bin/python benchmarks/bench_sweep.py
	.venv/bin/python benchmarks/bench_batched.py
