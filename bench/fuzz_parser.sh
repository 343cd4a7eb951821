#!/usr/bin/env bash
# Fuzzes the HTTP request parser with libFuzzer (the HTTPParserFuzz target, Sources/HTTPParserFuzz)
# for a given time and prints executions, coverage and crashes on closing lines.
#
#   bash bench/fuzz_parser.sh [SECONDS]        # default 600
#
# The build goes to its own scratch path (.build-fuzz, ignored by git) so the main .build is never
# touched; the seed corpus (Tests/Fixtures/fuzz/corpus) is copied to a temporary directory, so the
# committed fixtures are not modified; crashes go to a temporary artifact directory and are listed.
# Build and fuzzer run under `nice -n ${NICE:-19}`. Exits 1 when a crash (or hang, OOM, leak) was found.
# Env: NICE (default 19), MAX_LEN (largest input, default 8192: above the fuzz limits' 4096-byte body),
# TIMEOUT (seconds one input may take before it counts as a hang, default 10), KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-${FUZZ_SECONDS:-600}}
[[ "$secs" =~ ^[0-9]+$ ]] && (( secs > 0 )) || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
nice_level=${NICE:-19}
scratch=.build-fuzz

echo "== building HTTPParserFuzz (release, --sanitize=fuzzer, scratch path $scratch)"
build_log=$(mktemp "${TMPDIR:-/tmp}/fuzz_parser_build.XXXXXX")
if ! MOCOD_FUZZ=1 nice -n "$nice_level" swift build -c release --sanitize=fuzzer --product HTTPParserFuzz \
    --scratch-path "$scratch" > "$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    echo "build failed (full log: $build_log)" >&2
    exit 2
fi
tail -n 1 "$build_log"; rm -f "$build_log"
bin="$scratch/release/HTTPParserFuzz"
[[ -x "$bin" ]] || { echo "build failed: $bin missing" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/fuzz_parser.XXXXXX")
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work/corpus"' EXIT   # artifacts and log stay for inspection
mkdir -p "$work/corpus" "$work/artifacts"
cp -R Tests/Fixtures/fuzz/corpus/. "$work/corpus/"
seeds=$(find "$work/corpus" -type f | wc -l)
log="$work/fuzz.log"

echo "== fuzzing for $secs s: $seeds seed inputs, log $log, artifacts $work/artifacts/"
set +e
nice -n "$nice_level" "$bin" "$work/corpus" -max_total_time="$secs" -print_final_stats=1 \
    -max_len="${MAX_LEN:-8192}" -timeout="${TIMEOUT:-10}" -artifact_prefix="$work/artifacts/" > "$log" 2>&1
rc=$?
set -e

# libFuzzer's last status line ("#N DONE cov: C ft: F corp: U/Sb ...") and its final stats.
last=$(grep -E '^#[0-9]+' "$log" | grep -E 'cov: ' | tail -n 1 || true)
field() { sed -nE "s/.*[[:space:]]$1: ([0-9]+).*/\1/p" <<< "$last"; }
fstat() { sed -nE "s/^stat::$1: *([0-9]+).*/\1/p" "$log" | tail -n 1; }
execs=$(fstat number_of_executed_units)
[[ -n "$execs" ]] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<< "$last")
rate=$(fstat average_exec_per_sec)
cov=$(field cov); ft=$(field ft)
corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<< "$last")
new_units=$(fstat new_units_added)
mapfile -t crashes < <(find "$work/artifacts" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort)

echo "== fuzz_parser closing figures"
[[ -n "$last" ]] && echo "last status: $last"
echo "executions: ${execs:-unknown} in $secs s (${rate:-?} exec/s)"
echo "coverage: cov ${cov:-unknown}, ft ${ft:-unknown} (corpus ${corp:-?} units/bytes, ${new_units:-?} new units)"
echo "crashes: ${#crashes[@]}"
for c in "${crashes[@]}"; do
    echo "  $c ($(wc -c < "$c") bytes)"
done
if (( ${#crashes[@]} > 0 )); then
    grep -E '(==[0-9]+==|SUMMARY|Fatal error|Precondition failed|deadly signal)' "$log" | head -n 10 || true
    echo "reproduce: $bin <artifact>; keep a crasher under Tests/Fixtures/fuzz/crashers/ so the tests replay it"
    exit 1
fi
if (( rc != 0 )); then
    echo "libFuzzer exited $rc without an artifact; see $log" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
