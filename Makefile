# The two set-up commands of the README. Each creates .venv if missing and installs everything.
.PHONY: demo test bench lint setup

setup:
	bash scripts/setup.sh

# Synthetic cohort -> small ensemble -> predict -> explain -> atlases -> report (+ viewer if a
# display is present; headless it writes the report and a screenshot instead).
demo: setup
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then .venv/bin/bodyage demo demo_workspace; \
	elif command -v xvfb-run >/dev/null; then \
	  xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/bodyage demo demo_workspace --no-gui; \
	else .venv/bin/bodyage demo demo_workspace --no-gui; fi

test: setup
	bash scripts/test.sh

bench: setup
	.venv/bin/python bench/run.py

lint: setup
	.venv/bin/ruff check bodyage_core bodyage_gui tests bench
