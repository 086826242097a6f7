"""`python -m healthz` -> cli.main()."""

from __future__ import annotations

from healthz import cli

if __name__ == "__main__":
    cli.main()
