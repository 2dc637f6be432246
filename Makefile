# Two entry points for a fresh machine: `make demo` and `make test`. Both are safe to run twice.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FLINK_LIBS := shigawire-apache-flink-libraries==2.0.0.post1
FLINK_JARS := $(VENV)/flink-libs/pyflink/lib
UDF_SOURCES := $(shell find flink_jobs/java -name '*.java')
# Debian's `prometheus` package: promtool for `make lint`, the server for tests/integration/test_observability.py.
PROMTOOL := $(shell command -v promtool 2>/dev/null || echo /usr/bin/promtool)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint venv clean

venv: $(STAMP)

# Reinstall whenever pyproject.toml changes; the stamp makes a second run a no-op.
$(STAMP): pyproject.toml $(UDF_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Flink's Kafka connector jars, outside site-packages: its other jars would sit beside pyflink's own.
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/flink-libs $(FLINK_LIBS)
	# The job's Java table function, compiled against PyFlink's own jars (needs a JDK 17: javac, jar).
	rm -rf build/udf && mkdir -p build/udf
	javac -nowarn -cp "$$($(BIN)/python -c 'import pyflink, os; print(os.path.dirname(pyflink.__file__))')/lib/*" \
		-d build/udf $(UDF_SOURCES)
	jar cf $(FLINK_JARS)/shelfcast-flink-udf.jar -C build/udf .
	touch $@

# Installed only when missing. Its postinst starts the daemon where nothing forbids it (no policy-rc.d): stop
# and disable that one, the tests start their own servers on free ports.
$(PROMTOOL):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
	if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now prometheus; \
	elif [ -f /run/prometheus/prometheus.pid ]; then $(SUDO) /etc/init.d/prometheus stop; fi

demo: $(STAMP)
	$(BIN)/shelfcast demo

lint: $(STAMP) $(PROMTOOL)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PROMTOOL) check config deploy/prometheus/prometheus.yml
	$(PROMTOOL) check rules deploy/prometheus/alerts.yml

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .shelfcast .pytest_cache .ruff_cache
