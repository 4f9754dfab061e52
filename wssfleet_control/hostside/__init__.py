"""Host-side helpers: standard-library scripts the roles install in layout.HELPERS, where each
imports its neighbours (``import layout``) as plain modules. Imported here, as
wssfleet_control.hostside.*, they find those neighbours the same way."""

import os
import sys

if os.path.dirname(__file__) not in sys.path:
    sys.path.append(os.path.dirname(__file__))
