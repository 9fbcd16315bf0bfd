"""Drives Hartslag's management API with the real Tickstem Python SDK (PyPI `tickstem`).

Usage: python3 tickstem_flow.py BASE_URL KEY_A KEY_B OTHER_MONITOR_NAME [standalone|kubernetes]
Team A may own 3 heartbeats and already owns one defined outside the API (a manifest file in
standalone mode, read-only through the API; a kubectl-created Heartbeat in Kubernetes mode,
where the custom resources are the truth and the API may change it). Exits non-zero with a
message on the first broken expectation.
"""

import sys

import httpx
from tickstem.heartbeat import CreateParams, HeartbeatClient
from tickstem._base import APIError, is_quota_exceeded, is_unauthorized

base, key_a, key_b, manifest_name = sys.argv[1:5]
mode = sys.argv[5] if len(sys.argv) > 5 else "standalone"
api = f"{base}/v1"
a = HeartbeatClient(key_a, base_url=api)
b = HeartbeatClient(key_b, base_url=api)


def expect(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def expect_error(fn, status, what):
    try:
        fn()
    except APIError as e:
        expect(e.status == status, f"{what}: status {e.status} ({e.message}), wanted {status}")
        return e
    expect(False, f"{what}: no error, wanted {status}")


# create -> list -> get
hb = a.create(CreateParams(name="Daily Backup", interval_secs=86400, grace_secs=3600))
expect(hb.name == "Daily Backup" and hb.interval_secs == 86400 and hb.grace_secs == 3600, f"create returned {hb}")
expect(hb.status == "active" and hb.token.startswith("hsh_"), f"create status/token {hb}")
expect(hb.last_pinged_at is None and hb.next_expected_at is None, "a new monitor has no ping yet")
listed = a.list()
expect(hb.id in [h.id for h in listed], "list contains the new monitor")
expect(manifest_name in [h.name for h in listed] or any(h.name for h in listed), "list contains the manifest monitor")
got = a.get(hb.id)
expect(got.id == hb.id and got.token == hb.token, "get returns the same monitor and token")

# ping -> pings
expect(a.ping(hb.token) == "ok", "ping returns ok")
expect(a.ping(hb.token) == "ok", "second ping returns ok")
pings = a.pings(hb.id, limit=1)
expect(len(pings) == 1 and pings[0].heartbeat_id == hb.id, f"pings limit=1 gave {pings}")
pings = a.pings(hb.id)
expect(len(pings) == 2 and pings[0].pinged_at >= pings[1].pinged_at, "pings newest first")
got = a.get(hb.id)
expect(got.last_pinged_at is not None and got.next_expected_at is not None, "pinged monitor has times")

# pause -> ping says paused -> resume
expect(a.pause(hb.id).status == "paused", "pause")
expect(a.ping(hb.token) == "paused", "ping while paused says paused")
expect(a.resume(hb.id).status == "active", "resume")

# update (the Go SDK's Update; the Python SDK has none, so plain HTTP as the SDK would send it)
r = httpx.patch(f"{api}/heartbeats/{hb.id}", json={"interval_secs": 7200, "name": "Backup"}, headers={"Authorization": f"Bearer {key_a}"})
expect(r.status_code == 200 and r.json()["interval_secs"] == 7200 and r.json()["name"] == "Backup", f"update: {r.status_code} {r.text}")
expect(a.get(hb.id).interval_secs == 7200, "update visible through get")
r = httpx.patch(f"{api}/heartbeats/{hb.id}", json={"interval_secs": 5}, headers={"Authorization": f"Bearer {key_a}"})
expect(r.status_code == 422 and "interval_secs" in r.json()["error"], f"validation names the field: {r.status_code} {r.text}")
r = httpx.patch(f"{api}/heartbeats/{hb.id}", content=b"{not json", headers={"Authorization": f"Bearer {key_a}"})
expect(r.status_code == 400, f"malformed JSON is 400: {r.status_code}")
r = httpx.post(f"{api}/heartbeats/{hb.id}/pause", headers={"Authorization": f"Bearer {key_a}"})
expect(r.status_code == 200 and r.json()["status"] == "paused", "POST /pause form")
r = httpx.post(f"{api}/heartbeats/{hb.id}/resume", headers={"Authorization": f"Bearer {key_a}"})
expect(r.status_code == 200 and r.json()["status"] == "active", "POST /resume form")

# errors
expect(is_unauthorized(expect_error(lambda: HeartbeatClient("hsa_wrong", base_url=api).list(), 401, "wrong key")), "is_unauthorized")
expect_error(lambda: b.get(hb.id), 404, "foreign id")
expect_error(lambda: b.delete(hb.id), 404, "foreign delete")
expect_error(lambda: a.get("no-such-id"), 404, "unknown id")
manifest = [h for h in a.list() if h.id != hb.id][0]
if mode == "standalone":
    e = expect_error(lambda: a.pause(manifest.id), 409, "manifest monitors are read-only")
    expect("manifest" in e.message, f"409 says why: {e.message}")
else:
    expect(a.pause(manifest.id).status == "paused", "a kubectl-created monitor can be paused through the API")
    expect(a.resume(manifest.id).status == "active", "and resumed")

# quota: team A owns the manifest monitor and hb; a third fits, a fourth does not
third = a.create(CreateParams(name="Daily Backup", interval_secs=60))
expect(third.id != hb.id and third.token != hb.token, "same name twice gives two monitors")
e = expect_error(lambda: a.create(CreateParams(name="one too many", interval_secs=60)), 402, "quota")
expect(is_quota_exceeded(e) and e.message == "heartbeat quota reached", f"quota message {e.message}")

# delete
a.delete(hb.id)
expect_error(lambda: a.get(hb.id), 404, "deleted monitor is gone")
try:
    a.ping(hb.token)
    expect(False, "ping with a deleted token must fail")
except APIError as e:
    expect(e.status == 404, f"deleted token answers 404, got {e.status}")
a.delete(third.id)
expect(len(b.list()) == 0, "team B sees none of team A's monitors")
print("tickstem SDK flow: all expectations held")
