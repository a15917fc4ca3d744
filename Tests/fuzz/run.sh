#!/bin/bash
# libFuzzer harnesses for the parsers that face the network: the HTTP/WebSocket handshake,
# the RFC 6455 frame decoder and the streamotter.v1 request parser.
#
#   Tests/fuzz/run.sh SECONDS [TARGET...]    build, then fuzz each target for SECONDS
#
# Each target is built by swiftc (outside SwiftPM, so no other target sees the sanitizer
# flags) from Sources/StreamOtterCore plus its harness, with -sanitize=fuzzer,address.
# Limits: 64 MB per allocation (-malloc_limit_mb), 1 GB RSS, 2 s per input: an unbounded
# allocation or a hang is a finding like a crash. Crashes land in build/fuzz/findings/.
# The working corpus is build/fuzz/corpus/TARGET, seeded from Tests/fuzz/seeds/TARGET.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=${*:-"handshake frames protocol"}
SWIFTC=${SWIFTC:-$(command -v swiftc || echo /opt/swift/usr/bin/swiftc)}
OUT=build/fuzz
mkdir -p "$OUT/findings"
python3 Tests/fuzz/seeds.py "$OUT/seeds"
declare -A HARNESS=([handshake]=FuzzHandshake [frames]=FuzzFrames [protocol]=FuzzProtocol)
status=0
passed=0
failed=0
for t in $TARGETS; do
  bin="$OUT/fuzz-$t"
  src=(Sources/StreamOtterCore/*.swift Tests/fuzz/FuzzSupport.swift "Tests/fuzz/${HARNESS[$t]}.swift")
  if [ ! -x "$bin" ] || [ -n "$(find "${src[@]}" -newer "$bin" 2>/dev/null | head -1)" ]; then
    echo "building $bin"
    if ! "$SWIFTC" -sanitize=fuzzer,address -parse-as-library -O -g -module-name "Fuzz_$t" "${src[@]}" \
         -o "$bin" >"$OUT/build-$t.log" 2>&1; then
      grep -v "Cannot export local symbol" "$OUT/build-$t.log" | tail -40; exit 2
    fi
  fi
  mkdir -p "$OUT/corpus/$t"
  cp -n "$OUT/seeds/$t"/* "$OUT/corpus/$t"/ 2>/dev/null || true
  echo "fuzzing $t for ${SECONDS_PER_TARGET}s"
  log="$OUT/fuzz-$t.log"
  if "$bin" "$OUT/corpus/$t" -max_total_time="$SECONDS_PER_TARGET" -timeout=2 -rss_limit_mb=1024 \
       -malloc_limit_mb=64 -max_len=65536 -artifact_prefix="$OUT/findings/$t-" -print_final_stats=1 \
       >"$log" 2>&1; then
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$log" | sed "s/^/  $t: /"
    echo "  $t: corpus $(ls "$OUT/corpus/$t" | wc -l) inputs, no finding"
    passed=$((passed + 1))
  else
    echo "  $t: FINDING (see $log and $OUT/findings/)"; tail -30 "$log"; status=1
    failed=$((failed + 1))
  fi
done
# The plain closing line test summaries use: one target = one test.
echo "fuzz: $passed passed, $failed failed"
exit $status
