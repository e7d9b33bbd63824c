#!/usr/bin/env bash
# Fuzzes tollgate's input boundaries (issue 11) with cargo-fuzz (libFuzzer, nightly): the
# targets of fuzz/ (see fuzz/src/lib.rs for each one's invariants), each for SECONDS_EACH
# seconds, one after another.
#
#   scripts/fuzz.sh                                   # every target, 10 minutes each
#   SECONDS_EACH=3600 scripts/fuzz.sh client_ip config
#   SECONDS_EACH=20 scripts/fuzz.sh                   # what .ci/run does
#   MERGE=1 scripts/fuzz.sh                           # then merge what was found into fuzz/corpus
#
# Each target starts from the committed corpus fuzz/corpus/<target> (read only) and writes
# what it finds to fuzz/work/<target> (not committed; MERGE=1 adds the inputs that reach new
# code to the committed corpus). A crash stops the script with a non-zero status; libFuzzer
# saves the input in fuzz/artifacts/<target>/. Turn it into a regression: copy it to
# fuzz/regressions/<target>/, fix the code, and `cargo test --test fuzz_corpus` replays it on
# stable from then on.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${SECONDS_EACH:-600}
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(client_ip api_key config client_headers request)
fi

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
rustup toolchain list | grep -q '^nightly' || { echo "the nightly toolchain is missing" >&2; exit 1; }

cargo +nightly fuzz build >&2
for target in "${TARGETS[@]}"; do
    mkdir -p "fuzz/work/$target" "fuzz/corpus/$target"
    dict=()
    [ -f "fuzz/dicts/$target.dict" ] && dict=("-dict=fuzz/dicts/$target.dict")
    echo "== fuzz $target for ${SECONDS_EACH} s =="
    start=$(date +%s)
    cargo +nightly fuzz run "$target" "fuzz/work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 "${dict[@]}" 2>"fuzz/work/$target.log" \
        || { tail -n 60 "fuzz/work/$target.log" >&2; echo "FAIL: $target crashed (input in fuzz/artifacts/$target/)" >&2; exit 1; }
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/work/$target.log" | grep -o '[0-9]*$' || echo "?")
    echo "ok: $target, $runs runs in $(( $(date +%s) - start )) s"
    if [ "${MERGE:-0}" = 1 ]; then
        cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/work/$target" -- -merge=1 \
            2>>"fuzz/work/$target.log"
        echo "merged into fuzz/corpus/$target: $(ls "fuzz/corpus/$target" | wc -l) inputs"
    fi
done
