"""`python -m bench`: the side-by-side table against the peer (bench/compare.py)."""

import argparse

from bench.compare import __doc__ as description
from bench.compare import main

parser = argparse.ArgumentParser(prog="python -m bench", description=description)
parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
parser.add_argument(
    "--storm-only",
    dest="only",
    action="store_const",
    const="storm",
    help="only the reconnect storm (make bench-storm)",
)
parser.add_argument(
    "--capacity-only",
    dest="only",
    action="store_const",
    const="capacity",
    help="only the capacity rows (make bench-capacity)",
)
parser.add_argument(
    "--publish-only",
    dest="only",
    action="store_const",
    const="publish",
    help="only the publish rows: throughput, acknowledgement, with a replica (make bench-publish)",
)
main(parser.parse_args())
