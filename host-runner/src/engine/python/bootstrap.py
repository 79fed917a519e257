"""The host-runner's side of a Python worker: loaded once per interpreter (module
`_virtufin_host`), never by worker code.

- `configure(blocked)`: installs the import policy; sys.path keeps the stdlib only (the
  interpreter runs without `site`).
- `load(worker_id, source, filename, extra_paths)`: runs a worker's source in a fresh module
  and returns `("ok", module_name, Process, is_async)` or `("error", traceback)`.
- `process(...)`: one call: the event dict (without `data`) and the data in, `("none",)`, `("ok", fields...)` or
  `("error", traceback)` out. Never raises for worker misbehaviour.

The import policy: a module's imports are checked when the importer is worker code (its
globals carry `__virtufin_worker__`), whichever way it imports: the `import` statement,
`__import__`, `importlib.import_module`, `importlib.__import__`. The sandbox is the boundary;
this is the documented user-facing rule (docs/python.md).
"""

import builtins
import importlib
import inspect
import json
import sys
import threading
import traceback
import types

_BLOCKED = ()
_REAL_IMPORT = builtins.__import__
_REAL_IMPORT_MODULE = importlib.import_module
_WORKER_MARK = "__virtufin_worker__"
_STANDARD = ("id", "type", "source", "specversion", "datacontenttype", "dataschema",
             "subject", "time", "data")
_STANDARD_SET = frozenset(_STANDARD)
_NONE = ("none",)
_NO_EXTS = []
_local = threading.local()
# Made once: json.dumps with arguments builds a new encoder per call (~2 us).
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_json_loads = json.loads
_isawaitable = inspect.isawaitable


def configure(blocked):
    global _BLOCKED
    _BLOCKED = tuple(b for b in blocked if b)
    # No current folder on the path: only the stdlib and each worker's package folder.
    sys.path[:] = [p for p in sys.path if p]
    builtins.__import__ = _guarded_import
    importlib.import_module = _guarded_import_module
    importlib.__import__ = _guarded_import


def blocked_name(name):
    """The blocked entry `name` falls under (`os` for `os.path`), or None."""
    for b in _BLOCKED:
        if name == b or name.startswith(b + "."):
            return b
    return None


def _from_worker(globals_):
    return isinstance(globals_, dict) and _WORKER_MARK in globals_


def _check(name):
    if name and blocked_name(name) is not None:
        raise ImportError(f"{name} is not allowed", name=name)


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0:
        caller = globals if globals is not None else sys._getframe(1).f_globals
        if _from_worker(caller):
            _check(name)
            for item in fromlist or ():
                if isinstance(item, str) and item != "*":
                    _check(f"{name}.{item}")
    return _REAL_IMPORT(name, globals, locals, fromlist, level)


def _guarded_import_module(name, package=None):
    if _from_worker(sys._getframe(1).f_globals) and not name.startswith("."):
        _check(name)
    return _REAL_IMPORT_MODULE(name, package)


_loads = 0


def load(worker_id, source, filename, extra_paths):
    for p in extra_paths:
        if p not in sys.path:
            sys.path.insert(0, p)
    # One name per load: a hot reload loads the new version beside the old one, and the old
    # one's unload must not take the new one's sys.modules entry with it.
    global _loads
    _loads += 1
    name = "virtufin_worker_" + "".join(c if c.isalnum() else "_" for c in worker_id)
    name += f"_v{_loads}"
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__dict__[_WORKER_MARK] = worker_id
    sys.modules[name] = module
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
        exec(code, module.__dict__)
        fn = module.__dict__.get("Process")
        if fn is None or not callable(fn):
            raise TypeError(
                f"{filename} defines no module-level function Process(event); "
                "define `def Process(event):` (or `async def`)")
    except BaseException as e:
        sys.modules.pop(name, None)
        tb = e.__traceback__
        if tb is not None and tb.tb_frame.f_code is load.__code__:
            tb = tb.tb_next
        return ("error", "".join(traceback.format_exception(type(e), e, tb)).rstrip())
    return ("ok", name, fn, inspect.iscoroutinefunction(fn))


