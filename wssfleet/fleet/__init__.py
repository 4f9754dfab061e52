"""Control-machine side of wssfleet: settings, secrets, inventories, wheels, status."""
