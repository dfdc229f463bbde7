"""Two suite result files on the same cells: stagetune's own test score after - before, and each file's
stagetune - peer, over the (data set, seed) cells the after file holds.

    python bench/suite_before_after.py BEFORE.json AFTER.json [--peers optuna-tpe optuna-random-2B]
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/suite_before_after.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite_stats import bootstrap_mean, scores_by_cell


def main(argv: list[str] | None = None) -> None:
    """Print the paired figures (mean, 95% bootstrap interval, W-T-L) on the after file's cells."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--peers", nargs="+", default=["optuna-tpe", "optuna-random-2B"])
    args = parser.parse_args(argv)
    before, after = (scores_by_cell(json.loads(p.read_text())["outcomes"]) for p in (args.before, args.after))
    cells = sorted(c for c in after if "stagetune" in after[c] and "stagetune" in before.get(c, {}))
    print(f"{len(cells)} cells")
    rows = [("stagetune after - before", [after[c]["stagetune"] - before[c]["stagetune"] for c in cells])]
    for peer in args.peers:
        for label, scores in (("before", before), ("after", after)):
            diffs = [scores[c]["stagetune"] - scores[c][peer] for c in cells if peer in scores[c]]
            rows.append((f"{label}: stagetune - {peer}", diffs))
    for label, diffs in rows:
        interval = bootstrap_mean(diffs)
        wins, losses = sum(d > 1e-9 for d in diffs), sum(d < -1e-9 for d in diffs)
        print(
            f"{label}: {interval.mean:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}], "
            f"{wins}-{len(diffs) - wins - losses}-{losses} ({len(diffs)} pairs)"
        )


if __name__ == "__main__":
    main()
