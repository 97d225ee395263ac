"""deployments layer of QLCP."""
