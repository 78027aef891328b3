"""The OpenAPI 3.1 document of the HTTP server, served at ``/openapi.json``.

Written here as data, beside the routes it describes, and checked against the running server by
schemathesis (``tests/api/test_openapi.py``): every answer's status and body must match it.
"""

from __future__ import annotations

from typing import Any

from engine.api.admin import spec as admin_spec
from engine.api.problems import MEDIA_TYPE as PROBLEM
from engine.api.webhooks import INTAKE_PATH, STATUS_PATH

__all__ = ["document"]

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _problems(*statuses: int) -> dict[str, Any]:
    why = {
        400: "The body cannot be read as its content type says (the place is in `detail`).",
        401: "No valid credentials: missing, wrong or stale signature, unknown bearer token, no client certificate.",
        403: "Credentials valid but not allowed on this channel (a client certificate not on its list).",
        404: "No running webhook channel of this name, or no message of this id in it.",
        405: "Method not allowed on this path.",
        408: "The body did not arrive within the channel's read timeout.",
        411: "A body is required.",
        413: "The body is larger than the channel's `max_bytes` (checked while it is read).",
        415: "A content type this channel does not take.",
        422: "Readable but refused: fails the channel's schema, a FHIR structure error, an HL7 message the channel "
        "does not take, or an Idempotency-Key reused with another body.",
        503: "The message store cannot commit: nothing was accepted; send again later.",
    }
    return {str(s): {"description": why[s], "content": {PROBLEM: {"schema": _PROBLEM_REF}}} for s in statuses}


_CHANNEL = {
    "name": "channel",
    "in": "path",
    "required": True,
    "description": "Channel name.",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 100},
}

_SIGNATURE_HEADERS = [
    {"name": "webhook-id", "in": "header", "required": False, "description": "Standard Webhooks message id "
     "(also the idempotency key when no Idempotency-Key is sent).", "schema": {"type": "string", "maxLength": 256}},
    {"name": "webhook-timestamp", "in": "header", "required": False,
     "description": "Standard Webhooks signing time (integer seconds).", "schema": {"type": "string"}},
    {"name": "webhook-signature", "in": "header", "required": False,
     "description": "Standard Webhooks signatures: space-separated `v1,<base64>`.", "schema": {"type": "string"}},
    {"name": "Idempotency-Key", "in": "header", "required": False,
     "description": "A repeat with the same key returns the first answer and creates nothing.",
     "schema": {"type": "string", "maxLength": 255}},
]  # fmt: skip


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Interlink",
            "version": "1",
            "description": "The engine's HTTP server: webhook intake (FHIR, JSON events, HL7 v2) and probes. "
            "Errors are RFC 9457 problem details.",
        },
        "paths": {
            "/healthz": {"get": {"summary": "The process answers.", "operationId": "healthz", "responses": {
                "200": {"description": "Alive.", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}}}}}}},
            "/readyz": {"get": {"summary": "Store, queue and listeners can take messages.", "operationId": "readyz",
                                "responses": {
                "200": {"description": "Ready.", "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Readiness"}}}},
                "503": {"description": "Not ready (a required check failed).", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Readiness"}}}}}}},
            INTAKE_PATH: {"post": {
                "summary": "Take one message (committed before the answer).",
                "operationId": "receiveWebhook",
                "parameters": [_CHANNEL, *_SIGNATURE_HEADERS],
                "security": [{"standardWebhooks": []}, {"bearer": []}, {"mutualTLS": []}, {}],
                "requestBody": {"required": True, "content": {
                    "application/fhir+json": {"schema": {"type": "object", "description": "A FHIR R4 resource "
                                                         "or Bundle."}},
                    "application/json": {"schema": {"description": "Any JSON event."}},
                    "application/hl7-v2": {"schema": {"type": "string", "description": "One HL7 v2 message (ER7)."}},
                    "x-application/hl7-v2+er7": {"schema": {"type": "string"}},
                }},
                "responses": {
                    "202": {"description": "Committed; processing and delivery follow. A repeat (same "
                            "Idempotency-Key or webhook-id) gets this same answer.",
                            "headers": {"Location": {"description": "The message's status.",
                                                     "schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Receipt"}}}},
                    **_problems(400, 401, 403, 404, 408, 411, 413, 415, 422, 503),
                },
            }},
            STATUS_PATH: {"get": {
                "summary": "A message's status and its deliveries' (ids and statuses only, never content).",
                "operationId": "webhookMessageStatus",
                "parameters": [_CHANNEL, {"name": "message_id", "in": "path", "required": True,
                                          "schema": {"type": "string", "maxLength": 64}},
                               *_SIGNATURE_HEADERS[:3]],
                "security": [{"standardWebhooks": []}, {"bearer": []}, {"mutualTLS": []}, {}],
                "responses": {
                    "200": {"description": "Found.", "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/MessageStatus"}}}},
                    **_problems(401, 403, 404),
                },
            }},
            "/openapi.json": {"get": {"summary": "This document.", "operationId": "openapi", "responses": {
                "200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {
                    "type": "object"}}}}}}},
            **admin_spec.paths(),  # the admin API (engine/api/admin/: each module's OPENAPI)
        },
        "components": {
            "securitySchemes": {
                "standardWebhooks": {"type": "apiKey", "in": "header", "name": "webhook-signature",
                                     "description": "HMAC-SHA256 over `webhook-id.webhook-timestamp.body` "
                                     "(standardwebhooks.com), with webhook-id and webhook-timestamp headers."},
                "bearer": {"type": "http", "scheme": "bearer"},
                "mutualTLS": {"type": "mutualTLS"},
            },
            "schemas": {
                **admin_spec.SCHEMAS,
                "Problem": {"type": "object", "required": ["type", "title", "status"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"},
                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "detail": {"type": "string"}, "message_id": {"type": "string"}}},
                "Receipt": {"type": "object", "required": ["message_id", "status_url"], "properties": {
                    "message_id": {"type": "string"}, "status_url": {"type": "string"}},
                    "additionalProperties": False},
                "MessageStatus": {"type": "object", "required": ["message_id", "channel", "status", "deliveries"],
                                  "properties": {
                    "message_id": {"type": "string"}, "channel": {"type": "string"},
                    "status": {"type": "string", "enum": ["received", "duplicate", "error", "filtered",
                                                          "transformed", "sent", "dead", "held", "grouped"]},
                    "duplicate_of": {"type": ["string", "null"]},
                    "error": {"type": ["string", "null"], "description": "Where and what (never a value)."},
                    "deliveries": {"type": "array", "items": {"type": "object",
                                                              "required": ["destination", "status", "attempts"],
                                                              "properties": {
                        "destination": {"type": "string"}, "status": {"type": "string"},
                        "attempts": {"type": "integer"}}}}}},
                "Readiness": {"type": "object", "required": ["status", "checks"], "properties": {
                    "status": {"enum": ["ready", "not ready"]},
                    "checks": {"type": "object", "additionalProperties": {"type": "object",
                                                                           "required": ["ok", "required"],
                                                                           "properties": {
                        "ok": {"type": "boolean"}, "required": {"type": "boolean"},
                        "detail": {"type": "string"}}}}}},
            },
        },
    }  # fmt: skip
