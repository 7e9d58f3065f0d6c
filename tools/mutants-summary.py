#!/usr/bin/env python3
"""Sums cargo-mutants outcomes (one or more `outcomes.json`, e.g. the shards of a run) per
source file: mutants, unviable, caught, timeouts, missed and the score
(caught + timeout) / (caught + timeout + missed), plus the missed mutants' names.

    tools/mutants-summary.py mutants.out/*/mutants.out/outcomes.json [more runs...]

A mutant that appears in several files (a re-run) counts once, with its last outcome, so a
re-run of the survivors against new tests (tools/mutants.sh with RE=...) given after the
first run's files updates the table. Stdlib only.
"""
import json
import sys
from collections import OrderedDict


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    last = OrderedDict()
    for path in sys.argv[1:]:
        with open(path) as f:
            data = json.load(f)
        for o in data["outcomes"]:
            m = o["scenario"]
            if not isinstance(m, dict) or "Mutant" not in m:
                continue  # the baseline
            m = m["Mutant"]
            last[m["name"]] = (m["file"], o["summary"])
    per = OrderedDict()
    for name, (file, outcome) in sorted(last.items()):
        row = per.setdefault(file, {"mutants": 0, "Unviable": 0, "CaughtMutant": 0,
                                    "Timeout": 0, "MissedMutant": 0, "missed": []})
        row["mutants"] += 1
        row[outcome] = row.get(outcome, 0) + 1
        if outcome == "MissedMutant":
            row["missed"].append(name)
    print("| module | mutants | unviable | caught | timeout | missed | score |")
    print("|---|---|---|---|---|---|---|")
    for file, r in per.items():
        viable = r["CaughtMutant"] + r["Timeout"] + r["MissedMutant"]
        score = 100.0 * (r["CaughtMutant"] + r["Timeout"]) / viable if viable else 100.0
        print(f"| `{file}` | {r['mutants']} | {r['Unviable']} | {r['CaughtMutant']} | "
              f"{r['Timeout']} | {r['MissedMutant']} | {score:.1f}% |")
    for file, r in per.items():
        for name in r["missed"]:
            print("MISSED", name)


main()
