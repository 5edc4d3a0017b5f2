"""The worker: attests, registers with the coordinator, runs the sandboxed engine and serves the
OHTTP gateway in front of it (``gateway`` is the pipeline open → admit → forward → encode → settle).

It re-exports nothing: its public surface is ``veil worker`` and the gateway's wire protocol.
"""

__all__: list[str] = []
