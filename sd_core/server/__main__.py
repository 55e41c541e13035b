"""`python -m sd_core.server --model PATH ...` (the same as `sd-core serve`)."""

from .main import main

raise SystemExit(main())
