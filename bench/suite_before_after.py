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

from bench.suite_stats import STAGETUNE, Pair, bootstrap_mean, scores_by_cell, wins_ties_losses


def main(argv: list[str] | None = None) -> None:
    """Print the paired figures (mean, 95% bootstrap interval, W-T-L) on the after file's cells."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--peers", nargs="+", default=["optuna-tpe", "optuna-random-2B"])
    args = parser.parse_args(argv)
    before, after = (_cells(parser, path) for path in (args.before, args.after))
    cells = sorted(c for c in after if STAGETUNE in after[c] and STAGETUNE in before.get(c, {}))
    print(f"{len(cells)} cells")
    rows = [("stagetune after - before", [Pair(*c, after[c][STAGETUNE], before[c][STAGETUNE]) for c in cells])]
    for peer in args.peers:
        for label, scores in (("before", before), ("after", after)):
            pairs = [Pair(*c, scores[c][STAGETUNE], scores[c][peer]) for c in cells if peer in scores[c]]
            rows.append((f"{label}: stagetune - {peer}", pairs))
    for label, pairs in rows:
        interval = bootstrap_mean([p.difference for p in pairs])
        wins, ties, losses = wins_ties_losses(pairs)
        print(
            f"{label}: {interval.mean:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}], "
            f"{wins}-{ties}-{losses} ({len(pairs)} pairs)"
        )


def _cells(parser: argparse.ArgumentParser, path: Path) -> dict[tuple[str, int], dict[str, float]]:
    """(data set, seed) -> method -> score of a suite result file; a clear usage error if it is not one."""
    try:
        return scores_by_cell(json.loads(path.read_text(encoding="utf-8"))["outcomes"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        parser.error(f"{path}: not a suite result file with 'outcomes' ({error!r}); give a bench/results/*.json")


if __name__ == "__main__":
    main()
