"""The device side: connect to a SniTun server and serve its callers."""
