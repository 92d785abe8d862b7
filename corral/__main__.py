"""The `corral` entry point.

`corral agent ...` is routed to the lean agent command line before anything else is
imported, so an agent on a node loads only what it needs (no web framework, no
database driver, no rich terminal library). Everything else goes to the operator CLI.
"""

import sys


def main() -> None:
    """Run the corral command line."""
    args = sys.argv[1:]
    if args[:1] == ["agent"]:
        from corral.agent.cli import main as agent_main

        sys.exit(agent_main(args[1:]))
    from corral.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
