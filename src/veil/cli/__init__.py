"""The ``veil`` command (typer): ``main`` is the app, one module per command group.

The CLI uses the library and nothing imports it back (tests/test_layering.py); it re-exports
nothing: ``veil.cli.main:app`` is the entry point.
"""

__all__: list[str] = []
