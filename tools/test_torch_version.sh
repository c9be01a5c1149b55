#!/usr/bin/env bash
# Run the test suite against one torch version, in a fresh virtual environment.
#
#   bash tools/test_torch_version.sh VERSION [VENV_DIR] [-- PYTEST_ARGS...]
#
# Installs torch==VERSION from the package registry (every version but the one the dev extra pins
# is a multi-GB CUDA build; it runs on the CPU all the same), this package without its pinned
# dependencies, and the test dependencies; then runs the default test suite (or PYTEST_ARGS).
# Not part of the default CI run; docs/torch-versions.md records the results of the ends of the
# supported range.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: bash tools/test_torch_version.sh VERSION [VENV_DIR] [-- PYTEST_ARGS...]" >&2
    exit 2
fi
version=$1
shift
venv=".venv-torch-$version"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
    venv=$1
    shift
fi
[ "${1:-}" = "--" ] && shift
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==$version"
"$venv/bin/python" -m pip install --quiet --no-deps -e .
"$venv/bin/python" -m pip install --quiet "numpy>=1.23" "matplotlib>=3.6" "tqdm>=4.64" "scikit-learn>=1.2" \
    "pytest>=7" "hypothesis>=6.80" "pandas>=2" "lightning>=2.6"
installed=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
echo "torch $installed in $venv"
case "$installed" in
    "$version"|"$version"+*) ;;
    *) echo "expected torch $version, got $installed (a dependency replaced it)" >&2; exit 1 ;;
esac
"$venv/bin/python" -m pytest "$@"
