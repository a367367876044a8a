"""SecSign ID server simulator: the ID server's wire protocols plus a scriptable "phone".

Lets the proxy be developed, tested and demonstrated without a SecSign account or a phone.
It speaks both protocols of reference/secsign-id-api.md: the legacy form API on ``POST /``
and REST ``/rest/v2/AuthSession`` and ``/rest/v2/TOTP/Verify/{code}``. For each new session
the first matching rule (``PATTERN=ACTION[:SECONDS]``, glob on the SecSign ID, default
``*=manual``) decides what the phone does: approve, deny, expire, manual, unknown, frozen.

Control API (JSON, under ``/simulator/api``; POSTs need ``Content-Type: application/json``):

* ``GET  sessions``  -> ``[{"id", "secsignid", "servicename", "serviceaddress", "state",
  "created"}]``; ``id`` is the authsessionid as a decimal *string* (64 bits do not fit a
  JavaScript number), ``created`` Unix time.
* ``POST sessions/{id}/approve`` and ``.../deny`` -> the session; 404 unknown, 409 if it is
  no longer pending.
* ``GET  log``  -> every protocol request in order:
  ``{"type": "start|state|cancel|totp|release", "api": "legacy|rest", "secsignid",
  "time", "authsessionid"}``.
* ``GET  totp/{secsignid}`` -> ``{"code": "123456"}``, the currently valid code.
* ``POST reset`` -> forget all sessions and the log (rules stay).
* ``POST rules`` with ``{"rules": ["PATTERN=ACTION[:S]", ...]}`` -> replace the rules; sessions
  already started keep theirs. ``GET rules`` shows them.

The phone page is ``GET /simulator/`` (see ``page.py`` for its stable test hooks).

Choices where the real server is undocumented: an unknown SecSign ID is REST 404 (never a 5xx
a proxy might take for "unreachable"), ``errorcode`` 20000; frozen is REST 409, legacy
``error=500 ... errorcode=20006``; an unknown, mismatched or cancelled session is legacy
``error=400`` and REST 404; ``ReqReleaseAuthSession`` always answers ``error=500``.
"""

from __future__ import annotations

from radius_proxy.simulator.rules import Rule, parse_rule, parse_rules
from radius_proxy.simulator.server import (
    DEFAULT_LISTEN,
    BackgroundSimulator,
    SimulatorServer,
    run_simulator,
    serve_simulator,
)
from radius_proxy.simulator.sessions import AuthSessionState, Simulator

__all__ = [
    "DEFAULT_LISTEN",
    "AuthSessionState",
    "BackgroundSimulator",
    "Rule",
    "Simulator",
    "SimulatorServer",
    "parse_rule",
    "parse_rules",
    "run_simulator",
    "serve_simulator",
]
