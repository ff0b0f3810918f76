"""The websocket's encodings of stored events, in one place (specified in docs/protocol.md).

Three encodings of the same stored row:
- `json`: every event as one JSON text message; a topology frame carries its mask data as
  base64 (`bits` for a keyframe, `added`/`removed` for a delta);
- `binary`: the same, except a topology frame is one binary message, a 4-byte little-endian
  header length, the JSON header padded with spaces to a multiple of 4, then the raw payload
  (codec.binary_message);
- `announce`: the same as json, except a topology frame is its header only, marked
  `"announce": true` (the page fetches `/view` at panel resolution instead).

Whatever is stored, what goes out is valid JSON: non-finite numbers (an imported payload may
hold literal NaN or Infinity) become null, and a row that cannot be encoded (unreadable
payload, a topology header without `index`/`layer`, a blob that does not match its shape)
raises WireError naming its seq, which the stream turns into an `error` message and `end`.
"""

from __future__ import annotations

import json
from typing import Literal

from dst_core.store import codec
from dst_core.store.run_store import dumps
from dst_core.store.schema import clean_json

Mode = Literal["json", "binary", "announce"]
MODES: tuple[Mode, ...] = ("json", "binary", "announce")
ROW_COLUMNS = "seq, step, type, payload, blob"  # what a StoredEvent is made from


def finite_json(value):
    """JSON-safe copy (NaN and ±inf as null, arrays as base64): the store's own cleaning."""
    return clean_json(value, "payload")


class WireError(ValueError):
    """A stored event that cannot be sent as valid JSON / a valid frame."""

    def __init__(self, seq: int, reason: str):
        super().__init__(f"stored event at seq {seq} cannot be sent: {reason}")
        self.seq = seq


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def _parse_object(text, seq: int) -> tuple[dict, bool]:
    """(payload, finite): the stored payload as a dict; `finite` False when it held a NaN or
    ±Infinity (then it must be re-encoded)."""
    if not isinstance(text, str):
        raise WireError(seq, "payload is not text")
    finite = True
    try:
        payload = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise WireError(seq, "payload nested too deeply") from None
    except ValueError:
        finite = False
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            raise WireError(seq, "payload is not valid JSON") from None
    if not isinstance(payload, dict):
        raise WireError(seq, "payload is not a JSON object")
    return payload, finite


def _topology_header(payload: dict, seq: int) -> None:
    missing = [key for key in codec.HEADER_KEYS if key not in payload]
    if missing:
        raise WireError(seq, f"topology header lacks {', '.join(map(repr, missing))}")
    index = payload["index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0 \
            or not isinstance(payload["layer"], str):
        raise WireError(seq, "topology header: `index` must be a non-negative integer and "
                             "`layer` a string")
    try:
        codec.frame_numel(payload["shape"])
    except codec.FrameError as error:
        raise WireError(seq, str(error)) from None


class StoredEvent:
    """One stored row and its encodings, each made once and shared by every viewer."""

    __slots__ = ("seq", "step", "type", "_payload", "_blob", "_messages", "misfit", "judged")

    def __init__(self, row):
        self.seq, self.step, self.type = int(row[0]), int(row[1]), str(row[2])
        self._payload, self._blob = row[3], row[4]
        self._messages: dict[Mode, str | bytes | WireError] = {}
        # Why readers skip this topology frame (it does not fit its layer's history: a frame
        # an older version stored unchecked), set by judge_frames before a full encoding.
        self.misfit: str | None = None
        self.judged = False

    def encoded(self, mode: Mode) -> bool:
        return mode in self._messages

    def message(self, mode: Mode) -> str | bytes:
        """The message of this event in `mode` (cached); WireError if it cannot be sent."""
        message = self._messages.get(mode)
        if message is None:
            try:
                message = self._encode(mode)
            except WireError as error:
                message = error
            except Exception as error:  # whatever else a stored row holds: never a dead socket
                message = WireError(self.seq, f"{type(error).__name__}: {error}")
            self._messages[mode] = message
        if isinstance(message, WireError):
            raise message
        return message

    @property
    def nbytes(self) -> int:
        """Memory held (stored row and encodings): what a bounded buffer of events counts."""
        held = len(self._payload or "") + len(self._blob or b"")
        return held + sum(len(m) for m in self._messages.values() if not isinstance(m, Exception))

    def _encode(self, mode: Mode) -> str | bytes:
        payload, finite = _parse_object(self._payload, self.seq)
        head = f'{{"seq":{self.seq},"step":{self.step},"type":{json.dumps(self.type)}'
        if self.type != "topology":
            text = self._payload if finite else dumps(payload)
            return head + ("}" if text == "{}" else "," + text[1:])
        _topology_header(payload, self.seq)
        header = finite_json({key: payload[key] for key in codec.HEADER_KEYS} | {
            key: payload[key] for key in ("n_added", "n_removed") if key in payload})
        if mode == "announce":
            return head + "," + dumps(header | {"announce": True})[1:]
        if self.misfit is not None:
            # Not sent as a frame: a client applying it would rebuild a mask no reader of the
            # store has (/mask, /view and /topology skip it). A notice without a `seq` says so.
            return dumps({"type": "skipped_frame", "skipped_seq": self.seq, "step": self.step,
                          "layer": header["layer"], "index": header["index"],
                          "reason": self.misfit[:500]})
        if self._blob is None:
            raise WireError(self.seq, "topology frame has no data")
        try:
            if mode == "binary":
                raw = codec.stored_to_raw(header, bytes(self._blob))
                full = {"seq": self.seq, "step": self.step, "type": "topology", **header}
                return codec.binary_message(full, raw)
            body = codec.stored_to_payload(header, bytes(self._blob))
        except codec.FrameError as error:
            raise WireError(self.seq, str(error)) from None
        return head + "," + dumps(body)[1:]


def read_events(store, run_id: str, from_seq: int, limit: int) -> list[StoredEvent]:
    """Stored rows of a run from `from_seq`, in seq order (nothing decoded yet)."""
    rows = store.db.execute(
        f"SELECT {ROW_COLUMNS} FROM events WHERE run_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
        (run_id, from_seq, limit)).fetchall()
    return [StoredEvent(row) for row in rows]


def judge_frames(events: list[StoredEvent], reader, run: dict | None) -> None:
    """Mark the topology frames every reader skips (reader.frame_misfit), once per event,
    before they are encoded for a mode that sends frames whole. A frame whose header or data
    cannot be read is left to its encoding, which reports it."""
    for event in events:
        if event.judged or event.type != "topology" or run is None:
            continue
        event.judged = True
        try:
            payload, _ = _parse_object(event._payload, event.seq)
            event.misfit = reader.frame_misfit(run, event.seq, event.step, payload)
        except Exception:  # noqa: BLE001 - whatever a stored row holds: the encoding says it
            event.misfit = None


def encode_all(events: list[StoredEvent], modes) -> None:
    """Encode every event in every mode ahead of the event loop (errors are kept, not
    raised: the viewer that meets one reports it)."""
    for event in events:
        for mode in modes:
            try:
                event.message(mode)
            except WireError:
                pass


def error_message(text: str, **extra) -> str:
    return json.dumps({"type": "error", "error": text, **finite_json(extra)})


def end_message(last_seq: int) -> str:
    return json.dumps({"type": "end", "last_seq": int(last_seq)})

