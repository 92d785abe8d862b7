"""The operator command line (`corral ...`); the entry point is `corral.cli.main.main`."""
