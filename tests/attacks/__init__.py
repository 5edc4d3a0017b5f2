"""Attack tests: each module performs one attack against real Veil processes (or the real objects
where a process is impractical), shows the refusal with its reason code, and names in its docstring
what the attacker controls. docs/threat-model.md lists every attack with its test.
"""
