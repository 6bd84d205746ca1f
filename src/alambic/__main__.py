"""`python -m alambic` is the `alambic` command."""

from alambic.cli import app

app()
