"""``python -m cnnlab``: the ``cnnlab`` command."""

from cnnlab.cli import console_main

console_main()
