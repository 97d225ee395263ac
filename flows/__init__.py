"""flows layer of QLCP."""
