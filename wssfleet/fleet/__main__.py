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
    for name, text in (
        ("status", "the fleet at a glance"),
        ("renew", "force a certificate renewal through the cron job's own script"),
        ("summary", "where to point a browser, and how to mint a token"),
        ("describe", "the inventory's hosts and data as JSON (used by the other commands)"),
    ):
        commands.add_parser(name, help=text).add_argument("inventory")
    args = parser.parse_args()
    if args.command == "settings":
        print(markdown_table())
        return 0
    from wssfleet.fleet import inventory

    if args.command == "describe":
        import json

        print(json.dumps(inventory.describe(args.inventory), default=str))
        return 0
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
    if args.command == "renew":
        return renew(fleet)
    if args.command == "summary":
        return summary(fleet, args.inventory)
    from wssfleet.fleet import status as fleet_status

    return fleet_status.show(fleet)


def renew(fleet) -> int:
    from wssfleet.fleet import remote

    # The very script /etc/cron.d/wssfleet-certbot runs, without its random delay.
    result = remote.run(fleet.master, "/usr/local/sbin/wssfleet-renew --force-renewal", 300)
    print(result.stdout + result.stderr, end="")
    return result.returncode


def summary(fleet, inventory: str) -> int:
    domain = fleet.settings.domain
    print(f"""
wssfleet is deployed: https://{domain}/  (WebSocket: wss://{domain}/ws)
Mint a token:  .venv/bin/wssfleet token --inventory {inventory} --sub NAME [--ttl SECONDS]
Open the demo: https://{domain}/#token=<token>&channel=lobby
Fleet status:  make status INVENTORY={inventory}""")
    if "lab" in inventory:
        print(
            f"The lab's {domain} is not in public DNS: point it at the master, e.g.\n"
            f"  echo '{fleet.master.address} {domain}' >> /etc/hosts\n"
            f"and trust the lab's ACME root: .lab/acme/root.pem"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
