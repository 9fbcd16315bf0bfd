"""Lint and render charts/hartslag through Helm's own engine (PyPI helm-python-sdk) and
assert on the rendered objects for the main value combinations.

Usage: python3 test_chart.py [--render-to FILE]   (FILE: the default render plus the
NetworkPolicy of networkPolicy.enabled, for installing)
       python3 test_chart.py --rules-to FILE     (FILE: the PrometheusRule's spec as a rule file, for promtool)
Exits non-zero with a message on the first broken expectation.
"""

import json
import pathlib
import sys

import helm_python as helm
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hartslag"
failures = []


def expect(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAILED: {what}", file=sys.stderr)


def render(values, namespace="ops"):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        out = chart.render(values, name="hs", namespace=namespace)
    objects = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects, out


def find(objects, kind, name=None):
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def env(deploy):
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in c["env"]}


# lint
result = helm.lint(str(CHART))
expect(not result["errors"], f"lint errors: {result['errors']}")

# CRDs in the chart are the top-level ones
expect((CHART / "crds" / "hartslag.dev.yaml").read_text() == (ROOT / "crds" / "hartslag.dev.yaml").read_text(),
       "charts/hartslag/crds drifted from crds/: copy crds/hartslag.dev.yaml there")

# defaults: cluster-wide, PVC, least-privilege RBAC, hardened pod
objs, raw = render({})
deploy = find(objs, "Deployment")[0]
spec = deploy["spec"]
expect(spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", "one replica, Recreate")
pod = spec["template"]["spec"]
c = pod["containers"][0]
expect(c["args"] == ["operator"], "runs hartslag operator")
psc, csc = pod["securityContext"], c["securityContext"]
expect(psc == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}, f"pod security {psc}")
# OpenShift: its policy assigns the user; null drops the chart's.
openshift = {"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}}
psc_os = find(render(openshift)[0], "Deployment")[0]["spec"]["template"]["spec"]["securityContext"]
expect(psc_os == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}, f"null drops the fixed ids: {psc_os}")
sm = find(render({"serviceMonitor": {"enabled": True, "scrapeTimeout": "25s", "sampleLimit": 500000}})[0], "ServiceMonitor")[0]["spec"]
expect(sm["endpoints"][0]["scrapeTimeout"] == "25s" and sm["sampleLimit"] == 500000, f"scrape timeout and sample limit: {sm}")
sm = find(render({"serviceMonitor": {"enabled": True}})[0], "ServiceMonitor")[0]["spec"]
expect("scrapeTimeout" not in sm["endpoints"][0] and "sampleLimit" not in sm, f"none by default: {sm}")
expect(csc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False, "capabilities": {"drop": ["ALL"]}}, f"container security {csc}")
expect(c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz", "probes")
startup = c["startupProbe"]
expect(startup["httpGet"]["path"] == "/healthz" and startup["periodSeconds"] * startup["failureThreshold"] >= 600, f"a startupProbe that allows a long recovery: {startup}")
expect("limits" in c["resources"] and "requests" in c["resources"], "resources")
e = env(deploy)
expect(e["HARTSLAG_ADMIN_SECRET"]["value"] == "hs-hartslag-admin", "admin Secret name")
expect(e["HARTSLAG_ADMIN_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", "admin Secret in the pod's namespace")
expect(e["HARTSLAG_EXTERNAL_URL"]["value"] == "http://hs-hartslag.ops.svc:8080", f"external URL default {e['HARTSLAG_EXTERNAL_URL']}")
expect("HARTSLAG_NAMESPACES" not in e and "HARTSLAG_SMTP_URL" not in e, "cluster-wide, no email by default")
expect(e["HARTSLAG_MAX_CONCURRENT_READS_TOTAL"]["value"] == "8", f"server-wide bound on heavy reads: {e['HARTSLAG_MAX_CONCURRENT_READS_TOTAL']}")
reads_total = env(find(render({"maxConcurrentReadsTotal": 3})[0], "Deployment")[0])["HARTSLAG_MAX_CONCURRENT_READS_TOTAL"]
expect(reads_total["value"] == "3", f"maxConcurrentReadsTotal reaches the flag: {reads_total}")
pvc = find(objs, "PersistentVolumeClaim")
expect(len(pvc) == 1 and pvc[0]["spec"]["resources"]["requests"]["storage"] == "1Gi", "a 1Gi PVC")
expect(pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "hs-hartslag-data", "data on the PVC")
roles = find(objs, "ClusterRole", "hs-hartslag")
admin_roles = find(objs, "Role")
expect(sorted(r["metadata"]["name"] for r in find(objs, "ClusterRole")) == ["hs-hartslag", "hs-hartslag-cluster-channels", "hs-hartslag-edit", "hs-hartslag-leases", "hs-hartslag-view"], "cluster-wide: the operator's ClusterRole, the ClusterAlertChannel reader, the Lease reader and the aggregated view/edit roles")
expect([r["metadata"]["name"] for r in admin_roles] == ["hs-hartslag-admin"], "cluster-wide: only the admin-Secret Role")
expect(admin_roles[0]["metadata"]["namespace"] == "ops", "admin Secret Role in the release namespace")
expect(admin_roles[0]["rules"] == [
    {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hs-hartslag-admin"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["hs-hartslag"], "verbs": ["get", "update"]},
], f"admin Secret and Lease rules: {admin_roles[0]['rules']}")
lease = find(objs, "Lease")
expect(len(lease) == 1 and lease[0]["metadata"]["name"] == "hs-hartslag" and "spec" not in lease[0], "the chart creates the Lease, without a holder")
expect(lease[0]["metadata"]["labels"]["hartslag.dev/lease"] == "operator" and lease[0]["metadata"]["annotations"]["hartslag.dev/scope"] == "*", f"Lease label and scope: {lease[0]['metadata']}")
expect(e["HARTSLAG_LEASE_NAME"]["value"] == "hs-hartslag" and e["HARTSLAG_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", "the operator is told its Lease")
leases_role = find(objs, "ClusterRole", "hs-hartslag-leases")[0]
channels_role = find(objs, "ClusterRole", "hs-hartslag-cluster-channels")[0]
expect(channels_role["rules"] == [
    {"apiGroups": ["hartslag.dev"], "resources": ["clusteralertchannels"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["hartslag.dev"], "resources": ["clusteralertchannels/status"], "verbs": ["patch"]},
], f"ClusterAlertChannel reader: {channels_role['rules']}")
expect(find(objs, "ClusterRoleBinding", "hs-hartslag-cluster-channels")[0]["subjects"][0]["name"] == "hs-hartslag", "ClusterAlertChannel reader bound to the ServiceAccount")
expect(leases_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list", "watch"]}], f"Lease reader: {leases_role['rules']}")
view = find(objs, "ClusterRole", "hs-hartslag-view")[0]
edit = find(objs, "ClusterRole", "hs-hartslag-edit")[0]
expect(view["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-view") == "true" and set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}, "view aggregation: read only")
expect(edit["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-edit") == "true" and edit["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-admin") == "true", "edit aggregation: edit and admin")
objs_noagg, _ = render({"rbac": {"aggregateToDefaultRoles": False}})
expect(not find(objs_noagg, "ClusterRole", "hs-hartslag-view") and not find(objs_noagg, "ClusterRole", "hs-hartslag-edit"), "aggregation can be switched off")
expect(find(objs, "RoleBinding")[0]["subjects"][0]["name"] == "hs-hartslag", "admin Role bound to the ServiceAccount")
rules = {(r["apiGroups"][0], tuple(r["resources"])): set(r["verbs"]) for r in roles[0]["rules"]}
expect(rules == {
    ("hartslag.dev", ("heartbeats",)): {"list", "watch", "patch", "create", "delete"},
    ("hartslag.dev", ("applications",)): {"list", "watch", "patch"},
    ("hartslag.dev", ("alertchannels",)): {"get", "list", "watch"},
    ("hartslag.dev", ("applications/status", "heartbeats/status", "alertchannels/status")): {"patch"},
    ("hartslag.dev", ("applications/finalizers", "heartbeats/finalizers")): {"update"},
    ("", ("secrets",)): {"get", "list", "watch", "create", "patch"},
    ("events.k8s.io", ("events",)): {"create", "patch"},
    ("batch", ("cronjobs", "jobs")): {"get", "list", "watch"},
    ("", ("pods",)): {"get", "list", "watch"},
}, f"least-privilege rules: {rules}")
expect(all(v != {"*"} and "update" not in v or r[1][0].endswith("/finalizers") for r, v in rules.items()), "no update except finalizers")
expect(all("*" not in v for v in rules.values()), "no wildcard verbs")
binding = find(objs, "ClusterRoleBinding", "hs-hartslag")[0]
expect(binding["subjects"][0] == {"kind": "ServiceAccount", "name": "hs-hartslag", "namespace": "ops"}, "bound to the ServiceAccount")
expect(find(objs, "Service")[0]["spec"]["ports"][0]["port"] == 8080, "service port")
expect(not find(objs, "Ingress") and not find(objs, "ServiceMonitor") and not find(objs, "Secret"), "optional objects off by default")
if len(sys.argv) > 2 and sys.argv[1] == "--render-to":
    pathlib.Path(sys.argv[2]).write_text("\n---\n".join(yaml.safe_dump(o) for o in objs))

# namespaced scope: Roles in each watched namespace, the operator told which
objs, _ = render({"scope": {"clusterWide": False, "namespaces": ["team-a", "team-b"]}})
expect(not find(objs, "ClusterRole", "hs-hartslag") and not find(objs, "ClusterRoleBinding", "hs-hartslag"), "namespaced: no cluster-wide access to the resources or Secrets")
expect(find(objs, "ClusterRole", "hs-hartslag-leases"), "namespaced: still reads other installations' Leases")
expect(find(objs, "ClusterRole", "hs-hartslag-cluster-channels") and find(objs, "ClusterRoleBinding", "hs-hartslag-cluster-channels"), "namespaced: still reads ClusterAlertChannels")
expect(find(objs, "Lease")[0]["metadata"]["annotations"]["hartslag.dev/scope"] == "team-a,team-b", "the Lease announces the scope")
expect(sorted(r["metadata"]["namespace"] for r in find(objs, "Role")) == ["ops", "team-a", "team-b"], "a Role per namespace, plus the admin-Secret Role")
expect(sorted(b["metadata"]["namespace"] for b in find(objs, "RoleBinding")) == ["ops", "team-a", "team-b"], "a RoleBinding per namespace, plus the admin-Secret one")
expect(env(find(objs, "Deployment")[0])["HARTSLAG_NAMESPACES"]["value"] == "team-a,team-b", "HARTSLAG_NAMESPACES")
team_role = [r for r in find(objs, "Role") if r["metadata"]["namespace"] == "team-a"][0]
team_rules = {(r["apiGroups"][0], tuple(r["resources"])): set(r["verbs"]) for r in team_role["rules"]}
expect(team_rules == rules, f"namespaced: the same rules in each namespace, CronJobs, Jobs and Pods read-only: {team_rules}")

# trial mode, storage class, SMTP from values or an existing Secret, webhook, ingress, ServiceMonitor
objs, _ = render({"persistence": {"enabled": False}})
expect(not find(objs, "PersistentVolumeClaim"), "no PVC when persistence is off")
expect(find(objs, "Deployment")[0]["spec"]["template"]["spec"]["volumes"][0]["emptyDir"] == {}, "emptyDir when persistence is off")
objs, _ = render({"persistence": {"storageClass": "fast"}})
expect(find(objs, "PersistentVolumeClaim")[0]["spec"]["storageClassName"] == "fast", "storage class")
objs, _ = render({"smtp": {"url": "smtps://u:p@mail:465", "from": "hb@example.com"}, "webhookURL": "https://hooks.example.com/x"})
secret = find(objs, "Secret")
expect(len(secret) == 1 and secret[0]["stringData"] == {"url": "smtps://u:p@mail:465", "from": "hb@example.com"}, "SMTP Secret from values")
e = env(find(objs, "Deployment")[0])
expect(e["HARTSLAG_SMTP_URL"]["valueFrom"]["secretKeyRef"] == {"name": "hs-hartslag-smtp", "key": "url"}, "SMTP URL from the Secret")
expect(e["HARTSLAG_WEBHOOK_URL"]["value"] == "https://hooks.example.com/x", "webhook default")
objs, _ = render({"smtp": {"existingSecret": "mail-creds"}})
expect(not find(objs, "Secret"), "existing SMTP Secret: none created")
expect(env(find(objs, "Deployment")[0])["HARTSLAG_MAIL_FROM"]["valueFrom"]["secretKeyRef"]["name"] == "mail-creds", "existing SMTP Secret used")
objs, _ = render({"externalURL": "https://hb.example.com/", "ingress": {"enabled": True, "host": "hb.example.com", "tlsSecretName": "hb-tls"}, "serviceMonitor": {"enabled": True}})
expect(env(find(objs, "Deployment")[0])["HARTSLAG_EXTERNAL_URL"]["value"] == "https://hb.example.com", "external URL")
ing = find(objs, "Ingress")
expect(len(ing) == 1 and ing[0]["spec"]["tls"][0]["secretName"] == "hb-tls", "ingress with TLS")
paths = {(p["path"], p["pathType"]) for p in ing[0]["spec"]["rules"][0]["http"]["paths"]}
expect(paths == {("/", "Exact"), ("/api", "Prefix"), ("/v1", "Prefix"), ("/ui", "Prefix"), ("/badge", "Prefix")},
       f"the Ingress routes the APIs, the dashboard and badges, not /metrics: {paths}")
exposed, _ = render({"ingress": {"enabled": True, "host": "hb.example.com", "exposeMetrics": True}})
paths = [(p["path"], p["pathType"]) for p in find(exposed, "Ingress")[0]["spec"]["rules"][0]["http"]["paths"]]
expect(paths == [("/", "Prefix")], f"exposeMetrics routes every path: {paths}")
expect(find(objs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["path"] == "/metrics", "ServiceMonitor")
expect(find(objs, "ServiceMonitor")[0]["spec"]["endpoints"][0].get("honorLabels") is True,
       "the ServiceMonitor keeps the Heartbeat's own namespace label (not exported_namespace)")
_, raw = render({})
notes = [v for k, v in raw.items() if k.endswith("NOTES.txt")][0]
expect("ping-url" in notes and "kubectl get heartbeats" in notes, "NOTES.txt explains the first monitor")

# alerting rules and the Grafana dashboard: off by default, rendered when enabled
expect(not find(objs, "PrometheusRule") and not find(objs, "ConfigMap"), "no rules or dashboard by default")
objs, _ = render({"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus"}},
                  "grafanaDashboard": {"enabled": True}})
rule = find(objs, "PrometheusRule")
expect(len(rule) == 1 and rule[0]["metadata"]["labels"].get("release") == "kube-prometheus", "PrometheusRule with extra labels")
names = [r["alert"] for g in rule[0]["spec"]["groups"] for r in g["rules"]] if rule else []
expect(names == ["HeartbeatDown", "HeartbeatLate", "HartslagDown", "HartslagLeadership", "HartslagAlertDeliveryFailing"], f"rule names {names}")
expect(rule and 'up{job="hs-hartslag"}' in str(rule[0]["spec"]), "HartslagDown watches the Service's scrape job")
dash = find(objs, "ConfigMap", "hs-hartslag-dashboard")
expect(len(dash) == 1 and dash[0]["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap labelled grafana_dashboard")
if dash:
    board = json.loads(dash[0]["data"]["hartslag.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    # Every replica exports the leader's monitor states: a panel that sums them over the
    # replicas counts each Heartbeat once per replica.
    for p in board["panels"]:
        for t in p["targets"]:
            if "hartslag_heartbeat_" in t["expr"] or "hartslag_monitors" in t["expr"]:
                expect("max by" in t["expr"], f"panel {p['title']!r} counts each Heartbeat once over replicas: {t['expr']}")
    for metric in ["hartslag_heartbeat_up", "hartslag_heartbeat_state", "hartslag_heartbeat_last_success_timestamp_seconds", "hartslag_alert_deliveries_total"]:
        expect(metric in exprs, f"the dashboard charts {metric}")
if len(sys.argv) > 2 and sys.argv[1] == "--rules-to" and rule:
    pathlib.Path(sys.argv[2]).write_text(yaml.safe_dump(rule[0]["spec"]))

# webhook address filtering: private ranges refused by default, allowed ranges and trusted proxies passed on
e = env(find(render({})[0], "Deployment")[0])
expect(e.get("HARTSLAG_REFUSE_PRIVATE_WEBHOOKS", {}).get("value") == "true", "private webhook ranges refused by default")
expect("HARTSLAG_WEBHOOK_ALLOWED_CIDRS" not in e and "HARTSLAG_TRUSTED_PROXIES" not in e, "no allowed ranges or trusted proxies by default")
e = env(find(render({"webhooks": {"refusePrivate": False, "allowedCIDRs": ["10.96.5.0/24", "10.1.2.3"]}, "trustedProxies": ["10.244.0.0/16"]})[0], "Deployment")[0])
expect("HARTSLAG_REFUSE_PRIVATE_WEBHOOKS" not in e, "refusePrivate: false lifts the refusal")
expect(e["HARTSLAG_WEBHOOK_ALLOWED_CIDRS"]["value"] == "10.96.5.0/24,10.1.2.3", "allowed webhook ranges")
expect(e["HARTSLAG_TRUSTED_PROXIES"]["value"] == "10.244.0.0/16", "trusted proxies")

# NetworkPolicy: off by default; on, the pod's HTTP port in, and out only DNS, the API server, SMTP and webhook ranges
import ipaddress

expect(not find(render({})[0], "NetworkPolicy"), "no NetworkPolicy by default")
np_values = {"networkPolicy": {"enabled": True, "apiServerCIDRs": ["172.18.0.2", "10.0.0.0/30"]},
             "webhooks": {"allowedCIDRs": ["10.96.5.0/24"]}, "smtp": {"url": "smtp://mail:25"}}
objs, _ = render(np_values)
policies = find(objs, "NetworkPolicy")
expect(len(policies) == 1, "one NetworkPolicy when enabled")
np = policies[0]["spec"]
pod_labels = find(objs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
expect(all(pod_labels.get(k) == v for k, v in np["podSelector"]["matchLabels"].items()), "the policy selects the operator's pod")
expect(sorted(np["policyTypes"]) == ["Egress", "Ingress"], "ingress and egress both restricted")
expect(np["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}], f"ingress: the HTTP port only, from anywhere: {np['ingress']}")


def rule_ports(rule):
    return sorted((p["port"], p["protocol"]) for p in rule.get("ports", []))


egress = np["egress"]
expect(len(egress) == 4, f"egress: DNS, API server, SMTP, webhooks: {egress}")
dns, api, smtp, hooks = egress
expect(rule_ports(dns) == [(53, "TCP"), (53, "UDP")] and dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}, f"DNS rule: {dns}")
expect(rule_ports(api) == [(443, "TCP"), (6443, "TCP")] and [t["ipBlock"]["cidr"] for t in api["to"]] == ["172.18.0.2/32", "10.0.0.0/30"], f"API server rule (an address becomes a /32): {api}")
expect(rule_ports(smtp) == [(25, "TCP"), (465, "TCP"), (587, "TCP")] and "to" not in smtp, f"SMTP rule: {smtp}")
blocks = [t["ipBlock"] for t in hooks["to"]]
expect(rule_ports(hooks) == [(80, "TCP"), (443, "TCP")], f"webhook ports: {hooks}")
expect(blocks[-1] == {"cidr": "10.96.5.0/24"}, f"allowed webhook ranges are let through: {blocks}")
for b in blocks:
    net = ipaddress.ip_network(b["cidr"])
    for x in b.get("except", []):
        sub = ipaddress.ip_network(x)
        expect(sub.version == net.version and sub.subnet_of(net) and sub != net, f"ipBlock except {x} must lie inside {net}, as the API server requires")
refused = ["10.1.2.3", "172.20.0.1", "192.168.1.1", "100.64.0.1", "127.0.0.1", "169.254.169.254", "fd00::1", "fe80::1", "::1"]
for addr in refused:
    a = ipaddress.ip_address(addr)
    through = [b for b in blocks[:-1] if a in ipaddress.ip_network(b["cidr"]) and not any(a in ipaddress.ip_network(x) for x in b.get("except", []))]
    expect(not through, f"the default webhook blocks let {addr} through: {through}")
for addr in ["8.8.8.8", "2001:4860:4860::8888"]:
    a = ipaddress.ip_address(addr)
    expect(any(a in ipaddress.ip_network(b["cidr"]) and not any(a in ipaddress.ip_network(x) for x in b.get("except", [])) for b in blocks), f"the default webhook blocks let public {addr} through")
objs, _ = render({"networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.1/32"], "ingressFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress"}}}], "webhookPorts": [], "smtpCIDRs": ["192.0.2.25"]}, "smtp": {"existingSecret": "mail"}})
np = find(objs, "NetworkPolicy")[0]["spec"]
expect(np["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"name": "ingress"}}}], "ingressFrom limits who reaches the port")
expect(np["egress"][2]["to"] == [{"ipBlock": {"cidr": "192.0.2.25/32"}}], f"SMTP limited to smtpCIDRs: {np['egress'][2]}")
expect("ports" not in np["egress"][3], "webhookPorts empty: webhooks on any port")
objs, _ = render({"networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.1"]}})
np = find(objs, "NetworkPolicy")[0]["spec"]
expect(len(np["egress"]) == 3, "no SMTP rule without SMTP")
if len(sys.argv) > 2 and sys.argv[1] == "--render-to":
    # The API server checks what no schema here can: ipBlock excepts inside their CIDR.
    policy = find(render(np_values)[0], "NetworkPolicy")[0]
    with open(sys.argv[2], "a") as f:
        f.write("\n---\n" + yaml.safe_dump(policy))

# PostgreSQL: none by default; a URL goes into a Secret of the chart's, an existing Secret
# is read under its key; the NetworkPolicy lets the pod reach the database
objs, _ = render({})
expect("HARTSLAG_DATABASE_URL" not in env(find(objs, "Deployment")[0]), "no database by default")
expect(find(objs, "Deployment")[0]["spec"]["replicas"] == 1, "one replica by default")
objs, _ = render({"database": {"url": "postgres://hartslag:pw@db.example:5432/hartslag?sslmode=require"}})
secrets = [o for o in find(objs, "Secret") if o["metadata"]["name"].endswith("-database")]
expect(len(secrets) == 1 and secrets[0]["stringData"]["url"].startswith("postgres://hartslag:pw@"), f"database.url becomes a Secret: {secrets}")
ref = env(find(objs, "Deployment")[0]).get("HARTSLAG_DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef")
expect(secrets and ref == {"name": secrets[0]["metadata"]["name"], "key": "url"}, f"the URL is read from that Secret, never inlined: {ref}")
objs, _ = render({"database": {"existingSecret": "events-app", "existingSecretKey": "uri"}})
expect(not [o for o in find(objs, "Secret") if o["metadata"]["name"].endswith("-database")], "no Secret of the chart's with an existing one")
ref = env(find(objs, "Deployment")[0])["HARTSLAG_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
expect(ref == {"name": "events-app", "key": "uri"}, f"an existing Secret (CloudNativePG's app Secret) under its key: {ref}")
e = env(find(objs, "Deployment")[0])
expect(e.get("HARTSLAG_INSTALLATION", {}).get("value") == "ops/hs-hartslag", f"the installation the database records is <namespace>/<fullname>, as the operator's Lease: {e.get('HARTSLAG_INSTALLATION')}")
objs, _ = render({"database": {"existingSecret": "events-app", "installation": "ops/hartslag"}})
e = env(find(objs, "Deployment")[0])
expect(e.get("HARTSLAG_INSTALLATION", {}).get("value") == "ops/hartslag", f"database.installation names it (a renamed release): {e.get('HARTSLAG_INSTALLATION')}")
expect("HARTSLAG_INSTALLATION" not in env(find(render({})[0], "Deployment")[0]), "no installation name without a database")
objs, _ = render({"database": {"existingSecret": "events-app"}, "networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.1"], "databaseTo": [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "events"}}}]}})
egress = find(objs, "NetworkPolicy")[0]["spec"]["egress"]
db_rules = [r for r in egress if rule_ports(r) == [(5432, "TCP")]]
expect(len(db_rules) == 1 and db_rules[0]["to"] == [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "events"}}}], f"egress to the database: {egress}")

