# The two commands: `make run` (the daemon on its embedded defaults) and `make test`.
# Both create the virtual environment in .venv on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test lint typecheck unit format bench clean system-deps system-deps-test

# Debian packages, as "command-or-python-module:package". Installed with apt-get when missing
# and make runs as root; otherwise make stops and names them.
DEPS_RUN  := py:venv:python3-venv py:ensurepip:python3-venv
DEPS_TEST := kamailio:kamailio sipp:sip-tester espeak-ng:espeak-ng sox:sox \
             systemd-analyze:systemd chromium:chromium chromedriver:chromium-driver

define ensure_debs
	@missing=""; \
	for dep in $(1); do \
	  pkg=$${dep##*:}; what=$${dep%:*}; \
	  case $$what in \
	    py:*) $(PYTHON) -c "import $${what#py:}" 2>/dev/null || missing="$$missing $$pkg" ;; \
	    *) command -v $$what >/dev/null 2>&1 || [ -x /usr/sbin/$$what ] || missing="$$missing $$pkg" ;; \
	  esac; \
	done; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | xargs); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages: $$missing (as root: apt-get install $$missing)"; exit 1; \
	  fi; \
	fi
endef

# The pjsua2-python wheels exist only for CPython on these machines and for the Python versions
# of requires-python in pyproject.toml: with any other $(PYTHON), stop with that reason before
# the virtual environment is made, instead of failing in pip's resolver.
PYTHON_MACHINES := x86_64
define PYTHON_CHECK
import operator, platform, re, sys
spec = re.search(r"^requires-python *= *\x22([^\x22]+)", open("pyproject.toml").read(), re.M).group(1)
clauses = [re.match(r" *([<>=!]=?) *([0-9.]+)", c).groups() for c in spec.split(",")]
ops = {"<": operator.lt, "<=": operator.le, ">": operator.gt}
ops.update({">=": operator.ge, "==": operator.eq, "!=": operator.ne})
have = lambda want: tuple(sys.version_info[: len(want.split("."))])
ok = all(ops[op](have(want), tuple(map(int, want.split(".")))) for op, want in clauses)
machines, machine = "$(PYTHON_MACHINES)".split(), platform.machine()
kind, version = platform.python_implementation(), platform.python_version()
ok = ok and kind == "CPython" and machine in machines
need = "sipai needs CPython %s on %s (pjsua2-python has wheels for those only)" % (spec, "/".join(machines))
print("" if ok else "%s; %s is %s %s on %s" % (need, "$(PYTHON)", kind, version, machine))
endef
define newline


endef
# Empty on a supported interpreter, else the reason (one line); expanded when python-check runs.
python_problem = $(shell { $(PYTHON) -c '$(subst $(newline),; ,$(PYTHON_CHECK))'; } 2>&1 || echo "$(PYTHON) does not run")

.PHONY: python-check
python-check:
	$(if $(python_problem),$(error $(python_problem)))

system-deps: python-check
	$(call ensure_debs,$(DEPS_RUN))

system-deps-test: system-deps
	$(call ensure_debs,$(DEPS_TEST))

$(BIN)/python: | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The pipecat-ai wheel carries the Smart Turn end-of-turn model (BSD-2): only that ONNX file is
# used (run with onnxruntime, which faster-whisper brings), so the wheel goes in without the
# framework's own dependencies.
MODEL_WHEELS := 'pipecat-ai==1.14.0'

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $@ $(STAMP_RUN)

## run: the daemon in the foreground (Ctrl-C stops it). CONFIG=path/to/sipai.toml to use a file.
run: $(STAMP_RUN)
	exec $(BIN)/sipai run $(if $(CONFIG),--config $(CONFIG))

## test: lint, type check and the whole test suite: in two processes, then the tests that bound
## wall-clock time in milliseconds (marker realtime) alone.
test: system-deps-test lint typecheck
	PYTHONASYNCIODEBUG=1 $(BIN)/pytest -n 2 --dist loadfile -m "not realtime"
	PYTHONASYNCIODEBUG=1 $(BIN)/pytest -m realtime

lint: $(STAMP_TEST)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP_TEST)
	$(BIN)/mypy

unit: $(STAMP_TEST)
	$(BIN)/pytest tests/unit

## bench: the benchmarks under bench/, each printing JSON.
bench: $(STAMP_TEST)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/media.py
	$(BIN)/python -m bench.calls
	$(BIN)/python -m bench.outbound

format: $(STAMP_TEST)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache var
