"""The Swagger 2.0 document of one service (``GET /api/{name}/{version}/swagger.json``): how to consume it.

Its paths are the consume routes of the service (request-response and batch) and ``/login``; its definitions
are the contract's objects, with the service's own inputs and outputs as ``InputParameters`` and
``OutputParameters`` (each parameter's JSON schema from the table of parameter types).
"""

from __future__ import annotations

from typing import Any

from airflow_mlserver.client.parameters import PARAMETER_TYPES


def swagger_document(service: dict[str, Any], host: str) -> dict[str, Any]:
    """A Swagger 2.0 document for consuming one service (request-response and batch)."""
    name, version = service["name"], service["version"]
    base = f"/api/{name}/{version}"
    inputs = _schema(service.get("inputParameterDefinitions", []))
    inputs["required"] = [p["name"] for p in service.get("inputParameterDefinitions", [])]
    return {
        "swagger": "2.0",
        "info": {"title": name, "description": service.get("description") or "", "version": version},
        "host": host,
        "schemes": ["http"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {"Bearer": {"type": "apiKey", "name": "Authorization", "in": "header"}},
        "security": [{"Bearer": []}],
        "paths": {
            **_consume_paths(base, service.get("operationId") or "consume"),
            **_batch_paths(base),
            **_file_paths(base),
        },
        "definitions": {
            "InputParameters": inputs,
            "OutputParameters": _schema(service.get("outputParameterDefinitions", [])),
            **_DEFINITIONS,
        },
    }


def _schema(params: list[dict[str, str]]) -> dict[str, Any]:
    properties = {p["name"]: PARAMETER_TYPES[p["type"]].json_schema for p in params}
    return {"type": "object", "properties": properties}


# The parts every service's document shares (read only: a document refers to them, never copies them).
_ERROR = {"description": "Error", "schema": {"$ref": "#/definitions/Error"}}
_EXECUTION_ID = {"name": "executionId", "in": "path", "required": True, "type": "string"}
_INDEX = {"name": "index", "in": "path", "required": True, "type": "integer", "description": "0-based"}


def _consume_paths(base: str, op: str) -> dict[str, Any]:
    """``/login`` and the request-response route (``op`` is its operation id)."""
    return {
        "/login": {
            "post": {
                "operationId": "login",
                "parameters": [
                    {
                        "name": "loginRequest",
                        "in": "body",
                        "required": True,
                        "schema": {"$ref": "#/definitions/LoginRequest"},
                    }
                ],
                "responses": {
                    "200": {"description": "OK", "schema": {"$ref": "#/definitions/AccessTokenResponse"}},
                    "default": _ERROR,
                },
            }
        },
        base: {
            "post": {
                "operationId": op,
                "parameters": [
                    {
                        "name": "WebServiceParameters",
                        "in": "body",
                        "required": True,
                        "schema": {"$ref": "#/definitions/InputParameters"},
                    }
                ],
                "responses": {
                    "200": {"description": "OK", "schema": {"$ref": "#/definitions/WebServiceResult"}},
                    "default": _ERROR,
                },
            }
        },
    }


def _batch_paths(base: str) -> dict[str, Any]:
    """Starting, listing, polling and cancelling batch executions."""
    return {
        f"{base}/batch": {
            "post": {
                "operationId": "StartBatchExecution",
                "parameters": [
                    {
                        "name": "BatchWebServiceParameters",
                        "in": "body",
                        "required": True,
                        "schema": {"type": "array", "items": {"$ref": "#/definitions/InputParameters"}},
                    },
                    {"name": "parallelCount", "in": "query", "type": "integer", "default": 10},
                ],
                "responses": {
                    "200": {
                        "description": "OK",
                        "schema": {"$ref": "#/definitions/StartBatchExecutionResponse"},
                    },
                    "default": _ERROR,
                },
            },
            "get": {
                "operationId": "GetBatchExecutions",
                "responses": {
                    "200": {
                        "description": "OK",
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    "default": _ERROR,
                },
            },
        },
        f"{base}/batch/{{executionId}}": {
            "get": {
                "operationId": "GetBatchExecutionStatus",
                "parameters": [
                    _EXECUTION_ID,
                    {"name": "showPartialResults", "in": "query", "type": "boolean", "default": True},
                ],
                "responses": {
                    "200": {
                        "description": "OK",
                        "schema": {"$ref": "#/definitions/BatchWebServiceResult"},
                    },
                    "default": _ERROR,
                },
            },
            "delete": {
                "operationId": "CancelAndDeleteBatchExecution",
                "parameters": [_EXECUTION_ID],
                "responses": {"200": {"description": "OK"}, "default": _ERROR},
            },
        },
    }


def _file_paths(base: str) -> dict[str, Any]:
    """A batch record's artifacts: their list, and each one."""
    return {
        f"{base}/batch/{{executionId}}/{{index}}/files": {
            "get": {
                "operationId": "GetBatchExecutionFiles",
                "parameters": [_EXECUTION_ID, _INDEX],
                "responses": {
                    "200": {
                        "description": "OK",
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    "default": _ERROR,
                },
            }
        },
        f"{base}/batch/{{executionId}}/{{index}}/files/{{fileName}}": {
            "get": {
                "operationId": "GetBatchExecutionFile",
                "produces": ["application/octet-stream"],
                "parameters": [
                    _EXECUTION_ID,
                    _INDEX,
                    {"name": "fileName", "in": "path", "required": True, "type": "string"},
                ],
                "responses": {"200": {"description": "OK", "schema": {"type": "file"}}, "default": _ERROR},
            }
        },
    }


#: The contract's objects, the same in every service's document.
_DEFINITIONS: dict[str, Any] = {
    "LoginRequest": {
        "type": "object",
        "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
    },
    "AccessTokenResponse": {
        "type": "object",
        "properties": {
            "token_type": {"type": "string"},
            "access_token": {"type": "string"},
            "expires_on": {"type": "string"},
            "refresh_token": {"type": "string"},
        },
    },
    "WebServiceResult": {
        "type": "object",
        "properties": {
            "success": {"type": "boolean"},
            "errorMessage": {"type": "string"},
            "consoleOutput": {"type": "string"},
            "changedFiles": {"type": "array", "items": {"type": "string"}},
            "outputParameters": {"$ref": "#/definitions/OutputParameters"},
            "outputFiles": {
                "type": "object",
                "additionalProperties": {"type": "string", "format": "byte"},
            },
        },
    },
    "StartBatchExecutionResponse": {
        "type": "object",
        "properties": {"batchExecutionId": {"type": "string"}},
    },
    "BatchWebServiceResult": {
        "type": "object",
        "properties": {
            "state": {"type": "string"},
            "totalItemCount": {"type": "integer"},
            "completedItemCount": {"type": "integer"},
            "batchExecutionResults": {
                "type": "array",
                "items": {"$ref": "#/definitions/WebServiceResult"},
            },
        },
    },
    "Error": {
        "type": "object",
        "properties": {
            "message": {"type": "string"},
            "link": {"type": "string"},
            "exceptionType": {"type": "string"},
        },
    },
}
