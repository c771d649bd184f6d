#!/usr/bin/env bash
# The README's timings, measured as a new user meets them: a fresh clone of this repository's
# HEAD, a fresh virtual environment, the README's install command, then
#   run   the default job twice in an empty folder with an empty compile cache (first and second
#         run: wall and CPU seconds), and once more in a new work dir with the warm cache;
#   tests the README's test command with --durations=40 (the slowest tests), ../shared beside
#         the clone as CI has it.
# Usage: tools/time_fresh_clone.sh run|tests [OUT_DIR]   (OUT_DIR: default /tmp/regnas-timing)
# Prints a table of the timings and leaves the logs in OUT_DIR.
set -euo pipefail
what=${1:?usage: tools/time_fresh_clone.sh run|tests [OUT_DIR]}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${2:-/tmp/regnas-timing}
rm -rf "$out" && mkdir -p "$out"
git clone --quiet "$repo" "$out/clone"
[ -d "$repo/../shared" ] && ln -s "$(cd "$repo/../shared" && pwd)" "$out/shared"
python3 -m venv "$out/venv"
. "$out/venv/bin/activate"
cd "$out/clone"
python -m pip install --quiet --upgrade pip > "$out/pip.log" 2>&1
/usr/bin/time -f "%e %U %S" -o "$out/install.time" \
  python -m pip install --quiet -e ".[test]" >> "$out/pip.log" 2>&1
export XDG_CACHE_HOME="$out/cache"
unset REGNAS_JAX_CACHE_DIR JAX_COMPILATION_CACHE_DIR
timed() {  # timed NAME CMD...: run CMD, keep its output and "wall user sys" in $out/NAME.*
  local name=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$out/$name.time" "$@" > "$out/$name.log" 2>&1
}
row() { awk -v n="$1" '{printf "| %s | %.0f s | %.0f s |\n", n, $1, $2 + $3}' "$out/$2.time"; }
echo "| step | wall | CPU (user + sys) |"
echo "|---|---:|---:|"
row "install" install
case $what in
  run)
    mkdir "$out/work" && cd "$out/work"
    timed first regnas-search
    row "first run (cold compile cache)" first
    timed second regnas-search
    row "second run, the same command" second
    timed warm regnas-search --workdir runs/again
    row "a new work dir, warm compile cache" warm
    ;;
  tests)
    timed tests python -m pytest -q tests --durations=40
    row "python -m pytest -q tests" tests
    tail -n 1 "$out/tests.log"
    ;;
  *) echo "error: run or tests, not $what" >&2; exit 2 ;;
esac
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); logs in $out"
