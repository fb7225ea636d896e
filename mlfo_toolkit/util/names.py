"""Names of cohorts and deployments: they travel to agents and into folder and process names, so one rule everywhere."""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# The same, or empty (a field that may be left out).
OPTIONAL_NAME = r"^([A-Za-z0-9][A-Za-z0-9_.-]*)?$"
NAME_MAX = 64
# Seeds travel as form fields and TOML integers: keep them in a signed 32-bit range.
SEED_MAX = 2**31 - 1


def safe_name(text: str) -> str:
    """A name that passes NAME_PATTERN, derived from any text (an intentID like 'edge intent 01')."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:NAME_MAX]
    return cleaned or "cohort"
