//! The client peer: the device side of the tunnel.
