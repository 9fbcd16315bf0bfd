//! Reading `hartslag.dev/v1alpha1` manifests from a directory of YAML files.
//!
//! The files have the shape of the custom resources, so the same YAML works with kubectl;
//! errors name the file and the object so a typo is found without guessing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::channel::{AlertChannelSpec, AlertPolicy, Secrets};
use crate::core::duration::SpecDuration;
use crate::core::spec::{AlertTargets, ApplicationSpec, HeartbeatSpec};

/// The only API version accepted.
pub const API_VERSION: &str = "hartslag.dev/v1alpha1";

/// Why the manifests could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifests directory itself could not be read.
    #[error("cannot read the manifests directory {path} (--manifests): {source}")]
    Directory {
        /// Path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not valid YAML or a document has the wrong shape.
    #[error("{path}: {message}")]
    Invalid {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Two objects of one kind share a name.
    #[error("{kind} {name:?} is defined twice ({first} and {second}){why}")]
    Duplicate {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Where the first is: its file and namespace.
        first: String,
        /// Where the second is.
        second: String,
        /// Why the two collide, when their namespaces differ.
        why: &'static str,
    },
}

/// The fields of Kubernetes' `ObjectMeta` besides `name` and `namespace`: accepted and
/// ignored, so a manifest saved with `kubectl get -o yaml` loads as it is.
const IGNORED_METADATA: &[&str] = &[
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "generateName",
    "selfLink",
];

/// The top-level fields of a custom resource besides those read; `status` is what a cluster
/// wrote, ignored like the metadata it adds.
const IGNORED_TOP_LEVEL: &[&str] = &["status"];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    /// Every other key: a misspelt `namespce` would otherwise put the object in `default`
    /// without a word.
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDoc {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<RawMeta>,
    #[serde(default)]
    spec: Option<serde_json::Value>,
    /// Every other key: a misspelt `specs` would otherwise leave the object on defaults.
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
}

/// Refuses the keys of `other` that are not in `ignored`, naming them as `at.key`.
fn no_unknown_keys(
    other: &std::collections::BTreeMap<String, serde::de::IgnoredAny>,
    ignored: &[&str],
    at: &str,
    known: &str,
) -> Result<(), String> {
    let unknown: Vec<String> = other
        .keys()
        .filter(|k| !ignored.contains(&k.as_str()))
        .map(|k| format!("{at}{k}"))
        .collect();
    match unknown.as_slice() {
        [] => Ok(()),
        [one] => Err(format!("unknown field {one} (misspelt? {known})")),
        many => Err(format!(
            "unknown fields {} (misspelt? {known})",
            many.join(", ")
        )),
    }
}

/// One object from a manifest file.
#[derive(Debug, Clone)]
pub struct Object<S> {
    /// Namespace (`default` when not given).
    pub namespace: String,
    /// Resource name (`metadata.name`).
    pub name: String,
    /// The desired state, validated.
    pub spec: S,
    /// The file it came from, for messages.
    pub source: PathBuf,
}

/// Everything defined in a manifests directory.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// Applications, in the order the files list them.
    pub applications: Vec<Object<ApplicationSpec>>,
    /// Heartbeats, in the order the files list them.
    pub heartbeats: Vec<Object<HeartbeatSpec>>,
    /// `AlertChannel` documents (with `...File` fields for secrets).
    pub channels: Vec<Object<AlertChannelSpec>>,
    /// `ClusterAlertChannel` documents: usable from every namespace.
    pub cluster_channels: Vec<Object<AlertChannelSpec>>,
    /// Manifest files read: none at all (an unmounted volume) is told apart from files
    /// that define nothing.
    pub files: usize,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn invalid(path: &Path, message: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Most YAML documents one manifests file may hold.
const MAX_DOCUMENTS: usize = 1_000_000;

/// Parses the YAML documents of one file (used for files and tests alike).
pub fn parse_documents(
    path: &Path,
    text: &str,
    min_interval: SpecDuration,
    out: &mut Manifests,
) -> Result<(), ManifestError> {
    // The parser's default budget is for input from strangers: at most 1 024 documents
    // and 250 000 nodes. A manifests file is the operator's own, and a generated one with
    // thousands of Heartbeats is ordinary; its size bounds the memory anyway. Every other
    // limit (depth, aliases, anchors) stays as it is.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: MAX_DOCUMENTS,
            max_nodes: MAX_DOCUMENTS * 64,
            max_events: MAX_DOCUMENTS * 128,
        },
    };
    let docs: Vec<Option<RawDoc>> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| invalid(path, format!("not valid YAML: {e}")))?;
    for (i, doc) in docs.into_iter().enumerate() {
        let Some(doc) = doc else { continue };
        let at = |m: String| invalid(path, format!("document {}: {m}", i + 1));
        add_document(path, doc, min_interval, out).map_err(at)?;
    }
    Ok(())
}

