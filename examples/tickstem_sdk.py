"""Managing Hartslag monitors with the Tickstem Python SDK, unchanged.

    pip install tickstem
    python3 examples/tickstem_sdk.py http://127.0.0.1:8080 "$(cat hartslag-data/tokens/application-billing.token)"
"""

import sys

from tickstem.heartbeat import CreateParams, HeartbeatClient

base_url, api_key = sys.argv[1], sys.argv[2]
client = HeartbeatClient(api_key, base_url=f"{base_url.rstrip('/')}/v1")

hb = client.create(CreateParams(name="example nightly export", interval_secs=86400, grace_secs=3600))
print(f"created {hb.name!r} (id {hb.id}); ping URL: {base_url}/v1/heartbeats/{hb.token}/ping")
print("ping:", client.ping(hb.token))
for h in client.list():
    print(f"  {h.name:<30} {h.status:<8} last ping {h.last_pinged_at or 'never'}")
print("pings:", [p.pinged_at for p in client.pings(hb.id, limit=5)])
client.delete(hb.id)
print("deleted", hb.id)
