"""``odvla`` command line: ``main.py`` dispatches to the ``cmd_*.py`` modules."""
