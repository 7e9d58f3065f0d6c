#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of the modules whose rules the unit tests must pin down:
# the DHT core, the piece picker and choker, the metainfo parser. Not part of CI: a full run
# is hours on two cores. Results go to mutants.out/<group>/ (outcomes.json, caught.txt,
# missed.txt, timeout.txt, unviable.txt); TESTING.md records the scores and every survivor.
#
#   tools/mutants.sh                 # every group
#   tools/mutants.sh dht             # one group: dht | download | torrent
#   JOBS=2 tools/mutants.sh picker   # or a single file stem of any group
#   SHARD=1/4 tools/mutants.sh dht   # a round-robin quarter of the mutants (a sample)
#   IN_PLACE=1 tools/mutants.sh      # mutate this checkout (a scratch worktree!) instead of a
#                                    # copy per group: no fresh baseline build per group
#   RE='regex' tools/mutants.sh dht  # only the mutants whose full name matches (e.g. to
#                                    # re-run the survivors of a previous run)
#   TIMEOUT=12 tools/mutants.sh      # seconds before a mutant's test run counts as hung
#                                    # (default: cargo-mutants' own, 5x the baseline, >= 20 s)
#
# Settings (profile, features, `--lib`) are in .cargo/mutants.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || { echo "error: cargo-mutants is missing (cargo install cargo-mutants --locked)" >&2; exit 1; }
declare -A MODS=(
    [dht]="src/dht/routing.rs src/dht/rpc.rs src/dht/lookup.rs src/dht/peer_store.rs src/dht/node.rs"
    [download]="src/download/picker.rs src/download/choker.rs"
    [torrent]="src/torrent/metainfo.rs"
)
ARGS=("$@")
[[ ${#ARGS[@]} -gt 0 ]] || ARGS=(dht download torrent)
for name in "${ARGS[@]}"; do
    files=${MODS[$name]:-}
    if [[ -z $files ]]; then
        files=$(printf '%s\n' ${MODS[@]} | grep "/$name\.rs$" || true)
        [[ -n $files ]] || { echo "error: unknown group or file: $name" >&2; exit 1; }
    fi
    fargs=()
    for f in $files; do fargs+=(-f "$f"); done
    extra=()
    [[ -z ${SHARD:-} ]] || extra+=(--shard "$SHARD" --sharding round-robin)
    [[ -z ${TIMEOUT:-} ]] || extra+=(--timeout "$TIMEOUT")
    [[ -z ${RE:-} ]] || extra+=(--re "$RE")
    if [[ -n ${IN_PLACE:-} ]]; then extra+=(--in-place); else extra+=(--jobs "${JOBS:-1}"); fi
    mkdir -p "mutants.out/$name"
    echo "== $name: $files" >&2
    # cargo-mutants exits 2 when mutants were missed, 3 on timeouts; both are results here.
    rc=0
    cargo mutants --no-shuffle "${fargs[@]}" "${extra[@]}" --output "mutants.out/$name" || rc=$?
    # (clap's usage errors exit 2 as well: a run happened only if it left its outcomes.)
    if [[ ! ( $rc == 0 || $rc == 2 || $rc == 3 ) || ! -f mutants.out/$name/mutants.out/outcomes.json ]]; then
        echo "error: cargo mutants failed ($rc)" >&2
        exit 1
    fi
    for k in caught missed timeout unviable; do
        printf '   %-8s %s\n' "$k" "$(wc -l < "mutants.out/$name/mutants.out/$k.txt")" >&2
    done
done
