# Every target creates .venv first. torch is pinned by constraints.txt (the CPU build).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench report full

$(BIN)/priorlab: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,av2,svm]'
	touch $@

# The main job: every reproduction at smoke size, then its report (runs/smoke/REPORT.md).
demo: $(BIN)/priorlab
	$(BIN)/priorlab reproduce --all --tier smoke
	$(BIN)/priorlab report --results runs/smoke --out runs/smoke

test: $(BIN)/priorlab
	$(BIN)/pytest

bench: $(BIN)/priorlab
	$(BIN)/python benchmarks/bench_loop.py
	$(BIN)/python benchmarks/bench_lion.py
	$(BIN)/python benchmarks/bench_sceneflow.py
	$(BIN)/python benchmarks/bench_longterm.py

# The committed evidence: full-tier results in results/ and REPORT.md from them.
full: $(BIN)/priorlab
	$(BIN)/priorlab reproduce --all --tier full
	$(BIN)/priorlab report

report: $(BIN)/priorlab
	$(BIN)/priorlab report
