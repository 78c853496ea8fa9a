"""The public side: SNI proxy and peer listener."""
