"""Unblu-style errors: an exception the handlers raise and the ``Error`` body it becomes.

Unblu answers every failed web API call with ``{"$_type": "Error", "statusCode",
"statusDescription", "errorMessage"}`` and the same status on the HTTP response; the sandbox
does the same so that clients can be tested against realistic failures.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web

__all__ = ["ApiError", "error_body", "error_response"]


class ApiError(Exception):
    """A web API failure with its HTTP status and a message that names what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, message)

    @classmethod
    def not_found(cls, message: str) -> ApiError:
        return cls(404, message)

    @classmethod
    def conflict(cls, message: str) -> ApiError:
        return cls(409, message)


def error_body(status: int, message: str) -> dict[str, Any]:
    try:
        description = HTTPStatus(status).phrase
    except ValueError:
        description = "Error"
    return {
        "$_type": "Error",
        "statusCode": status,
        "statusDescription": description,
        "errorMessage": message,
    }


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(status, message), status=status, headers=headers)
