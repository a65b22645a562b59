"""`python -m critifusion_tui` is the `critifusion` command."""

from critifusion_tui.cli import main

raise SystemExit(main())
