"""``python -m trioserve``: the command line (``python -m trioserve --help``)."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m trioserve"))
