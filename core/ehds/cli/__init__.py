"""The ehds command line."""
