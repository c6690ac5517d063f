# desimirror: the seed's interface (find.json, batch.json, upload) plus demo, test, bench.
#
#   make demo                      # synthetic release -> embedded S3 -> crawl/plan/upload/verify
#   make demo-serve                # the same, and the bucket stays up for `desimirror jupyter`
#   make test                      # lint + the test suite (what CI runs)
#   make upload DESI_RELEASE=dr1   # the real thing, at NERSC; run again until done
#
# The variables keep the original makefile's names: root, release, subdir, and the
# environment variables DESI_ROOT, DESI_RELEASE, DESI_RELEASE_SUBDIR it reads.

DESI_ROOT ?= /dvs_ro/cfs/cdirs/desi/public
DESI_RELEASE ?= dr1
release_name := $(shell echo '$(DESI_RELEASE)' | tr '[:upper:]' '[:lower:]')
root ?= $(DESI_ROOT)
release ?= $(root)/$(release_name)
DESI_RELEASE_SUBDIR ?= $(release)
subdir ?= $(DESI_RELEASE_SUBDIR)

bucket ?= s3://desidata
db ?= $(release_name).db
crawl_workers ?= 128
workers ?= 64
max_batches ?= 1000
max_batch_size ?= 1TB
min_batch_size ?= 10GB
backend ?= crt

# The checkout this Makefile is in: `make -f /path/to/desimirror/Makefile upload` works
# from a working directory of the operator's own, where find.json, batch.json and the db go.
here := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV ?= $(here)/.venv
PYTHON ?= python3
DM := $(VENV)/bin/desimirror

.PHONY: all demo demo-serve test lint bench upload status verify clean-demo

# The web view's chart library (Apache ECharts), from npm at build time, never committed.
ECHARTS := $(here)/src/desimirror/view/static/echarts.min.js

all: $(VENV)/.installed $(ECHARTS)

$(ECHARTS): $(here)/web/package.json $(here)/web/package-lock.json
	cd $(here)/web && npm ci --no-audit --no-fund --loglevel=error
	cp $(here)/web/node_modules/echarts/dist/echarts.min.js $@

$(VENV)/.installed: $(here)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '$(here)[test,bench]'
	touch $@

# Crawl the release into the state db and write the seed's tree format.
find.json: $(VENV)/.installed
	$(DM) crawl $(release) --db $(db) --workers $(crawl_workers) --find-json $@

# Plan batches for the selected subdirectory.
batch.json: find.json
	$(DM) plan --db $(db) --subdir $(subdir) --max-batch-size $(max_batch_size) \
		--min-batch-size $(min_batch_size) --batch-json $@

# Upload up to max_batches batches; run again until nothing is pending.
upload: batch.json
	$(DM) upload --db $(db) --bucket $(bucket) --backend $(backend) \
		--remap $(release_name)/spectro/data=raw_spectro_data \
		--remap $(release_name)/target=target \
		--max-batches $(max_batches) --workers $(workers)

verify: $(VENV)/.installed
	$(DM) verify --db $(db) --bucket $(bucket)

status: $(VENV)/.installed
	$(DM) status --db $(db)

demo: $(VENV)/.installed
	$(DM) demo --dir demo

# The same, then the S3 server stays up (Ctrl-C stops it) for the printed `desimirror jupyter`.
demo-serve: $(VENV)/.installed
	$(DM) demo --dir demo --serve

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

test: lint $(ECHARTS)
	$(VENV)/bin/python -m pytest -q --durations=15

# Benchmarks, not tests: each prints ratios against peers measured in the same run.
# The package is byte-compiled first, as an installed wheel is: with PYTHONDONTWRITEBYTECODE
# set (this machine sets it), every command would otherwise compile its ~60 modules again
# at each start (60 ms of a run measured against a Go binary's few).
bench: $(VENV)/.installed $(ECHARTS)
	$(VENV)/bin/python -m compileall -q $(here)/src/desimirror
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/view_bench.py
	$(VENV)/bin/python bench/download_bench.py
	$(VENV)/bin/python bench/access_bench.py
	$(VENV)/bin/python bench/crawl_bench.py
	$(VENV)/bin/python bench/scale_bench.py
	$(VENV)/bin/python bench/dask_bench.py

clean-demo:
	rm -rf demo
