"""Azure Key Vault Secure Key Release (SKR) policies, evaluated over verified MAA claims.

The grammar of Key Vault's key release policies, so that a ``key-release-policy.json`` written for
Azure (its confidential-VM tutorial's, for instance) works unchanged as a Veil release policy::

    {"version": "1.0.0",
     "anyOf": [{"authority": "https://sharedeus2.eus2.attest.azure.net",
                "allOf": [{"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
                          {"claim": "x-ms-isolation-tee.x-ms-compliance-status",
                           "equals": "azure-compliant-cvm"}]}]}

An authority block holds ``allOf`` or ``anyOf`` conditions; a condition is ``{"claim", "equals"}``,
the older ``{"claim", "condition": "equals", "value"}``, or a nested ``allOf``/``anyOf`` list. A
claim name is a dotted path into the token's claims (``x-ms-isolation-tee.x-ms-attestation-type``);
a key that itself holds dots is found too. ``equals`` compares JSON values exactly (strings case
sensitive, ``true`` is not ``"true"``). The policy is satisfied when some block's authority is the
issuer of a verified token and its conditions hold over that token's claims. Anything else is
refused: unknown keys or operators are a malformed policy, never ignored. Written here because no
maintained Python library evaluates this grammar.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from veil.errors import ParseError

VERSIONS = frozenset({"1.0.0", "0.2"})
MAX_DEPTH = 8
MAX_CONDITIONS = 256
_MISSING = object()

__all__ = ["authority_key", "evaluate", "parse_policy"]


def _fail(message: str) -> ParseError:
    return ParseError("release.skr_malformed", message)


def authority_key(url: str) -> str:
    """Authorities compare by scheme and host, case-insensitively, without a trailing slash."""
    return url.strip().rstrip("/").lower()


def _check_condition(node: Any, depth: int, count: list[int]) -> None:
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_CONDITIONS:
        raise _fail("the policy nests too deeply or holds too many conditions")
    if not isinstance(node, dict):
        raise _fail("a condition must be an object")
    keys = set(node)
    if keys in ({"allOf"}, {"anyOf"}):
        items = node[next(iter(keys))]
        if not isinstance(items, list) or not items:
            raise _fail("allOf/anyOf must be a non-empty list")
        for item in items:
            _check_condition(item, depth + 1, count)
        return
    if not isinstance(node.get("claim"), str) or not node["claim"]:
        raise _fail("a condition names a claim")
    if keys == {"claim", "equals"}:
        return
    if keys == {"claim", "condition", "value"}:
        if node["condition"] != "equals":
            raise _fail(f"condition {node['condition']!r} is not supported (only equals)")
        return
    raise _fail(f"a condition has the fields {sorted(keys)}")


def parse_policy(policy: Any) -> list[tuple[str, dict[str, Any]]]:
    """The policy's (authority, conditions) blocks; ``release.skr_malformed`` for anything else."""
    if not isinstance(policy, dict) or set(policy) != {"version", "anyOf"}:
        raise _fail('an SKR policy is {"version", "anyOf"}')
    if policy["version"] not in VERSIONS:
        raise _fail(f"SKR policy version {policy['version']!r} (known: {sorted(VERSIONS)})")
    blocks = policy["anyOf"]
    if not isinstance(blocks, list) or not blocks:
        raise _fail("anyOf must be a non-empty list of authority blocks")
    out = []
    count = [0]
    for block in blocks:
        if not isinstance(block, dict) or not isinstance(block.get("authority"), str):
            raise _fail("each anyOf entry names an authority")
        rest = {k: v for k, v in block.items() if k != "authority"}
        if set(rest) not in ({"allOf"}, {"anyOf"}):
            raise _fail("an authority block holds allOf or anyOf")
        _check_condition(rest, 1, count)
        out.append((block["authority"], rest))
    return out


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path; a key containing dots is matched whole first."""
    if path in claims:
        return claims[path]
    head, dot, tail = path.partition(".")
    while dot:
        value = claims.get(head, _MISSING)
        if isinstance(value, Mapping):
            found = _claim(value, tail)
            if found is not _MISSING:
                return found
        more, dot, tail = tail.partition(".")
        head = f"{head}.{more}"
    return _MISSING


def _holds(node: Mapping[str, Any], claims: Mapping[str, Any]) -> bool:
    if "allOf" in node:
        return all(_holds(n, claims) for n in node["allOf"])
    if "anyOf" in node:
        return any(_holds(n, claims) for n in node["anyOf"])
    expected = node["equals"] if "equals" in node else node["value"]
    value = _claim(claims, node["claim"])
    return value is not _MISSING and type(value) is type(expected) and value == expected


def evaluate(policy: Any, tokens: Mapping[str, Mapping[str, Any]]) -> bool:
    """True when some block of ``policy`` holds over the claims of the verified token its
    authority issued. ``tokens`` maps an issuer (any spelling ``authority_key`` normalises) to
    that token's verified claims."""
    by_authority = {authority_key(k): v for k, v in tokens.items()}
    for authority, conditions in parse_policy(policy):
        claims = by_authority.get(authority_key(authority))
        if claims is not None and _holds(conditions, claims):
            return True
    return False
