"""Error answers of the service: one JSON shape, `{"error": {"field", "message"}}`, with a 4xx status.

Routes and input checks raise `ApiError` naming the request field at fault; the handlers here turn
it, FastAPI's own validation errors and a `UserError` from the predictor into that shape, so a
client reads every mistake the same way.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from modelfoundry.errors import InputError, UserError

ApiError = InputError  # the tasks raise it for bad inputs; routes raise it for everything else


def error_json(field: str, message: str) -> dict:
    """The body of every error answer."""
    return {"error": {"field": field, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_json(exc.field, exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            position = (first.get("ctx") or {}).get("error", "")
            return JSONResponse(
                error_json("body", f"the body is not valid JSON ({position})."), status_code=400
            )
        fields = [".".join(str(p) for p in e["loc"] if p != "body") or "body" for e in errors]
        message = "; ".join(f"{f}: {e['msg']}" for f, e in zip(fields, errors))
        return JSONResponse(error_json(fields[0], message), status_code=422)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(error_json("inputs", str(exc)), status_code=422)


def check_count(count: int, limit: int, field: str = "inputs") -> None:
    """At least one input, and no more than `limit` (Settings.max_inputs) in one request."""
    if count == 0:
        raise ApiError(422, field, "the list is empty; send at least one input.")
    if count > limit:
        raise ApiError(413, field, f"{count} inputs in one request; the limit is {limit}. Split the request.")


def body_too_large(max_body_bytes: int) -> bytes:
    """The 413 answer's body, for the middleware that refuses large bodies before FastAPI reads them."""
    message = f"the request body is larger than the limit of {max_body_bytes:,} bytes."
    return json.dumps(error_json("body", message)).encode()
