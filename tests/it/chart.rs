//! The Helm chart through Helm's own engine (PyPI `helm-python-sdk`): lint, render for the
//! main value combinations with assertions on the objects, schema rejections; then the
//! rendered chart applied to the real test control plane.

use std::process::Command;

use crate::helpers::kubectl;

fn script(args: &[&str]) -> std::process::Output {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chart/test_chart.py");
    let out = Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'helm_python'"),
        "helm-python-sdk is missing: pip install helm-python-sdk (tests/run-all.sh installs it)"
    );
    out
}

#[test]
fn chart_lints_renders_and_rejects_bad_values() {
    let out = script(&[]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
fn rendered_chart_is_accepted_by_the_api_server() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run tests/run-all.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    let out = script(&["--render-to", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = env!("CARGO_MANIFEST_DIR");
    // --validate=false: servers older than 1.25 do not know x-kubernetes-validations (they
    // drop the rules), and kubectl would check the CRD against their schema.
    kubectl(&[
        "apply",
        "--validate=false",
        "-f",
        &format!("{root}/charts/hartslag/crds/hartslag.dev.yaml"),
    ]);
    let ns = format!(
        "chart-{}",
        &hartslag::core::token::random_id().unwrap()[..8]
    );
    kubectl(&["create", "namespace", &ns]);
    // Rendered as release namespace `ops`; objects that name it explicitly go to ours.
    let rendered = std::fs::read_to_string(&file)
        .unwrap()
        .replace("namespace: ops\n", &format!("namespace: {ns}\n"));
    std::fs::write(&file, rendered).unwrap();
    let applied = kubectl(&["apply", "-n", &ns, "-f", file.to_str().unwrap()]);
    for object in [
        "serviceaccount/hs-hartslag",
        "service/hs-hartslag",
        "deployment.apps/hs-hartslag",
        "persistentvolumeclaim/hs-hartslag-data",
        "networkpolicy.networking.k8s.io/hs-hartslag",
        "clusterrole.rbac.authorization.k8s.io/hs-hartslag",
        "clusterrolebinding.rbac.authorization.k8s.io/hs-hartslag",
        "role.rbac.authorization.k8s.io/hs-hartslag-admin",
        "rolebinding.rbac.authorization.k8s.io/hs-hartslag-admin",
        "lease.coordination.k8s.io/hs-hartslag",
        "clusterrole.rbac.authorization.k8s.io/hs-hartslag-leases",
        "clusterrole.rbac.authorization.k8s.io/hs-hartslag-view",
        "clusterrole.rbac.authorization.k8s.io/hs-hartslag-edit",
    ] {
        assert!(applied.contains(object), "{object} not created:\n{applied}");
    }
    let deploy = kubectl(&[
        "get",
        "deployment",
        "hs-hartslag",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem}",
    ]);
    assert_eq!(deploy, "true");
    let _ = Command::new("kubectl")
        .args(["delete", "namespace", &ns, "--wait=false"])
        .output();
    let _ = Command::new("kubectl")
        .args([
            "delete",
            "clusterrole,clusterrolebinding",
            "hs-hartslag",
            "hs-hartslag-leases",
        ])
        .output();
    let _ = Command::new("kubectl")
        .args([
            "delete",
            "clusterrole",
            "hs-hartslag-view",
            "hs-hartslag-edit",
        ])
        .output();
}

/// The chart's PrometheusRule, as Prometheus loads it: `promtool check rules` on the
/// rendered rules and `promtool test rules` on the unit tests in `tests/chart/rules`.
#[test]
fn chart_rules_pass_promtool_check_and_unit_tests() {
    let promtool = which("promtool");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    let out = script(&["--rules-to", rules.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tests = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/chart/rules/heartbeats_test.yml"
    );
    std::fs::copy(tests, dir.path().join("heartbeats_test.yml")).unwrap();
    for args in [
        vec!["check", "rules", rules.to_str().unwrap()],
        vec!["test", "rules", "heartbeats_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A tool from Debian's packages, with a message saying where it comes from when missing.
fn which(tool: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = format!("{dir}/{tool}");
        if std::path::Path::new(&path).exists() {
            return path;
        }
    }
    panic!("{tool} is missing: apt-get install prometheus (tests/run-all.sh installs it)");
}
