"""`python -m vlmq`: the `vlmq` command."""

from vlmq.cli import main

main()
