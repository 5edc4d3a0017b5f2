"""The coordinator: attests itself, admits workers by their evidence, releases keys to them and
serves the manifest and the OHTTP key configuration clients verify (``app`` is the HTTP surface,
``state``/``store`` what it persists, ``release`` the key-release decision).

It re-exports nothing: its public surface is ``veil coordinator`` and its HTTP API.
"""

__all__: list[str] = []
