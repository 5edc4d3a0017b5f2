"""What both ends of Veil's protocols agree on: paths, media types, HPKE labels, padding, error bodies.

One module, imported by the client, the admin library, the worker and the coordinator alike, so a
path or a label can never drift between the side that sends and the side that checks. It imports
nothing of Veil's: every other layer may depend on it. Changing any value here is a wire-format change
(old clients and workers stop understanding each other); the ``v1`` suffixes exist for that.
"""

from __future__ import annotations

from typing import Any

# -- worker: the OHTTP gateway ---------------------------------------------------------------------

GATEWAY_PATH = "/.well-known/ohttp-gateway"  # RFC 9540: GET -> key configurations, POST -> requests
COMPAT_PATH = "/score"  # where ohttpy / Azure's attested OHTTP clients POST
COMPAT_KEYS_PATH = "/discover"  # ... and where they fetch the key configurations

# -- coordinator: attestation, manifests, key release ------------------------------------------------

HEALTH_PATH = "/health"
ATTESTATION_PATH = "/v1/attestation"  # GET ?nonce=hex: evidence binding nonce, key, manifest, keys
MANIFEST_PATH = "/v1/manifest"  # GET the current signed manifest, POST a newer one
MANIFEST_HISTORY_PATH = "/v1/manifest/history"  # the append-only hash chain
WORKERS_PATH = "/v1/workers"  # admin read: registered workers
WORKERS_CHALLENGE_PATH = "/v1/workers/challenge"  # a nonce for the next registration
WORKERS_REGISTER_PATH = "/v1/workers/register"  # evidence in, secrets sealed to the worker out
SECRETS_PATH = "/v1/secrets"  # admin upload of a data key sealed to the attested coordinator
AUDIT_PATH = "/v1/audit"  # admin read: the sealed, hash-chained audit log
ADMIN_CHALLENGE_PATH = "/v1/admin/challenge"  # a nonce for the next signed admin read
RECOVERY_PATH = "/v1/recovery"  # the state key, sealed to each recovery key
RECOVER_PATH = "/v1/recover"  # restore a locked coordinator

# -- media types -------------------------------------------------------------------------------------

MEDIA_TYPE_KEYS = "application/ohttp-keys"  # RFC 9458 §3.2
MEDIA_TYPE_REQUEST = "message/ohttp-req"  # RFC 9458 §4
MEDIA_TYPE_RESPONSE = "message/ohttp-res"
MEDIA_TYPE_CHUNKED_REQUEST = "message/ohttp-chunked-req"  # draft-ietf-ohai-chunked-ohttp
MEDIA_TYPE_CHUNKED_RESPONSE = "message/ohttp-chunked-res"

# -- HPKE labels and info strings (domain separation: a blob made for one use never opens as another)

LABEL_REQUEST = b"message/bhttp request"  # RFC 9458 §4.3 HPKE info prefix
LABEL_RESPONSE = b"message/bhttp response"  # RFC 9458 §4.4 response key label
LABEL_CHUNKED_REQUEST = b"message/bhttp chunked request"
LABEL_CHUNKED_RESPONSE = b"message/bhttp chunked response"
FINAL_AAD = b"final"  # AAD of the last chunk of a chunked message: truncation is detected

WORKER_SECRETS_INFO = b"veil/worker-secrets/v1"  # coordinator -> worker: OHTTP keys, data keys
ADMIN_SECRET_INFO = b"veil/admin-secret-upload/v1"  # admin -> coordinator: a data key
SECRET_UPLOAD_CONTEXT = b"veil/secret-upload/v1"  # what an admin signs for such an upload
RECOVERY_INFO = b"veil/state-key-recovery/v1"  # coordinator -> recovery key holder: the state key
RECOVERY_UPLOAD_INFO = b"veil/state-key-restore/v1"  # recovery key holder -> a new coordinator

# -- padding buckets (docs/tenants-and-padding.md) -----------------------------------------------------

WHOLE_CEILING = 1 << 20  # whole messages: powers of two up to 1 MiB, then multiples of 1 MiB
CHUNK_CEILING = 1 << 16  # streamed chunks: at most 64 KiB of plaintext each
DEFAULT_REQUEST_PADDING = 256  # inner requests padded to the next power of two >= 256 bytes

# -- error bodies (outside the encryption, and the coordinator's answers) ------------------------------


def error_body(reason: str, message: str) -> dict[str, Any]:
    """Veil's error answer: ``{"error": {"reason": <dotted code>, "message": <text>}}``."""
    return {"error": {"reason": reason, "message": message}}


def error_of(resp: Any) -> tuple[str, str]:
    """(reason, message) of an HTTP answer in that shape (an httpx response); a fallback when not."""
    try:
        err = resp.json().get("error", {})
    except (ValueError, AttributeError):
        err = {}
    if not isinstance(err, dict):
        err = {}
    return str(err.get("reason", f"http.{resp.status_code}")), str(err.get("message", resp.text[:200]))
