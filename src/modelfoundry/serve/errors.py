"""Error answers of the service: one JSON shape, `{"error": {"field", "message"}}`, with a 4xx status
(or 500 for a bug, answered by the middleware in app.py).

Routes and input checks raise `ApiError` naming the request field at fault; the handlers here turn
it, FastAPI's own validation and body errors and a `UserError` from the predictor into that shape,
so a client reads every mistake the same way.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modelfoundry.errors import InputError, UserError

ApiError = InputError  # the tasks raise it for bad inputs; routes raise it for everything else


OPENAI_PATHS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions"})  # serve/openai.py


def error_json(field: str, message: str, status: int | None = None, path: str = "") -> dict:
    """The body of every error answer. On the OpenAI-compatible routes it also carries OpenAI's `type`,
    `param` and `code`, so OpenAI's clients read it as theirs."""
    if path in OPENAI_PATHS:
        kind = "invalid_request_error" if status is None or status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": field, "code": None, "field": field}}
    return {"error": {"field": field, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_json(exc.field, exc.message, exc.status, request.url.path), status_code=exc.status
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            position = (first.get("ctx") or {}).get("error", "")
            return JSONResponse(
                error_json("body", f"the body is not valid JSON ({position}).", 400, request.url.path),
                status_code=400,
            )
        fields = [".".join(str(p) for p in e["loc"] if p != "body") or "body" for e in errors]
        message = "; ".join(f"{f}: {e['msg']}" for f, e in zip(fields, errors))
        return JSONResponse(error_json(fields[0], message, 422, request.url.path), status_code=422)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(error_json("inputs", str(exc), 422, request.url.path), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """FastAPI's own answers (404, 405, a body it could not read) in our shape."""
        status, field, message = http_answer(exc)
        return JSONResponse(
            error_json(field, message, status, request.url.path), status_code=status, headers=exc.headers
        )


def http_answer(exc: HTTPException) -> tuple[int, str, str]:
    """(status, field, message) of an HTTPException. FastAPI turns every failure to read the body that
    is not a JSON syntax error into 400 "There was an error parsing the body"; the cause says which."""
    cause = exc.__cause__
    if isinstance(cause, RecursionError):
        return (
            422,
            "body",
            "the JSON is nested too deeply to read; inputs are flat lists of texts, images or rows.",
        )
    if isinstance(cause, UnicodeDecodeError):
        return (
            400,
            "body",
            f"the body is not UTF-8 text ({cause.reason} at byte {cause.start}); send UTF-8 JSON.",
        )
    if isinstance(cause, ValueError) and "digits" in str(cause):  # int() refuses numbers of 4,300+ digits
        return 422, "body", "a number in the body has thousands of digits; send numbers within float32."
    field = {404: "path", 405: "method"}.get(exc.status_code, "body")
    return exc.status_code, field, str(exc.detail)


class BodyTooLarge(HTTPException):
    """Raised while a body is read, when it grows past the limit (a chunked body declares no length).
    An HTTPException, so FastAPI's body reading lets it through to the handler above."""

    def __init__(self, max_body_bytes: int):
        super().__init__(413, f"the request body is larger than the limit of {max_body_bytes:,} bytes.")


def check_count(count: int, limit: int, field: str = "inputs") -> None:
    """At least one input, and no more than `limit` (Settings.max_inputs) in one request."""
    if count == 0 and field == "file":
        raise ApiError(422, field, "the upload holds no inputs (a header without rows?); send at least one.")
    if count == 0:
        raise ApiError(422, field, "the list is empty; send at least one input.")
    if count > limit:
        if field == "file":  # POST /v1/predict/batch
            raise ApiError(
                413, field, f"the upload holds {count:,} inputs; the limit is {limit:,}. Split it."
            )
        raise ApiError(413, field, f"{count} inputs in one request; the limit is {limit}. Split the request.")


def error_body(field: str, message: str) -> bytes:
    """An error answer's body, for the middleware that answers before FastAPI (or instead of it)."""
    return json.dumps(error_json(field, message)).encode()
