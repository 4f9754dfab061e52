"""wssfleet's control side: settings, inventories, the deploy (pyinfra), rollouts, status.

It runs on the operator's machine; the service it deploys is the separate package in
service/wssfleet, and nothing here is shipped to the hosts but the hostside/ helpers.
"""
