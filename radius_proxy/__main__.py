"""`python -m radius_proxy` is the same as the `radius-proxy` command."""

from __future__ import annotations

import sys

from radius_proxy.cli import main

sys.exit(main())
