#!/usr/bin/env bash
# The test suite on the newest versions pyproject.toml allows, not on the lock: so that the next
# release that breaks us (as msgspec 0.23 once did, unnoticed until a fresh install) is found by
# us, on purpose, before a lock refresh takes it. Not part of the gating CI run (`.ci/run`).
#
#   scripts/newest.sh                 # the whole suite, services required
#   scripts/newest.sh tests/unit -x   # arguments go to pytest
#
# It installs into a scratch venv it removes afterwards, prints what is newer than the lock, then
# runs pytest with SWITCHBOARD_UNLOCKED=1 (the tests that check the environment is the lock
# skip themselves). Once it passes, `python scripts/lock.py --upgrade` takes those versions.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-newest.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

python3 -m venv "$scratch/venv"
# The build backend too (the lock has it): a venv starts with whatever setuptools Python bundled.
backend=$(python3 -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
# shellcheck disable=SC2086 # one argument per requirement
"$scratch/venv/bin/pip" install -q --upgrade --upgrade-strategy eager -e '.[test,fuzz,lock]' $backend
echo "== the newest allowed versions, where they differ from requirements/dev.txt"
"$scratch/venv/bin/python" - <<'PY'
import sys
sys.path.insert(0, ".")
from scripts.lockfile import differences
print("\n".join(differences()) or "none: the lock is the newest allowed")
PY
echo "== the test suite on them"
SWITCHBOARD_UNLOCKED=1 SWITCHBOARD_REQUIRE_SERVICES=1 "$scratch/venv/bin/pytest" "$@"
