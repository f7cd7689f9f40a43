# Two commands do everything on a fresh machine:  make demo  and  make test
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= out

.PHONY: setup demo test test-fast lint bench clean

# Python packages (editable install with test extras), and LibreOffice and Gnumeric (ssconvert) for
# the real-recalculation tests.
setup:
	$(PIP) install -q -e ".[test]"
	@command -v soffice >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends libreoffice-calc-nogui; }
	@command -v ssconvert >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends gnumeric; }

demo: setup
	mkdir -p $(OUT)
	xlcnn build samples/lenet.keras samples/digits/digit_7.png -o $(OUT)/demo.xlsx --force
	xlcnn verify $(OUT)/demo.xlsx --json $(OUT)/demo-verify.json

test: setup lint
	$(PYTHON) -m pytest -q -p no:cacheprovider

# The fast tier, no LibreOffice and no Keras model: the formula engine, writers from plain specs, the
# import rules. Seconds, for the edit-test loop.
test-fast:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/test_formula.py tests/test_specs.py tests/test_structure.py

lint:
	$(PYTHON) -m ruff check xlcnn tests bench samples

bench: setup
	$(PIP) install -q -e ".[bench]"
	$(PYTHON) bench/bench_build.py
	$(PYTHON) bench/bench_evaluator.py --formulas
	$(PYTHON) bench/bench_verify.py

clean:
	rm -rf $(OUT) .pytest_cache
