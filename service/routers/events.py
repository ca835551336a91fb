"""POST /events: record a user's interaction, acknowledged only once it is durable (see service/events.py)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse

from service.deps import CatalogDep, EventsDep
from service.schemas import EventAck, EventBody

router = APIRouter(tags=["events"])


@router.post("/events", status_code=201, response_model=EventAck,
             responses={200: {"model": EventAck, "description": "a repeat of an idempotency key: not stored again"}})
async def post_event(body: EventBody, catalog: CatalogDep, events: EventsDep):
    if body.item_id not in catalog.items:
        raise HTTPException(422, f"item_id {body.item_id!r} is not in the catalogue")
    event = {"key": body.idempotency_key, "user_id": body.user_id, "item_id": body.item_id,
             "event_type": body.event_type, "timestamp": body.timestamp, "rating": body.rating}
    new, store, event_id = await events.record(event)
    ack = EventAck(duplicate=not new, store=store, event_id=event_id)
    return JSONResponse(status_code=201 if new else 200, content=ack.model_dump())
