"""Example bodies of the messages producers meet, as they travel (the envelope).

They go into the AsyncAPI document and are checked against the published schemas and
the models (tests/unit/test_contract.py), so they cannot drift from the contract.
"""

from __future__ import annotations

from typing import Any


def _env(n: int, type_name: str, version: int, payload: dict[str, Any],
         apartment_id: str | None = "apt-42", causation_id: str | None = None,
         correlation: int | None = None) -> dict[str, Any]:
    mid = f"7f3c0d9e2b1a{n:04d}"
    return {"message_id": mid, "correlation_id": f"7f3c0d9e2b1a{correlation or n:04d}",
            "causation_id": causation_id, "type": type_name, "version": version,
            "occurred_at": "2030-01-07T10:00:00Z", "apartment_id": apartment_id,
            "payload": payload}


EXAMPLES: list[dict[str, Any]] = [
    _env(1, "AddApartment", 2, {"owner_id": "olga", "city": "Lisbon", "title": "Alfama loft",
                                "description": "Two rooms, a view of the river.",
                                "price_per_night": 9500, "currency": "EUR", "capacity": 4}),
    _env(2, "AddApartment", 1, {"owner_id": "olga", "city": "Lisbon", "title": "Alfama loft",
                                "price_per_night": 9500, "capacity": 4}),
    _env(3, "RequestReservation", 1, {"reservation_id": "res-9", "guest_id": "ana",
                                      "start": "2030-01-14", "end": "2030-01-21", "guests": 2,
                                      "card_token": "tok_visa", "card_last4": "4242"}),
    _env(4, "AcceptReservation", 1, {"reservation_id": "res-9", "owner_id": "olga"}),
    _env(5, "RejectReservation", 1, {"reservation_id": "res-9", "owner_id": "olga"}),
    _env(6, "UpdateApartment", 1, {"owner_id": "olga", "price_per_night": 9900}),
    _env(7, "DelistApartment", 1, {"owner_id": "olga"}),
    _env(8, "RelistApartment", 1, {"owner_id": "olga"}),
    _env(9, "BlockDates", 1, {"owner_id": "olga", "block_id": "repairs-1",
                              "start": "2030-02-01", "end": "2030-02-08"}),
    _env(10, "UnblockDates", 1, {"owner_id": "olga", "block_id": "repairs-1"}),
    _env(11, "WithdrawRequest", 1, {"reservation_id": "res-9", "guest_id": "ana"}),
    _env(12, "CancelReservation", 1, {"reservation_id": "res-9", "by": "ana"}),
    _env(13, "SearchApartments", 1, {"city": "Lisbon", "guests": 2, "start": "2030-01-14",
                                     "end": "2030-01-21", "max_price": 12000, "after": 1207,
                                     "wait_ms": 5000}, apartment_id=None),
    _env(14, "CommandResult", 1, {
        "status": "ok", "reason": None, "detail": None,
        "events": [{"type": "ReservationAccepted", "version": 1,
                    "message_id": "ea0ced20c0cd41e48e40001", "reservation_id": "res-9"}],
        "position": 1207}, causation_id="7f3c0d9e2b1a0004", correlation=4),
    _env(15, "CommandResult", 1, {
        "status": "rejected", "reason": "already_taken",
        "detail": "the nights overlap an accepted stay", "events": [], "position": 1208},
        causation_id="7f3c0d9e2b1a0003", correlation=3),
    _env(16, "CommandResult", 1, {
        "status": "error", "reason": "unsupported_version",
        "detail": "AddApartment version 3 is not supported: this node reads versions 1, 2 "
                  "(send version 2)", "events": [], "position": None},
        causation_id="7f3c0d9e2b1a0001", correlation=1),
    _env(17, "SearchResults", 1, {
        "apartments": [{"apartment_id": "apt-42", "city": "Lisbon", "title": "Alfama loft",
                        "price_per_night": 9500, "currency": "EUR", "capacity": 4}],
        "total": 1, "total_exact": True, "start": "2030-01-14", "end": "2030-01-21",
        "caught_up": True}, apartment_id=None, causation_id="7f3c0d9e2b1a0013",
        correlation=13),
    _env(18, "ApartmentAdded", 2, {"owner_id": "olga", "city": "Lisbon",
                                   "title": "Alfama loft", "description": "",
                                   "price_per_night": 9500, "currency": "EUR", "capacity": 4},
         causation_id="7f3c0d9e2b1a0001", correlation=1),
    _env(19, "ReservationAccepted", 1, {"reservation_id": "res-9", "guest_id": "ana",
                                        "owner_id": "olga", "start": "2030-01-14",
                                        "end": "2030-01-21", "total_price": 66500,
                                        "card_token": "tok_visa", "card_last4": "4242"},
         causation_id="7f3c0d9e2b1a0004", correlation=4),
]
