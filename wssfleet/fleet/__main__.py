"""python -m wssfleet.fleet check INVENTORY | settings | status INVENTORY"""

from __future__ import annotations

import argparse
import sys

from wssfleet.fleet.settings import SettingsError, markdown_table


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m wssfleet.fleet")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate an inventory and its settings offline")
    check.add_argument("inventory")
    commands.add_parser("settings", help="print every setting with its default (Markdown)")
    status = commands.add_parser("status", help="the fleet at a glance")
    status.add_argument("inventory")
    args = parser.parse_args()
    if args.command == "settings":
        print(markdown_table())
        return 0
    from wssfleet.fleet import inventory

    try:
        fleet = inventory.load(args.inventory)
    except SettingsError as error:
        print(f"wssfleet: {args.inventory}: {error}", file=sys.stderr)
        return 2
    if args.command == "check":
        names = ", ".join(
            f"{node.name} ({'+'.join(fleet.roles_of(node.name))})" for node in fleet.nodes
        )
        print(f"wssfleet: {args.inventory} is valid: {names}; domains {fleet.settings.domains}")
        return 0
    from wssfleet.fleet import status as fleet_status

    return fleet_status.show(fleet)


if __name__ == "__main__":
    sys.exit(main())
