"""The local lab: real Debian 13 or 12 hosts (systemd-nspawn) and a local Let's Encrypt (Pebble).

Everything about fake infrastructure lives here and nothing about the deploy: the lab makes
hosts that look like fresh servers, writes ``.lab/lab.json``, and ``inventory/lab.py``
reads that file. ``wssfleet lab up|down|status`` (or ``make lab-up`` / ``make lab-down``).
"""
