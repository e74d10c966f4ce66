"""Feedback on a text generation model's answers: a vote and/or a better answer per choice, stored as feedback
rows of kind "generation" (store/feedback.py says what they hold) for retraining to read.

`POST /v1/feedback` (routes.py) hands a generation model's feedback here: by the answer's id (the server
remembers recent answers, as it does predictions) and choice index, or with the prompt sent whole.
"""

from __future__ import annotations

import asyncio

from fastapi.concurrency import run_in_threadpool

from modelfoundry.serve.errors import ApiError

GENERATION_KIND = "generation"  # the feedback rows' kind (store/feedback.py says what they hold)


async def generation_feedback(service, body) -> tuple[dict, int]:
    """Store a vote and/or a better answer for one choice of a recent answer (by its id and `index`), or
    for a prompt and answer sent whole (`input`: {"prompt"} or {"messages"}, `predicted`: the answer).
    Feedback on the same choice again replaces the earlier row. Returns (answer, status)."""
    vote = body.vote or ("down" if body.better_answer else None)
    if vote is None:
        raise ApiError(422, "vote", 'send a vote ("up" or "down"), a better_answer, or both.')
    if body.request_id is not None:
        remembered = service.recalled(
            body.request_id,
            body.index,
            "answer",
            "); send the prompt itself in `input` and the answer in `predicted` instead.",
            "choice(s)",
        )
        item, answer, served = (
            remembered.stored[body.index],
            remembered.predicted[body.index],
            remembered.served,
        )
    elif body.input is not None:
        item, served = feedback_input(body.input), service.served
        answer = body.predicted if isinstance(body.predicted, str) else None
    else:
        raise ApiError(
            422, "request_id", "give the id of an answer (`request_id`), or the prompt itself in `input`."
        )
    record = {**item, "answer": answer, "vote": vote, "better_answer": body.better_answer}
    label = "better" if body.better_answer else vote
    predicted = None if answer is None else answer[:200]
    replaced, feedback_id = False, None
    if body.request_id is not None:
        if remembered.lock is None:
            remembered.lock = asyncio.Lock()
        async with remembered.lock:
            earlier = remembered.corrections.get(body.index)
            if earlier is not None and await run_in_threadpool(
                replace_feedback, earlier, record, label, predicted
            ):
                replaced, feedback_id = True, earlier
            else:
                feedback_id = await run_in_threadpool(
                    store, served, record, label, predicted, body.request_id
                )
                remembered.corrections[body.index] = feedback_id
    else:
        feedback_id = await run_in_threadpool(store, served, record, label, predicted, None)
    answer_body = {
        "feedback_id": feedback_id,
        "label": label,
        "predicted": predicted,
        "model_version": served.version_name,
        "replaced": replaced,
    }
    return answer_body, 200 if replaced else 201


def feedback_input(value) -> dict:
    """A prompt sent with feedback: a text, {"prompt": text} or {"messages": [{"role", "content"}]}."""
    if isinstance(value, str):
        return {"prompt": value}
    if isinstance(value, dict) and isinstance(value.get("prompt"), str):
        return {"prompt": value["prompt"]}
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        messages = value["messages"]
        if all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    raise ApiError(
        422,
        "input",
        'send the prompt as a text, {"prompt": text}, or {"messages": [{"role", "content"}, ...]}.',
    )


def store(served, record: dict, label: str, predicted: str | None, request_id: str | None) -> int:
    """Runs in a thread: one feedback row, committed before the answer."""
    from modelfoundry.store.feedback import FeedbackStore

    return FeedbackStore().add(
        run_id=served.predictor.spec.get("run_id", ""),
        kind=GENERATION_KIND,
        input=record,
        label=label,
        predicted=predicted,
        request_id=request_id,
        model_version=served.version.id if served.version is not None else None,
    )


def replace_feedback(feedback_id: int, record: dict, label: str, predicted: str | None) -> bool:
    from modelfoundry.store.feedback import FeedbackStore

    return FeedbackStore().replace(feedback_id, record, label, predicted)
