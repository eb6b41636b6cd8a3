# ftcourse: the two commands a newcomer needs are `make book` and `make test`.
# Both run `setup` first: a virtual environment in $(VENV) with the package and its extras,
# and every dataset fetched into the data cache (~/.cache/ftcourse/data, or $FTCOURSE_DATA).

# The environment: an active conda environment named ftcourse (environment.yml) when there is
# one, else a virtual environment in .venv; `make VENV=...` picks any other.
VENV ?= $(if $(filter ftcourse,$(CONDA_DEFAULT_ENV)),$(CONDA_PREFIX),.venv)
PYTHON ?= python3
# The torch/torchvision pair that is tested (see README). Override for another platform, e.g.
#   make setup TORCH="torch torchvision"
TORCH ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= book,test,lab
PROFILE ?= cpu
NB ?= notebooks/00_quickstart.ipynb
BENCH_PROFILES ?= smoke,cpu

PY := $(VENV)/bin/python
DEPS_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-12)$(shell echo "$(TORCH) $(EXTRAS)" | sha256sum | cut -c1-6)
DEPS_STAMP := $(VENV)/.ftcourse-deps-$(DEPS_HASH)

# Offline by default: nothing at run time may wait for a model or dataset hub.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 FTCOURSE_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
# Executed notebooks (tests, book, `make run`) store no progress bars.
BATCH := $(OFFLINE) FTCOURSE_PROGRESS=0 TQDM_DISABLE=1

.PHONY: setup browser test site-test book lab run doctor lint bench bench-distributed select-lr studies clean help

help:
	@echo "make book    build the website (executes every notebook in the cpu profile)"
	@echo "make test    unit tests + every notebook in the smoke profile + nbval + the website in Chromium"
	@echo "make site-test  the browser tests against the cpu book of make book (_build/html)"
	@echo "make setup   create $(VENV), install ftcourse[$(EXTRAS)], fetch the datasets"
	@echo "make lab     open the notebooks in JupyterLab"
	@echo "make run NB=notebooks/00_quickstart.ipynb PROFILE=cpu   execute one notebook"
	@echo "make doctor  check versions, CPU and bf16, a speed probe, datasets and zoo models"
	@echo "make bench   time the notebooks (smoke, cpu), fit vs bare loop vs HF Trainer, LM throughput, SmolLM2"
	@echo "make studies run or resume the chapters' reference studies (hours; STUDIES="00 01 02 03 04 05 08 smollm2 widths", REGIMES="native fp32" or "fp32 avx2")"
	@echo "make select-lr  re-choose the learning rates of chapters 4, 5, 6, 8 and A1 on validation (benchmarks/select_lr.py)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(DEPS_STAMP): | $(PY)
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.ftcourse-deps-*
	touch $@

setup: $(DEPS_STAMP)
	@# A reused environment may point at another checkout: make it use this one. (-I keeps the
	@# current folder off sys.path, else the check would import ./ftcourse and always pass.)
	@$(PY) -I -c "import ftcourse, pathlib, sys; sys.exit(pathlib.Path(ftcourse.__file__).parent != pathlib.Path('ftcourse').resolve())" 2>/dev/null \
		|| $(PY) -m pip install -q --no-deps -e .
	$(VENV)/bin/ftcourse data fetch
	@$(MAKE) --no-print-directory browser

# The browser tests drive the system's Chromium (Playwright's own download needs the internet).
# As root with apt-get, install Debian's; otherwise say how (tests/test_site.py fails the same way).
browser:
	@$(PY) -c "import sys; sys.path.insert(0, 'tests'); import sitecheck; sitecheck.find_chromium()" 2>/dev/null \
		|| { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Chromium for the browser tests (apt-get install chromium)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "note: no Chromium for the browser tests: install it (e.g. sudo apt-get install chromium) or set FTCOURSE_CHROMIUM=/path/to/chromium"; \
		fi; }

test: setup
	$(BATCH) FTCOURSE_PROFILE=smoke $(PY) -m pytest -q tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

site-test: setup
	$(OFFLINE) FTCOURSE_SITE=_build/html $(PY) -m pytest -q tests/test_site.py -p no:cacheprovider

# The book's execution cache is keyed by the notebooks' code only; a change to the package, a
# zoo model or a stored result must re-execute them too, so such a change empties the cache.
BOOK_INPUTS := $(shell find ftcourse benchmarks/results -type f \( -name '*.py' -o -name '*.csv' \
	-o -name '*.json' -o -name '*.md' -o -name '*.pt' -o -name '*.safetensors' \) -not -path '*/__pycache__/*' -not -path 'benchmarks/results/_*' | sort)

_build/.book-inputs: $(BOOK_INPUTS)
	rm -rf _build/.jupyter_cache
	mkdir -p _build && touch $@

book: setup _build/.book-inputs
	rm -rf _build/html _build/jupyter_execute _build/.doctrees
	$(BATCH) FTCOURSE_PROFILE=cpu FTCOURSE_REPORT_DIR=$(CURDIR)/_build/reports \
		$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "open _build/html/index.html"

run: setup
	$(BATCH) $(VENV)/bin/ftcourse run $(NB) --profile $(PROFILE) --report-dir _build/reports

doctor: setup
	$(OFFLINE) $(VENV)/bin/ftcourse doctor

lab: setup
	$(OFFLINE) $(VENV)/bin/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

lint: setup
	$(VENV)/bin/ruff check ftcourse tests benchmarks
	$(VENV)/bin/ruff format --check ftcourse tests benchmarks notebooks

# Benchmarks write benchmarks/results/*.csv and the book pages generated from them. Run them on
# an otherwise idle machine: a second torch process on two cores ruins every timing.
bench: setup
	$(BATCH) $(PY) benchmarks/run.py all --profiles $(BENCH_PROFILES)

# Appendix B1: one and two processes with DDP, FSDP2 and Accelerate (about 3 minutes).
bench-distributed: setup
	$(BATCH) $(PY) benchmarks/distributed.py

# Reference studies: resumable (each finished run is stored at once), so an interrupted
# `make studies` goes on where it stopped. Each regime runs in its own process.
# The two regimes that differ on this CPU: native bf16 and fp32 where bf16 is native; else
# fp32 (AVX-512 or AVX2 kernels, whichever the CPU has) and the AVX2 imitation.
STUDIES ?= 00 01 02 03 04 05 08 smollm2 widths
WIDTHS ?= 64
REGIMES ?= $(shell $(PY) -c "from ftcourse import precision; print('native fp32' if precision.native_bf16('cpu') else 'fp32 avx2')" 2>/dev/null || echo fp32)
studies: setup
	@for w in $(WIDTHS); do $(VENV)/bin/ftcourse pretrain lm --width $$w --keep || exit 1; done
	@for s in $(STUDIES); do for r in $(REGIMES); do \
		$(BATCH) $(VENV)/bin/ftcourse study $$s --regime $$r || exit 1; done; done

select-lr: setup
	$(BATCH) $(PY) benchmarks/select_lr.py --notebook A1_foundation_model
	$(BATCH) $(PY) benchmarks/select_lr.py --notebook 04_additive
	$(BATCH) $(PY) benchmarks/select_lr.py --notebook 05_lora
	$(BATCH) $(PY) benchmarks/select_lr.py --notebook 06_instruction_tuning
	$(BATCH) $(PY) benchmarks/select_lr.py --notebook 08_semi_supervised

clean:
	rm -rf _build
