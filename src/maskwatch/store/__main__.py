"""`python -m maskwatch.store revision -m "what changes" [--autogenerate]`: a new schema revision."""

from maskwatch.store.migrate import main

main()