def unload(name):
    sys.modules.pop(name, None)


_json_types = {None: True}  # content type -> is JSON (CloudEvents: none means JSON)


def _is_json(ct):
    known = _json_types.get(ct)
    if known is None:
        base = ct.split(";", 1)[0].strip().lower()
        known = base in ("application/json", "text/json") or base.endswith("+json")
        if len(_json_types) < 256:  # a worker cannot grow it without bound
            _json_types[ct] = known
    return known


def _data_in(ct, data):
    if data is None:
        return None
    if _is_json(ct):
        try:
            # JSON is UTF-8 (RFC 8259): decoding first skips json's encoding detection.
            return _json_loads(data.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError too; a BOM or UTF-16: json's own detection
            try:
                return _json_loads(data)
            except ValueError:
                pass
    if ct is None or ct.lower().startswith("text/") or _is_json(ct):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data
    return data


def _loop():
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        import asyncio  # lazily: ~10 ms of imports only workers with `async def` pay for
        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop


def _ext_value(key, value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TypeError(
        f"reply attribute {key!r} is a {type(value).__name__}; extension attributes are "
        "strings, numbers or booleans")


_ids = None


def _new_id():
    """A unique reply id: a random 128-bit prefix drawn once per interpreter, then a counter
    (a uuid4 per reply cost a getrandom call and ~1 us each)."""
    global _ids
    if _ids is None:
        import itertools  # built in; `secrets` would pull hashlib, random, ... (~4 MiB RSS)
        import os  # already loaded by the interpreter's start-up
        _ids = (os.urandom(16).hex(), itertools.count(1))
    return f"{_ids[0]}-{next(_ids[1])}"


def _reply(r, worker_id):
    if r is None:
        return _NONE
    if type(r) is not dict and not isinstance(r, dict):
        raise TypeError(
            f"Process returned a {type(r).__name__}; return a dict of CloudEvent attributes "
            "or None for no reply")
    get = r.get
    ct = get("datacontenttype")
    data = get("data")
    if data is not None:
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
            ct = ct or "application/octet-stream"
        elif isinstance(data, str) and not (ct and _is_json(ct)):
            data = data.encode("utf-8")
            ct = ct or "text/plain"
        else:
            data = _dumps(data).encode("utf-8")
            ct = ct or "application/json"
    exts = _NO_EXTS if r.keys() <= _STANDARD_SET else [
        (k, _ext_value(k, v)) for k, v in r.items() if k not in _STANDARD_SET and v is not None]
    # Inline rather than a helper per attribute: this runs for every reply. Missing or empty
    # attributes get the documented defaults; the rest become strings.
    id_, ty, source, spec = get("id"), get("type"), get("source"), get("specversion")
    schema, subject, time = get("dataschema"), get("subject"), get("time")
    return ("ok",
            _new_id() if id_ is None or id_ == "" else str(id_),
            "unknown" if ty is None or ty == "" else str(ty),
            "urn:virtufin:worker:" + worker_id if source is None or source == "" else str(source),
            "1.0" if spec is None or spec == "" else str(spec),
            ct,
            None if schema is None or schema == "" else str(schema),
            None if subject is None or subject == "" else str(subject),
            None if time is None or time == "" else str(time),
            exts,
            data)


def process(fn, is_async, worker_id, event, ct, data):
    """event: the attributes and extensions (built by the host); data: bytes or None."""
    try:
        event["data"] = _data_in(ct, data)
        result = fn(event)
        # The common answers first: a dict or None is never awaitable.
        if is_async or (result is not None and type(result) is not dict
                        and _isawaitable(result)):
            result = _loop().run_until_complete(result)
        return _reply(result, worker_id)
    except BaseException as e:  # SystemExit too: a worker must not end the host
        tb = e.__traceback__
        # Drop this function's own frame: the author sees their code first.
        if tb is not None and tb.tb_frame.f_code is process.__code__:
            tb = tb.tb_next
        return ("error", "".join(traceback.format_exception(type(e), e, tb)).rstrip())
