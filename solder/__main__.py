from __future__ import annotations

from solder.cli import main

main()
