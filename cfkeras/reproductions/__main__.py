"""`python -m cfkeras.reproductions imdb|snli|imdb-few [args]`."""

from cfkeras.reproductions.cli import main

raise SystemExit(main())
