# Conveniences over the README's two commands.
.PHONY: demo test docs bench lint

demo:
	python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/art-some demo

test:
	python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest

docs:
	.venv/bin/python -m sphinx -W -b html docs docs/_build/html

bench:
	.venv/bin/pip install -e ".[bench]" && .venv/bin/python benchmarks/certify_throughput.py

lint:
	.venv/bin/ruff check art_some tests benchmarks examples
