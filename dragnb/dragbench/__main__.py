"""`python -m dragnb.dragbench world|convert`: make a dataset from the shape world; convert a dataset's format.

    python -m dragnb.dragbench world OUT --n 20 [--format pickle|json]     # DragBench-format shape-world cases
    python -m dragnb.dragbench convert SRC DST --to json|pickle            # pickle-free twin and back

Running a benchmark is `python -m dragnb dragbench DATA_DIR --out OUT` (see docs/dragbench.md).
"""
from __future__ import annotations

import argparse
import sys

from .format import FORMATS, convert_dataset
from .world import WORLD_SEED0, make_world_dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dragnb.dragbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("world", help="write a DragBench-format dataset of shape-world cases (truth known)")
    w.add_argument("out", help="dataset folder to write (category folders of samples)")
    w.add_argument("--n", type=int, default=20, help="samples (default 20)")
    w.add_argument("--format", default="pickle", choices=FORMATS, help="meta_data.pkl (official) or meta.json")
    w.add_argument("--seed0", type=int, default=WORLD_SEED0, help="first world seed (default 10**9: held out)")
    c = sub.add_parser("convert", help="copy a dataset in the other format (pickles read safely)")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--to", required=True, choices=FORMATS)
    a = p.parse_args(argv)
    try:
        if a.command == "world":
            print(f"wrote {len(make_world_dataset(a.out, a.n, a.format, a.seed0))} samples under {a.out}")
            return 0
        res = convert_dataset(a.src, a.dst, a.to)
        for sid, err in res["errors"].items():
            print(f"skipped {sid}: {err}", file=sys.stderr)
        print(f"converted {res['converted']} samples to {a.to} under {a.dst}")
        return 0 if not res["errors"] else 1
    except (ValueError, OSError) as e:
        print(f"dragnb.dragbench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