/// Checks one document and adds its object to `out`; `Err` says what is wrong with it.
fn add_document(
    path: &Path,
    doc: RawDoc,
    min_interval: SpecDuration,
    out: &mut Manifests,
) -> Result<(), String> {
    let api = doc.api_version.unwrap_or_default();
    if api != API_VERSION {
        return Err(format!("apiVersion must be {API_VERSION}, found {api:?}"));
    }
    no_unknown_keys(
        &doc.other,
        IGNORED_TOP_LEVEL,
        "",
        "an object has apiVersion, kind, metadata and spec",
    )?;
    let meta = doc.metadata.ok_or("metadata.name is required")?;
    no_unknown_keys(
        &meta.other,
        IGNORED_METADATA,
        "metadata.",
        "metadata has name and namespace, and Kubernetes' own fields such as labels",
    )?;
    let name = meta.name.unwrap_or_default();
    if !valid_name(&name) {
        return Err(format!(
            "metadata.name {name:?} must be a DNS name (lower-case letters, digits, '-' and '.')"
        ));
    }
    let namespace = meta.namespace.unwrap_or_else(|| "default".into());
    let spec = match doc.spec {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Some(spec) => spec,
    };
    let source = path.to_path_buf();
    match doc.kind.as_deref() {
        Some("Application") => {
            let spec: ApplicationSpec = strict_spec("Application", &name, spec)?;
            spec.validate()
                .map_err(|e| format!("Application {name}: {e}"))?;
            kubernetes_only(spec.alerts.as_ref())
                .map_err(|e| format!("Application {name}: {e}"))?;
            out.applications.push(Object {
                namespace,
                name,
                spec,
                source,
            });
        }
        Some("Heartbeat") => {
            let spec: HeartbeatSpec = strict_spec("Heartbeat", &name, spec)?;
            spec.validate_with_min_interval(min_interval)
                .map_err(|e| format!("Heartbeat {name}: {e}"))?;
            if spec.cron_job_ref.is_some() {
                return Err(format!(
                    "Heartbeat {name}: spec.cronJobRef needs the operator: standalone mode cannot watch CronJobs (give the job a ping URL and a schedule instead)"
                ));
            }
            kubernetes_only(spec.alerts.as_ref()).map_err(|e| format!("Heartbeat {name}: {e}"))?;
            out.heartbeats.push(Object {
                namespace,
                name,
                spec,
                source,
            });
        }
        Some(kind @ ("AlertChannel" | "ClusterAlertChannel")) => {
            let spec = channel_spec(kind, &name, spec)?;
            let list = if kind == "AlertChannel" {
                &mut out.channels
            } else {
                &mut out.cluster_channels
            };
            list.push(Object {
                namespace,
                name,
                spec,
                source,
            });
        }
        other => {
            return Err(format!(
                "kind must be Application, Heartbeat, AlertChannel or ClusterAlertChannel, found {:?}",
                other.unwrap_or("")
            ));
        }
    }
    Ok(())
}

