"""``python -m apiary.cli`` is the ``apiary`` command."""

from apiary.cli import main

main()
