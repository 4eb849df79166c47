#!/bin/sh
# Prints the Python that `make setup` builds .venv with: the first of python3.11 (the version the
# pins in constraints.txt were measured on), python3.12, python3.13, python3.10, python3, python
# whose version is 3.10 to 3.13. Says on stderr which one it took; exits 1, naming what it found,
# when none fits. PYTHON=/path/to/python make setup chooses one yourself.
found=""
for candidate in ${PYTHON:-python3.11 python3.12 python3.13 python3.10 python3 python}; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    version=$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
    case "$version" in
        3.10|3.11|3.12|3.13)
            echo "make setup: using $candidate (Python $version)" >&2
            command -v "$candidate"
            exit 0 ;;
        *) found="$found $candidate (Python $version)" ;;
    esac
done
echo "make setup: no Python 3.10 to 3.13 found${found:+ (found:$found)}." >&2
echo "  Install one (e.g. python3.11) or point PYTHON at it: PYTHON=/path/to/python3.11 make setup" >&2
exit 1