/// `spec` read as a `T`, refusing fields a `T` does not have: a misspelt one
/// (`intervall`, `alerts.emails`) was ignored, and its default taken without a word. (The
/// API server refuses or prunes them in the operator.)
fn strict_spec<T: serde::de::DeserializeOwned>(
    kind: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<T, String> {
    let mut unknown: Vec<String> = Vec::new();
    // Fields read through `#[serde(flatten)]` (the alert policy beside the targets) swallow
    // what they do not know without a trace: those objects are checked against their
    // schema, which lists the flattened fields too.
    match kind {
        "Application" | "Heartbeat" => {
            if let Some(alerts) = spec.get("alerts") {
                unknown.extend(outside_schema::<AlertTargets>(alerts, "spec.alerts"));
            }
        }
        _ => unknown.extend(outside_schema::<AlertChannelSpec>(&spec, "spec")),
    }
    // The path of a field whose value does not fit (`spec.alerts.notifyLate: invalid type`)
    // comes from serde_path_to_error; serde alone names the problem but not the field.
    let alerts = spec.get("alerts").cloned();
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(format!("spec.{path}"));
    let ignoring = serde_ignored::Deserializer::new(spec, &mut note);
    let value: T = serde_path_to_error::deserialize(ignoring).map_err(|e| {
        let at = e.path().to_string();
        let mut field = if at == "." {
            "spec".into()
        } else {
            format!("spec.{at}")
        };
        // A flattened struct is read from a buffer, which hides the path inside it: the
        // alert policy beside the targets is read again on its own to find the field.
        if field == "spec.alerts"
            && let Some(Err(inner)) = alerts.map(serde_path_to_error::deserialize::<_, AlertPolicy>)
        {
            field = format!("spec.alerts.{}", inner.path());
        }
        format!("{kind} {name}: {field} is invalid: {}", e.inner())
    })?;
    unknown.sort();
    unknown.dedup();
    match unknown.as_slice() {
        [] => Ok(value),
        [one] => Err(format!(
            "{kind} {name}: unknown field {one} (misspelt? `hartslag crd` prints every field)"
        )),
        many => Err(format!(
            "{kind} {name}: unknown fields {} (misspelt? `hartslag crd` prints every field)",
            many.join(", ")
        )),
    }
}

/// The keys of object `value` that `T`'s JSON schema does not list, as `at.key`.
fn outside_schema<T: schemars::JsonSchema>(value: &serde_json::Value, at: &str) -> Vec<String> {
    let schema = schemars::schema_for!(T);
    let known = schema
        .get("properties")
        .and_then(serde_json::Value::as_object);
    match (value.as_object(), known) {
        (Some(object), Some(known)) => object
            .keys()
            .filter(|k| !known.contains_key(k.as_str()))
            .map(|k| format!("{at}.{k}"))
            .collect(),
        _ => Vec::new(),
    }
}

/// A channel document's spec, checked as standalone mode reads it (secrets from files,
/// templates rendered once with sample data).
fn channel_spec(
    kind: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<AlertChannelSpec, String> {
    let spec: AlertChannelSpec = strict_spec(kind, name, spec)?;
    spec.validate(Secrets::Files)
        .map_err(|e| format!("{kind} {name}: {e}"))?;
    if let Some(t) = spec.webhook.as_ref().and_then(|w| w.template.as_deref()) {
        crate::notify::template::BodyTemplate::new(t)
            .map_err(|e| format!("{kind} {name}: spec.webhook.{e}"))?;
    }
    Ok(spec)
}

/// Every channel a Heartbeat or Application names must be defined: an `AlertChannel` in
/// its namespace or a `ClusterAlertChannel` (the operator's `ChannelNotFound`).
fn check_channel_names(m: &Manifests) -> Result<(), ManifestError> {
    let named = m
        .heartbeats
        .iter()
        .map(|o| {
            (
                "Heartbeat",
                o.namespace.as_str(),
                o.name.as_str(),
                o.spec.alerts.as_ref(),
                &o.source,
            )
        })
        .chain(m.applications.iter().map(|o| {
            (
                "Application",
                o.namespace.as_str(),
                o.name.as_str(),
                o.spec.alerts.as_ref(),
                &o.source,
            )
        }));
    for (kind, ns, name, alerts, source) in named {
        for channel in alerts
            .map(|a: &AlertTargets| a.channels.as_slice())
            .unwrap_or_default()
        {
            let found = m
                .channels
                .iter()
                .any(|c| c.namespace == ns && &c.name == channel)
                || m.cluster_channels.iter().any(|c| &c.name == channel);
            if !found {
                return Err(invalid(
                    source,
                    format!(
                        "{kind} {name}: spec.alerts.channels names {channel:?}, which no AlertChannel in namespace {ns:?} and no ClusterAlertChannel defines (ChannelNotFound)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `first` and `second` share a name: the error naming where both are.
fn duplicate<S>(kind: &str, first: &Object<S>, second: &Object<S>) -> ManifestError {
    let cluster = kind == "ClusterAlertChannel";
    let place = |o: &Object<S>| match cluster {
        true => o.source.display().to_string(),
        false => format!("{} in namespace {}", o.source.display(), o.namespace),
    };
    ManifestError::Duplicate {
        kind: kind.into(),
        name: second.name.clone(),
        first: place(first),
        second: place(second),
        why: if cluster || first.namespace == second.namespace {
            ""
        } else {
            ": in standalone mode a name is unique across namespaces, since token files and ping URL files are named after it"
        },
    }
}

/// Refuses two objects of one kind with one name, whatever their namespaces: their token
/// files (`tokens/<kind>-<name>.token`) would be one file.
fn check_duplicates<S>(kind: &str, objects: &[Object<S>]) -> Result<(), ManifestError> {
    // By name in a map: a directory of many thousand manifests is checked in one pass.
    let mut seen: std::collections::HashMap<&str, &Object<S>> = Default::default();
    for a in objects {
        if let Some(b) = seen.insert(a.name.as_str(), a) {
            return Err(duplicate(kind, b, a));
        }
    }
    Ok(())
}

/// Loads every `*.yaml` / `*.yml` file in `dir` (not recursive), in name order.
pub fn load_dir(dir: &Path, min_interval: SpecDuration) -> Result<Manifests, ManifestError> {
    let read_err = |source| ManifestError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    // Every `*.yaml` entry but a directory is read, so one that cannot be (a symlink whose
    // target is gone, no permission) fails the start: skipped, its objects would be taken
    // for removed, and their tokens revoked and their history deleted.
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if yaml && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    let mut out = Manifests {
        files: files.len(),
        ..Manifests::default()
    };
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        parse_documents(&path, &text, min_interval, &mut out)?;
    }
    check_duplicates("Application", &out.applications)?;
    check_duplicates("Heartbeat", &out.heartbeats)?;
    check_duplicates("ClusterAlertChannel", &out.cluster_channels)?;
    for (i, a) in out.channels.iter().enumerate() {
        if let Some(b) = out.channels[..i]
            .iter()
            .find(|b| b.name == a.name && b.namespace == a.namespace)
        {
            return Err(duplicate("AlertChannel", b, a));
        }
    }
    check_channel_names(&out)?;
    Ok(out)
}

/// Refuses what only the operator can resolve: a manifest file has no Secrets to read.
fn kubernetes_only(alerts: Option<&crate::core::spec::AlertTargets>) -> Result<(), String> {
    match alerts.and_then(|a| a.webhook_secret_ref.as_ref()) {
        Some(_) => Err(
            "spec.alerts.webhookSecretRef works only in Kubernetes; in a manifest file use spec.alerts.webhook (keep the file readable only to the server)".into(),
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::spec::MIN_INTERVAL;

    fn parse(text: &str) -> Result<Manifests, ManifestError> {
        let mut m = Manifests::default();
        parse_documents(Path::new("t.yaml"), text, MIN_INTERVAL, &mut m)?;
        Ok(m)
    }

    #[test]
    fn reads_multi_document_files() {
        let m = parse(
            "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: shop\nspec:\n  timeZone: Europe/Amsterdam\n---\napiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: backup\nspec:\n  interval: 1h30m\n  applicationRef:\n    name: shop\n",
        )
        .unwrap();
        assert_eq!(
            m.applications[0].spec.time_zone.as_deref(),
            Some("Europe/Amsterdam")
        );
        assert_eq!(m.heartbeats[0].spec.interval().as_secs(), 5400);
        assert_eq!(m.heartbeats[0].namespace, "default");
    }

    #[test]
    fn a_file_of_thousands_of_heartbeats_is_read_whole() {
        let text: String = (0..5_000)
            .map(|i| format!("---\napiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: hb-{i}\nspec:\n  interval: 1h\n  alerts:\n    webhook: \"http://hooks.example/{i}\"\n"))
            .collect();
        let m = parse(&text).unwrap();
        assert_eq!(m.heartbeats.len(), 5_000);
        assert_eq!(m.heartbeats[4_999].name, "hb-4999");
    }

    #[test]
    fn a_misspelt_field_is_refused_naming_it() {
        let doc = |kind: &str, spec: &str| {
            format!(
                "apiVersion: hartslag.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: x\nspec:\n{spec}"
            )
        };
        let load = |text: String| {
            let mut out = Manifests::default();
            parse_documents(Path::new("m.yaml"), &text, MIN_INTERVAL, &mut out).map(|()| out)
        };
        let e = load(doc("Heartbeat", "  intervall: 5m\n  gracee: 1m\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Heartbeat x: unknown fields spec.gracee, spec.intervall"),
            "{e}"
        );
        let e = load(doc(
            "Heartbeat",
            "  interval: 5m\n  alerts:\n    emails: [a@b.c]\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field spec.alerts.emails"), "{e}");
        let e = load(doc("Application", "  retension: 30d\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Application x: unknown field spec.retension"),
            "{e}"
        );
        // A value of the wrong type names its field, however deep.
        for (spec, field) in [
            (
                "  interval: 5m\n  alerts:\n    notifyLate: sometimes\n",
                "spec.alerts.notifyLate",
            ),
            ("  paused: \"no\"\n", "spec.paused"),
            ("  interval: [5m]\n", "spec.interval"),
            (
                "  maintenance:\n  - schedule: 0 2 * * *\n    duration: soon\n",
                "spec.maintenance[0].duration",
            ),
        ] {
            let e = load(doc("Heartbeat", spec)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("Heartbeat x: {field} is invalid")),
                "{spec}: {e}"
            );
        }
        // The examples' fields all pass.
        let ok = load(doc(
            "Heartbeat",
            "  interval: 5m\n  grace: 1m\n  displayName: X\n  alerts:\n    email: [a@b.c]\n",
        ));
        assert_eq!(ok.unwrap().heartbeats.len(), 1);
    }

    #[test]
    fn a_manifest_that_cannot_be_read_fails_the_load_and_is_not_taken_for_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere.txt");
        std::fs::write(
            &target,
            "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: x\nspec:\n  interval: 1h\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("linked.yaml")).unwrap();
        std::fs::create_dir(dir.path().join("folder.yaml")).unwrap();
        assert_eq!(
            load_dir(dir.path(), MIN_INTERVAL).unwrap().heartbeats.len(),
            1
        );
        std::fs::remove_file(&target).unwrap();
        let e = load_dir(dir.path(), MIN_INTERVAL).unwrap_err().to_string();
        assert!(e.contains("linked.yaml"), "{e}");
    }

    #[test]
    fn a_name_defined_twice_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let hb = |name: &str| {
            format!(
                "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: {name}\nspec:\n  interval: 1h\n"
            )
        };
        std::fs::write(
            dir.path().join("a.yaml"),
            hb("backup") + "---\n" + &hb("sync"),
        )
        .unwrap();
        std::fs::write(dir.path().join("b.yaml"), hb("report")).unwrap();
        assert_eq!(
            load_dir(dir.path(), MIN_INTERVAL).unwrap().heartbeats.len(),
            3
        );
        std::fs::write(dir.path().join("c.yaml"), hb("sync")).unwrap();
        let e = load_dir(dir.path(), MIN_INTERVAL).unwrap_err().to_string();
        assert!(
            e.starts_with("Heartbeat \"sync\" is defined twice")
                && e.contains("a.yaml in namespace default")
                && e.contains("c.yaml in namespace default")
                && !e.contains("unique across namespaces"),
            "{e}"
        );
        // In two namespaces the names still collide, and the message says why.
        std::fs::write(
            dir.path().join("c.yaml"),
            hb("sync").replace("name: sync", "name: sync\n  namespace: team-b"),
        )
        .unwrap();
        let e = load_dir(dir.path(), MIN_INTERVAL).unwrap_err().to_string();
        assert!(
            e.contains("a.yaml in namespace default and ")
                && e.contains("c.yaml in namespace team-b")
                && e.contains("a name is unique across namespaces, since token files"),
            "{e}"
        );
    }

    #[test]
    fn a_misspelt_key_outside_spec_is_refused_and_kubernetes_own_fields_are_not() {
        let e = parse("apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: a\n  namespce: prod\nspec:\n  interval: 5m\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("document 1: unknown field metadata.namespce (misspelt?"),
            "{e}"
        );
        let e = parse("apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: a\nspecs:\n  interval: 5m\n  paused: true\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "unknown field specs (misspelt? an object has apiVersion, kind, metadata and spec)"
            ),
            "{e}"
        );
        let e = parse("apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: a\nspecs: {}\nextra: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown fields extra, specs"), "{e}");
        // What `kubectl get -o yaml` writes loads as it is.
        let saved = "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: a\n  namespace: prod\n  labels: {team: x}\n  annotations: {a: b}\n  uid: 0a1b\n  resourceVersion: \"42\"\n  generation: 3\n  creationTimestamp: \"2026-12-01T00:00:00Z\"\n  finalizers: [hartslag.dev/cleanup]\n  managedFields: [{manager: kubectl}]\nspec:\n  interval: 5m\nstatus:\n  state: Up\n";
        let m = parse(saved).unwrap();
        assert_eq!(m.heartbeats[0].namespace, "prod");
        assert_eq!(m.heartbeats[0].spec.interval().as_secs(), 300);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse("apiVersion: v1\nkind: Application\nmetadata:\n  name: x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("apiVersion must be hartslag.dev/v1alpha1"),
            "{e}"
        );
        let e =
            parse("apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: X_Y\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("DNS name"), "{e}");
        let e = parse("apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: a\nspec:\n  timeZone: Nowhere/City\n").unwrap_err().to_string();
        assert!(e.contains("timeZone"), "{e}");
        let e = parse("apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: a\nspec:\n  interval: soon\n").unwrap_err().to_string();
        assert!(e.contains("Heartbeat a: spec.interval is invalid"), "{e}");
        let e = parse("apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: a\nspec:\n  schedule: '0 25 * * *'\n").unwrap_err().to_string();
        assert!(
            e.contains("Heartbeat a: spec.schedule \"0 25 * * *\" is not a valid cron expression: hour field"),
            "{e}"
        );
        let e = parse("apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: a\nspec:\n  schedule: '@daily'\n  interval: 1h\n").unwrap_err().to_string();
        assert!(
            e.contains("spec.schedule and spec.interval are mutually exclusive"),
            "{e}"
        );
        let e = parse("apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: a\nspec:\n  cronJobRef:\n    name: nightly\n").unwrap_err().to_string();
        assert!(e.contains("spec.cronJobRef needs the operator"), "{e}");
        let e = parse("{{{").unwrap_err().to_string();
        assert!(e.contains("not valid YAML"), "{e}");
        let e = parse("apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: a\nspec:\n  alerts:\n    webhookSecretRef: {name: slack, key: url}\n").unwrap_err().to_string();
        assert!(
            e.contains("webhookSecretRef works only in Kubernetes"),
            "{e}"
        );
    }

    #[test]
    fn alert_channels_are_read_with_file_secrets_and_names_must_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let doc = |kind: &str, name: &str, spec: &str| {
            format!(
                "apiVersion: hartslag.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{spec}---\n"
            )
        };
        let channels = doc(
            "AlertChannel",
            "team-slack",
            "  slack:\n    webhookFile: /etc/hartslag/slack-url\n",
        ) + &doc(
            "ClusterAlertChannel",
            "alertmanager",
            "  alertmanager:\n    url: http://am:9093\n",
        );
        std::fs::write(dir.path().join("channels.yaml"), channels).unwrap();
        let hb = doc(
            "Heartbeat",
            "backup",
            "  alerts:\n    channels: [team-slack, alertmanager]\n",
        );
        std::fs::write(dir.path().join("hb.yaml"), &hb).unwrap();
        let m = load_dir(dir.path(), MIN_INTERVAL).unwrap();
        assert_eq!((m.channels.len(), m.cluster_channels.len()), (1, 1));
        assert_eq!(
            m.channels[0]
                .spec
                .slack
                .as_ref()
                .unwrap()
                .webhook_file
                .as_deref(),
            Some("/etc/hartslag/slack-url")
        );
        let missing = doc("Heartbeat", "backup", "  alerts:\n    channels: [pager]\n");
        std::fs::write(dir.path().join("hb.yaml"), missing).unwrap();
        let e = load_dir(dir.path(), MIN_INTERVAL).unwrap_err().to_string();
        assert!(
            e.contains("names \"pager\"") && e.contains("ChannelNotFound"),
            "{e}"
        );
        let e = parse(&doc(
            "AlertChannel",
            "x",
            "  slack:\n    webhookSecretRef: {name: s, key: url}\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "AlertChannel x: spec.slack: set webhookFile (Secret references are for Kubernetes)"
            ),
            "{e}"
        );
        let e = parse(&doc(
            "AlertChannel",
            "x",
            "  webhook:\n    url: https://x.io\n    template: '{{ nope }}'\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "AlertChannel x: spec.webhook.template: unknown variable nope; the variables are"
            ),
            "{e}"
        );
    }
}
