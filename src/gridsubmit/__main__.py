"""``python -m gridsubmit`` and the ``gridsubmit`` console script.

The CLI is imported inside :func:`main`, so that Ctrl-C while it loads (a second or so on a
busy login node) ends like Ctrl-C at any other moment: exit 130, one line, no traceback."""

import sys


def main() -> int:
    try:
        from .cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        print("\ngridsubmit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
