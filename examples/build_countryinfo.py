"""Write the countryinfo fact set (CounterFact schema) to a JSON or JSONL file.

    python examples/build_countryinfo.py facts.json [--seed 0] [--relation capital ...]
        [--max-per-relation N] [--split dev|test]

The same arguments always give byte-identical output (see nmkevc/datasets/countryinfo_set.py
for how the set is built). Prints how many records each relation got.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nmkevc.datasets.countryinfo_set import (
    RELATION_NAMES,
    build_countryinfo,
    count_by_relation,
    write_dataset,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output .json or .jsonl file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--relation", action="append", choices=RELATION_NAMES)
    ap.add_argument("--max-per-relation", type=int)
    ap.add_argument("--split", choices=["dev", "test"], help="only the dev or the test part")
    args = ap.parse_args()
    records = build_countryinfo(args.seed, args.relation, args.max_per_relation, split=args.split)
    write_dataset(records, args.out)
    counts = count_by_relation(records)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()), f"(total {len(records)})")


if __name__ == "__main__":
    main()
