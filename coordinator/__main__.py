"""``python -m coordinator`` is ``apiary coordinator``."""

import sys

from apiary.cli import app

if __name__ == "__main__":
    app(["coordinator", *sys.argv[1:]])
