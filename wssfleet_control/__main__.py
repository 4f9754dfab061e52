"""python -m wssfleet_control: the same as the `wssfleet` command."""

from wssfleet_control.cli import main

main(prog_name="wssfleet")
