#!/usr/bin/env bash
# Build soce's wheel, install it into a fresh virtual environment outside the checkout, and run
# a short study from an empty directory: what a user who runs `pip install soce-*.whl` gets.
set -euo pipefail
PYTHON=${PYTHON:-python3}
checkout=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# setuptools builds in the source tree, and a stale build/ could carry deleted files into the wheel
rm -rf "$checkout/build"
"$PYTHON" -m pip wheel -q --no-deps -w "$work/dist" "$checkout"
rm -rf "$checkout/build"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q torch==2.13.0   # the CPU build, before anything pulls CUDA packages
"$work/venv/bin/python" -m pip install -q "$work"/dist/soce-*.whl

mkdir "$work/user" && cd "$work/user"
export WANDB_CONFIG_DIR="$work/wandb-config" WANDB_CACHE_DIR="$work/wandb-cache"
"$work/venv/bin/soce" --cfg job > cfg.txt
grep -q "zoo: default" cfg.txt
"$work/venv/bin/soce" benchmark=demo pool=all hydra.run.dir=study
for f in scores.csv analysis.json selection.json report.md; do
  test -s "study/$f" || { echo "wheel smoke: study/$f is missing" >&2; exit 1; }
done
ls study/wandb/offline-run-* > /dev/null
"$work/venv/bin/python" - <<'PY'
import soce, pathlib
where = pathlib.Path(soce.__file__).parent
assert "site-packages" in str(where), f"soce was imported from {where}, not the installed wheel"
tasks = sorted(p.name for p in (where / "toy_fc" / "tasks").iterdir())
assert "toy_fc.py" in tasks and "toy_fc_dev_simple.yaml" in tasks, f"toy_fc's lm-eval tasks are not in the wheel: {tasks}"
print(f"wheel smoke: soce from {where} composed its config and ran the demo study")
PY
