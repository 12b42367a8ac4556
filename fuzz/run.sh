#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds each (make fuzz-smoke: 10, make fuzz: 600), starting
# from the committed seeds in fuzz/corpus/<target> (read only) and a working corpus in
# target/fuzz-corpus/<target>. Prints executions, corpus size and crashes per target; exits
# non-zero when any target crashed (the input is under fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O
report=target/fuzz-report.md
mkdir -p target
{
  echo "| target | seconds | executions | exec/s | corpus | crashes |"
  echo "|---|---|---|---|---|---|"
} > "$report"
failed=0
for t in "${targets[@]}"; do
  work=target/fuzz-corpus/$t
  rm -rf "fuzz/artifacts/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  log=target/fuzz-$t.log
  set +e
  # Leak detection is off: libtorch keeps process-lifetime allocations that LeakSanitizer
  # reports on every run; memory growth per input still trips -rss_limit_mb.
  cargo +nightly fuzz run -O "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -detect_leaks=0 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  corpus=$(find "$work" -type f | wc -l)
  crashes=$(find "fuzz/artifacts/$t" -type f | wc -l)
  rate=$(( runs / (secs > 0 ? secs : 1) ))
  echo "| $t | $secs | $runs | $rate | $corpus | $crashes |" >> "$report"
  if ((rc != 0 || crashes > 0)); then
    echo "fuzz: $t failed (exit $rc); log $log:" >&2
    grep -v "^\s*\[" "$log" | cut -c1-300 | tail -60 >&2
    failed=1
  fi
done
cat "$report"
exit $failed
