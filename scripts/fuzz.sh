#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for N seconds each (default 60), one
# after the other, one libFuzzer process at a time (no -jobs/-fork: the
# machine is shared). Installs cargo-fuzz when missing; needs the nightly
# toolchain (`rustup toolchain install nightly`). Not part of CI: CI replays
# the committed corpora through `cargo test -p gateway-core`.
#
#   scripts/fuzz.sh              every target, 60 s each
#   scripts/fuzz.sh 240          every target, 4 min each
#   scripts/fuzz.sh 240 routing  one target
#
# New inputs go to fuzz/work/<target>/ (ignored by git) and crashes to
# fuzz/artifacts/<target>/; fuzz/corpus/<target>/ is only read. Exits
# non-zero, naming the targets, when any target crashed.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-60}"
shift || true
cd "$REPO/fuzz"
export CARGO_TERM_COLOR=never

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi

FAILED=()
for t in "${TARGETS[@]}"; do
    mkdir -p "work/$t"
    printf '\n==> %s for %ss\n' "$t" "$SECS"
    if ! cargo +nightly fuzz run "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$SECS" -print_final_stats=1; then
        FAILED+=("$t")
    fi
done
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${FAILED[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: no crash in ${TARGETS[*]}"