# replicas: sled is one pod on its volume, replaced by Recreate; with a database there is no
# volume, rollouts are rolling, and several replicas get a PodDisruptionBudget
def shape(values):
    objs, _ = render(values)
    deploy = find(objs, "Deployment")[0]
    volume = [v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"][0]
    return deploy["spec"], find(objs, "PersistentVolumeClaim"), find(objs, "PodDisruptionBudget"), volume


spec, pvcs, pdbs, volume = shape({})
expect(spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}, f"sled: Recreate {spec['strategy']}")
expect(len(pvcs) == 1 and volume.get("persistentVolumeClaim", {}).get("claimName") == pvcs[0]["metadata"]["name"], f"sled: the data on a PVC {volume}")
expect(not pdbs, "sled: no PodDisruptionBudget for one replica")
for values in [{"replicaCount": 2, "database": {"url": "postgres://hartslag:pw@db:5432/events"}},
               {"replicaCount": 3, "database": {"existingSecret": "events-app", "existingSecretKey": "uri"}}]:
    spec, pvcs, pdbs, volume = shape(values)
    expect(spec["replicas"] == values["replicaCount"], f"replicas {spec['replicas']}")
    expect(spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, f"a database: RollingUpdate {spec['strategy']}")
    expect(not pvcs and volume == {"name": "data", "emptyDir": {}}, f"a database: no PVC {pvcs} {volume}")
    expect(len(pdbs) == 1 and pdbs[0]["apiVersion"] == "policy/v1" and pdbs[0]["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}, f"several replicas: a PodDisruptionBudget {pdbs}")
# the drain after SIGTERM: only where another replica takes the requests, unless set
delay = lambda values: env(find(render(values)[0], "Deployment")[0])["HARTSLAG_SHUTDOWN_DELAY"]["value"]
expect(delay({}) == "0s", f"sled (Recreate): no drain {delay({})}")
expect(delay({"database": {"existingSecret": "events-app"}}) == "5s", "a database (rolling): a 5 s drain")
expect(delay({"shutdownDelay": "8s"}) == "8s", "shutdownDelay as given")
grace = lambda values: find(render(values)[0], "Deployment")[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
expect([grace({}), grace({"database": {"existingSecret": "events-app"}}), grace({"shutdownDelay": "10s"})] == [30, 35, 40],
       "the pod's termination grace: 30 s for the stop itself, plus the drain")
for bad in ["11s", "5", "1m"]:
    try:
        render({"shutdownDelay": bad})
        expect(False, f"shutdownDelay {bad} rendered")
    except helm.HelmError:
        pass
spec, pvcs, pdbs, volume = shape({"database": {"existingSecret": "events-app"}})
expect(spec["strategy"]["type"] == "RollingUpdate" and not pvcs and not pdbs, f"a database, one replica: rolling, no PVC, no PDB {spec['strategy']} {pdbs}")
try:
    render({"replicaCount": 2})
    expect(False, "two replicas without a database rendered")
except helm.HelmError as e:
    said = str(e)
    expect(all(p in said for p in ("/replicaCount", "/database/url", "/database/existingSecret")), f"the refusal names replicaCount and the database values: {said}")

# examples/kubernetes/cloudnativepg: a CloudNativePG Cluster (its CRDs are not installed
# here: it must parse, and name what the values point at) and the chart values for it
example = ROOT / "examples" / "kubernetes" / "cloudnativepg"
cluster = yaml.safe_load((example / "cluster.yaml").read_text())
expect(cluster["apiVersion"] == "postgresql.cnpg.io/v1" and cluster["kind"] == "Cluster", f"a CloudNativePG Cluster: {cluster.get('kind')}")
name = cluster["metadata"]["name"]
expect(cluster["spec"]["instances"] >= 2, "the example Cluster has a standby to fail over to")
example_values = yaml.safe_load((example / "values.yaml").read_text())
expect(example_values["database"] == {"existingSecret": f"{name}-app", "existingSecretKey": "uri", "caSecret": f"{name}-ca", "caSecretKey": "ca.crt"},
       f"the values point at the Cluster's -app Secret (uri) and -ca Secret: {example_values['database']}")
objs, _ = render(example_values)
deploy = find(objs, "Deployment")[0]
pod = deploy["spec"]["template"]["spec"]
e = env(deploy)
expect(deploy["spec"]["replicas"] == example_values["replicaCount"] > 1, "the example runs several replicas")
expect(e["HARTSLAG_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": f"{name}-app", "key": "uri"}, f"the URL from the -app Secret: {e['HARTSLAG_DATABASE_URL']}")
ca = [v for v in pod["volumes"] if v["name"] == "database-ca"]
mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
expect(ca == [{"name": "database-ca", "secret": {"secretName": f"{name}-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}], f"the CA Secret mounted: {ca}")
expect(e["HARTSLAG_DATABASE_CA_FILE"]["value"] == mounts.get("database-ca", "?") + "/ca.crt", f"the CA file is the mounted one: {e.get('HARTSLAG_DATABASE_CA_FILE')} {mounts}")
expect(find(objs, "PodDisruptionBudget") and not find(objs, "PersistentVolumeClaim"), "the example: a PDB, no PVC")
objs, _ = render({"database": {"caSecret": "db-ca"}})
expect("HARTSLAG_DATABASE_CA_FILE" not in env(find(objs, "Deployment")[0]), "no CA without a database")

# the configuration guide's table of chart values names every value
guide = (ROOT / "docs" / "configuration.md").read_text()
defaults = yaml.safe_load((CHART / "values.yaml").read_text())


def leaves(d, prefix=""):
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in ("resources", "podSecurityContext"):
            yield from leaves(v, path + ".")
        else:
            yield path


for path in leaves(defaults):
    expect(f"| `{path}` |" in guide, f"docs/configuration.md's chart value table lacks `{path}`")

# values Kubernetes and Helm take are accepted: an umbrella chart's `global`, any quantity
for good in [{"global": {"imageRegistry": "registry.example"}}, {"persistence": {"size": "10G"}},
             {"persistence": {"size": "1.5Gi"}}, {"imagePullSecrets": [{"name": "regcred"}]},
             {"webhooks": {"allowedCIDRs": ["fd00::/8", "10.0.0.0/8", "192.0.2.7", "::ffff:10.0.0.0/104"]}},
             {"serviceMonitor": {"enabled": True, "interval": "1m30s"}}]:
    try:
        with helm.Chart.load(str(CHART)) as chart:
            chart.validate_schema(good)
    except helm.HelmError as e:
        expect(False, f"schema refused good values {good}: {e}")

# bad values fail at install
for bad, what in [
    ({"logFormat": "xml"}, "logFormat"),
    ({"scope": {"clusterWide": False, "namespaces": []}}, "namespaced scope without namespaces"),
    ({"statusRate": 0}, "statusRate"),
    ({"maxConcurrentReadsTotal": 0}, "maxConcurrentReadsTotal"),
    ({"smtp": {"url": "mail.example.com"}}, "smtp.url scheme"),
    ({"ingress": {"enabled": True}}, "ingress without host"),
    ({"replicas": 3}, "unknown key"),
    ({"prometheusRule": {"severity": "page"}}, "prometheusRule.severity"),
    ({"prometheusRule": {"downFor": "one minute"}}, "prometheusRule.downFor"),

    ({"networkPolicy": {"enabled": True}}, "NetworkPolicy without the API server's address"),
    ({"networkPolicy": {"webhookBlocks": [{"cidr": "anywhere"}]}}, "webhook block that is no CIDR"),
    ({"networkPolicy": {"webhookPorts": [0]}}, "port 0"),
    ({"webhooks": {"allowedCIDRs": ["intranet"]}}, "allowed webhook range that is no CIDR"),
    ({"trustedProxies": "10.0.0.0/8"}, "trusted proxies not a list"),
    ({"database": {"url": "mysql://db/events"}}, "a database URL that is not PostgreSQL's"),
    ({"replicaCount": 2}, "more than one replica without a database"),
    ({"replicaCount": 2, "database": {"url": ""}}, "more than one replica with an empty database URL"),
    ({"replicaCount": 0}, "no replica"),
    ({"imagePullSecrets": ["regcred"]}, "a pull secret that is no {name: ...}"),
    ({"podAnnotations": {"a": 1}}, "an annotation that is no string"),
    ({"ingress": {"annotations": {"a": True}}}, "an ingress annotation that is no string"),
    ({"serviceMonitor": {"interval": "thirty"}}, "a scrape interval that is no duration"),
    ({"webhooks": {"allowedCIDRs": [":"]}}, "a range that is a colon"),
    ({"webhooks": {"allowedCIDRs": ["999.1.1.1"]}}, "an address out of range"),
    ({"webhooks": {"allowedCIDRs": ["10.0.0.0/99"]}}, "a prefix out of range"),
    ({"persistence": {"size": "ten"}}, "a size that is no quantity"),
]:
    try:
        with helm.Chart.load(str(CHART)) as chart:
            chart.validate_schema(bad)
        expect(False, f"schema accepted bad values: {what}")
    except helm.HelmError:
        pass

if failures:
    sys.exit(1)
print("chart: all expectations held")
