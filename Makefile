# Every target does its own set-up from a fresh clone (python3 + make are all it needs).
SHELL := /bin/bash
RUN := source scripts/env.sh &&

.PHONY: setup demo demo-sync test stack-test distributed-test bench bench-validation bench-tasks airflow stop clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(RUN) python -m tools.demo $(ARGS)

demo-sync: setup  # two nights of one list (sync_mode mirror): changes, withdrawn and expired consent, absentees
	@$(RUN) python -m tools.demo_sync $(ARGS)

test: setup
	@$(RUN) python -m pytest $(PYTEST_ARGS)

# Whole DAG runs on a real scheduler (backfills, the approval of bulk removals, the call_lists deferral on a triggerer).
stack-test: setup
	@$(RUN) python -m pytest -m stack tests/test_backfill.py tests/test_sync_stack.py tests/test_call_lists_stack.py $(PYTEST_ARGS)

# The DAG on CeleryExecutor (two workers) + PostgreSQL + Redis + moto S3 (scripts/distributed.sh); see README.
distributed-test: setup
	@$(RUN) python -m pytest -m distributed tests/test_distributed.py $(PYTEST_ARGS)

bench: setup
	@$(RUN) python -m tools.bench $(ARGS)

bench-validation: setup  # issue 11's validation targets alone: schema step and validate task, CPU and wall
	@$(RUN) python -m tools.bench_validation $(ARGS)

bench-tasks: setup  # issue 11's non-import tasks, each in a fresh process per list size: wall, CPU, peak RSS
	@$(RUN) python -m tools.bench_tasks $(ARGS)

airflow:
	@bash scripts/stack.sh start

stop:
	@bash scripts/stack.sh stop

clean:
	rm -rf .airflow data artifacts
