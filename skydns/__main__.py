"""``python -m skydns``: the skydns command."""

from __future__ import annotations

from skydns import cli

if __name__ == "__main__":
    cli.main()
