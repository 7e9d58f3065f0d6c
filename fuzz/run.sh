#!/usr/bin/env bash
# Fuzzes the named targets (default: all of them) for SECS seconds each, one job, growing
# fuzz/corpus/<target> from it and fuzz/seeds/<target> with the target's dictionary, then
# minimizes the corpus (cargo fuzz cmin). Logs go to fuzz/logs/<target>.log; the last
# stats line of each run is what FUZZING.md records.
#
# Only a stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the nightly-only
# sanitizer flags (-Zsanitizer=address) to stable rustc.
#   fuzz/run.sh                  # all targets, 15 minutes each
#   SECS=60 fuzz/run.sh wire     # one target, one minute
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-900}
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(krpc wire bep9 metainfo mse bep44 crawl_row)
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "error: cargo-fuzz is missing (cargo install cargo-fuzz)" >&2; exit 1; }
mkdir -p fuzz/logs
cargo fuzz build >&2
for t in "${TARGETS[@]}"; do
    [[ -d fuzz/seeds/$t ]] || { echo "error: unknown target $t" >&2; exit 1; }
    mkdir -p "fuzz/corpus/$t"
    echo "== $t: ${SECS}s, corpus at start $(ls "fuzz/corpus/$t" | wc -l) files" >&2
    # libFuzzer exits non-zero on a crash; keep going so the other targets still run, and
    # report it at the end.
    if ! cargo fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -dict="fuzz/dicts/$t.dict" -max_total_time="$SECS" -print_final_stats=1 \
        > "fuzz/logs/$t.log" 2>&1; then
        echo "!! $t: crashed, see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
        FAILED="${FAILED:-} $t"
        continue
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE' "fuzz/logs/$t.log" | tail -1 >&2
    before=$(ls "fuzz/corpus/$t" | wc -l)
    cargo fuzz cmin "$t" "fuzz/corpus/$t" > "fuzz/logs/$t.cmin.log" 2>&1
    echo "   corpus $before -> $(ls "fuzz/corpus/$t" | wc -l) files, $(cat "fuzz/corpus/$t"/* | wc -c) bytes;" \
        "$(grep -E '^#[0-9]+[[:space:]]+DONE' "fuzz/logs/$t.cmin.log" | tail -1)" >&2
done
if [[ -n ${FAILED:-} ]]; then
    echo "error: crashes in:$FAILED" >&2
    exit 1
fi
