"""tasks layer of QLCP."""
