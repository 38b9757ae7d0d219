#!/usr/bin/env bash
# Run each test file on its own (a fresh pytest per file), to prove no test needs another
# file to have run first. With -t, run each test (node id) on its own instead.
#
#   tests/run_each_alone.sh [-t] [PATH...]     PATH: test files or folders (default: tests)
#
# Extra pytest arguments go in PYTEST_ARGS. Prints one line per run and the failures at
# the end; exits 1 if any run failed (pytest's "no tests collected", status 5, is a pass:
# a file whose tests are all deselected or skipped by marker).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-.venv/bin/pytest}
each_test=0
if [[ ${1:-} == -t ]]; then each_test=1; shift; fi
paths=("$@")
[[ ${#paths[@]} -gt 0 ]] || paths=(tests)

targets=()
while IFS= read -r file; do
    if ((each_test)); then
        while IFS= read -r id; do targets+=("$id"); done < <(
            $PYTEST --collect-only -q -p no:cacheprovider ${PYTEST_ARGS:-} "$file" 2>/dev/null |
                grep '::'
        )
    else
        targets+=("$file")
    fi
done < <(find "${paths[@]}" -name 'test_*.py' -not -path '*/support/*' | sort)

failed=()
for target in "${targets[@]}"; do
    start=$SECONDS
    # shellcheck disable=SC2086
    out=$($PYTEST -q -p no:cacheprovider ${PYTEST_ARGS:-} "$target" 2>&1)
    status=$?
    summary=$(tail -n 1 <<<"$out")
    printf '%-4s %4ds  %s  (%s)\n' "$([[ $status == 0 || $status == 5 ]] && echo ok || echo FAIL)" \
        $((SECONDS - start)) "$target" "$summary"
    if [[ $status != 0 && $status != 5 ]]; then
        failed+=("$target")
        tail -n 40 <<<"$out" | sed 's/^/    /'
    fi
done
echo "${#targets[@]} runs, ${#failed[@]} failed"
for target in "${failed[@]}"; do echo "FAILED $target"; done
[[ ${#failed[@]} == 0 ]]
