"""`virtufin`: what a Python worker may call on its host (docs/python.md).

- `log(level, message)`: level is "trace", "debug", "info", "warn"/"warning", "error" or
  0-4 (the C ABI's VIRTUFIN_LOG_*).
- `gateway_call(service, method, request)`: the gateway of the C ABI (`pubsub`, `state`,
  `workmanager`, forwarded services). `request` is a dict/list (sent as JSON), str or bytes;
  the answer is the parsed JSON reply (bytes when it is not JSON). A non-zero status raises
  `GatewayError` with `.status` (1 bad request, 2 unknown, 3 backend, 4 timed out, 5 refused;
  -1..-3 the host's own: bad argument, timeout, unavailable).
"""

import json as _json

import _virtufin_native

TRACE, DEBUG, INFO, WARN, ERROR = 0, 1, 2, 3, 4
_LEVELS = {"trace": 0, "debug": 1, "info": 2, "information": 2, "warn": 3, "warning": 3,
           "error": 4, "critical": 4}


class GatewayError(Exception):
    def __init__(self, status, message, payload=b""):
        super().__init__(f"gateway call failed with status {status}: {message}")
        self.status = status
        self.payload = payload


def log(level, message):
    if isinstance(level, str):
        lv = _LEVELS.get(level.lower())
        if lv is None:
            raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}")
    else:
        lv = int(level)
    _virtufin_native.log(max(0, min(4, lv)), str(message))


def gateway_call(service, method, request=None):
    if request is None:
        payload = b"{}"
    elif isinstance(request, (bytes, bytearray, memoryview)):
        payload = bytes(request)
    elif isinstance(request, str):
        payload = request.encode("utf-8")
    else:
        payload = _json.dumps(request, separators=(",", ":")).encode("utf-8")
    status, reply, error = _virtufin_native.gateway_call(str(service), str(method), payload)
    if status != 0:
        raise GatewayError(status, error or reply.decode("utf-8", "replace"), reply)
    if not reply:
        return None
    try:
        return _json.loads(reply)
    except ValueError:
        return reply
