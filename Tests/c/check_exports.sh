#!/usr/bin/env bash
# The library exports exactly the functions the header declares, and carries no Swift
# runtime dependency.  usage: check_exports.sh HEADER LIBRARY
set -euo pipefail
header=$1 lib=$2
declared=$(grep -oE 'SOT_API[^;(]*\(' "$header" | grep -oE 'sot_[a-z0-9_]+[[:space:]]*\($' | tr -d ' (' | sort -u)
exported=$(nm -D --defined-only "$lib" | awk '{print $3}' | sort -u)
if [ "$declared" != "$exported" ]; then
  echo "FAIL: exported symbols differ from the header's functions"
  diff <(echo "$declared") <(echo "$exported") || true
  exit 1
fi
if ldd "$lib" | grep -i swift; then
  echo "FAIL: the library depends on a Swift runtime"
  exit 1
fi
soname=$(readelf -d "$lib" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = "libstreamotter.so.0" ] || { echo "FAIL: SONAME is '$soname'"; exit 1; }
echo "exports: $(echo "$declared" | wc -l) functions, all sot_*, no Swift runtime, SONAME $soname"
