"""python -m lab up | down [--purge] | status"""

from __future__ import annotations

import argparse
import sys

from lab import core
from lab.settings import LabError


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=core.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="build and start the lab (a no-op when it is up)")
    down = commands.add_parser("down", help="stop and remove the lab")
    down.add_argument("--purge", action="store_true", help="remove the cached base as well")
    commands.add_parser("status", help="say whether the lab is up")
    args = parser.parse_args()
    try:
        if args.command == "up":
            core.up()
        elif args.command == "down":
            core.down(purge=args.purge)
        else:
            return core.status()
    except LabError as error:
        print(f"lab: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
