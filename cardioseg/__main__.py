"""Entry point for ``python -m cardioseg``."""

from __future__ import annotations

from cardioseg.cli import main

if __name__ == "__main__":
    main()
