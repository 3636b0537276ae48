#!/usr/bin/env python
"""Django's command-line utility for the test/demo site."""

import os
import sys
from pathlib import Path


def main() -> None:
    """Run a management command against testproject.settings.

    src/ goes on the path so the library works from a plain checkout too,
    without an editable install.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
