//! Test support: a mocked API server (kube's client over a `tower-test` mock service) and a
//! controller context over real core services in a temporary directory, so reconcilers and
//! the status writer are tested fast, without a cluster, request by request.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::caches::{Caches, ScopeCaches};
use super::context::Context;
use super::crd::{Application, Heartbeat};
use super::instances::{Claim, Instances, Scope};
use super::status::{StatusQueue, writer::Nudge};
use super::triggers::Triggers;
use crate::config::ServerConfig;
use crate::core::Services;
use crate::core::metrics::MetricRegistry;
use k8s_openapi::api::core::v1::Secret;

/// One request the mocked API server received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `POST`, `PATCH`, ...
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// `Content-Type`, if any.
    pub content_type: String,
    /// The body as JSON (`null` when empty or not JSON).
    pub body: Value,
}

/// Every request so far, in order.
pub type Log = Arc<Mutex<Vec<Seen>>>;

/// A client whose API server answers each request with `answer(request)`: a status code
/// and a JSON body. The log records every request.
pub fn mock_client(
    answer: impl Fn(&Seen) -> (u16, Value) + Send + Sync + 'static,
) -> (Client, Log) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let request = Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, reply) = answer(&request);
            seen.lock().unwrap().push(request);
            let response = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), log)
}

/// A Kubernetes `Status` error body.
pub fn status_error(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason})
}

/// Writers into a test context's caches.
pub struct CacheWriters {
    /// Heartbeats.
    pub heartbeats: Writer<Heartbeat>,
    /// Applications.
    pub applications: Writer<Application>,
    /// Secrets.
    pub secrets: Writer<Secret>,
}

fn ready<K>(writer: &mut Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

impl CacheWriters {
    /// Puts `hb` into the Heartbeat cache.
    pub fn heartbeat(&mut self, hb: &Heartbeat) {
        self.heartbeats
            .apply_watcher_event(&watcher::Event::Apply(hb.clone()));
    }
}

/// A context over fresh core services (in `dir`) and `client`, watching every namespace,
/// alone in the cluster; with writers into its caches and the status writer's inbox.
pub async fn context(
    dir: &std::path::Path,
    client: Client,
) -> (
    Arc<Context>,
    CacheWriters,
    tokio::sync::mpsc::UnboundedReceiver<Nudge>,
) {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    config.external_url = "http://hartslag.test".into();
    let core = Services::open(&config.services(), &mut MetricRegistry::default())
        .await
        .unwrap();
    let (hb_store, mut hb_writer): (Store<Heartbeat>, _) = reflector::store();
    let (app_store, mut app_writer): (Store<Application>, _) = reflector::store();
    let (secret_store, mut secret_writer): (Store<Secret>, _) = reflector::store();
    ready(&mut hb_writer);
    ready(&mut app_writer);
    ready(&mut secret_writer);
    let caches = Caches::new(vec![ScopeCaches {
        namespace: None,
        applications: app_store,
        heartbeats: hb_store,
        secrets: secret_store,
    }]);
    let (queue, inbox) = StatusQueue::new();
    let me = Claim {
        lease: "ops/hartslag".into(),
        holder: Some("test".into()),
        scope: Scope::Cluster,
        created: jiff::Timestamp::now(),
        renewed: Some(jiff::Timestamp::now()),
    };
    let (triggers, _) = Triggers::new(&[None]);
    let ctx = Arc::new(Context::new(
        core,
        config,
        client,
        caches,
        queue,
        Instances::new(me),
        triggers,
    ));
    let writers = CacheWriters {
        heartbeats: hb_writer,
        applications: app_writer,
        secrets: secret_writer,
    };
    (ctx, writers, inbox)
}

/// A Heartbeat as the API server would hand it out.
pub fn heartbeat(name: &str, spec: Value, finalizers: &[&str]) -> Heartbeat {
    serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "generation": 1, "resourceVersion": "10", "finalizers": finalizers,
        },
        "spec": spec,
    }))
    .unwrap()
}
