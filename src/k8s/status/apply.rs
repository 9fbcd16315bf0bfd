//! Sending a status: server-side apply with field manager [`MANAGER`], then removal of
//! what other managers left behind.
//!
//! With server-side apply a field we stop sending disappears, as long as we are its only
//! manager. Statuses written by earlier versions (JSON merge patches) are owned by another
//! manager; what they hold and we no longer send is removed once with a JSON patch of
//! `remove` operations, which takes no ownership, so later applies keep working alone.

use kube::api::{Api, Patch, PatchParams};
use kube::core::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::MANAGER;

/// The JSON patch operations that remove from `live` (a status as JSON) every top-level
/// field and every condition type that `desired` lacks. Each removal is preceded by a
/// `test` of the value, so a concurrent change makes the patch fail instead of removing
/// something else.
pub fn residue(desired: &Value, live: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    let (Some(want), Some(have)) = (desired.as_object(), live.as_object()) else {
        return ops;
    };
    let mut keys: Vec<&String> = have.keys().collect();
    keys.sort();
    for k in keys {
        if k == "conditions" {
            continue;
        }
        if !want.contains_key(k) {
            let v = &have[k];
            let path = format!("/status/{}", k.replace('~', "~0").replace('/', "~1"));
            ops.push(json!({"op": "test", "path": path, "value": v}));
            ops.push(json!({"op": "remove", "path": path}));
        }
    }
    let wanted_types: Vec<&str> = want
        .get("conditions")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c.get("type")?.as_str()).collect())
        .unwrap_or_default();
    if let Some(cs) = have.get("conditions").and_then(Value::as_array) {
        // Highest index first, so earlier removals do not shift later paths.
        for (i, c) in cs.iter().enumerate().rev() {
            let ty = c.get("type").and_then(Value::as_str).unwrap_or_default();
            if !wanted_types.contains(&ty) {
                let path = format!("/status/conditions/{i}");
                ops.push(json!({"op": "test", "path": path, "value": c}));
                ops.push(json!({"op": "remove", "path": path}));
            }
        }
    }
    ops
}

/// Applies `status` to object `name`; returns whether leftovers had to be removed too.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let desired = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
        "status": desired,
    });
    let params = PatchParams::apply(MANAGER).force();
    let applied = api
        .patch_status(name, &params, &Patch::Apply(&body))
        .await?;
    let live = serde_json::to_value(&applied)
        .map_err(kube::Error::SerdeError)?
        .get("status")
        .cloned()
        .unwrap_or(Value::Null);
    let ops = residue(&desired, &live);
    if ops.is_empty() {
        return Ok(false);
    }
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    api.patch_status(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::crd::Heartbeat;
    use crate::k8s::testing::{heartbeat, mock_client};

    #[tokio::test]
    async fn fields_left_by_another_manager_are_removed_once_after_the_apply() {
        // The API server keeps `state`, owned by the merge patches of an earlier version.
        let (client, log) = mock_client(|req| {
            let mut obj = serde_json::to_value(heartbeat("job", json!({}), &[])).unwrap();
            obj["status"] = req.body["status"].clone();
            if req.content_type == "application/apply-patch+yaml" {
                obj["status"]["state"] = json!("Up");
            }
            (200, obj)
        });
        let api: Api<Heartbeat> = Api::namespaced(client, "shop");
        let status: crate::k8s::crd::HeartbeatStatus = serde_json::from_value(json!({"conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": "m", "lastTransitionTime": "2024-01-01T00:00:00Z"}]})).unwrap();
        assert!(apply_status(&api, "job", &status).await.unwrap());
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].content_type, "application/json-patch+json");
        assert_eq!(
            seen[1].body,
            json!([
                {"op": "test", "path": "/status/state", "value": "Up"},
                {"op": "remove", "path": "/status/state"}
            ])
        );
    }

    #[test]
    fn leftovers_of_other_managers_are_removed_with_a_test_first() {
        let desired = json!({
            "conditions": [{"type": "Ready", "status": "False"}],
            "observedGeneration": 3
        });
        let live = json!({
            "state": "Up",
            "nextDueAt": "2024-01-01T00:00:00Z",
            "conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "Up", "status": "True"}
            ],
            "observedGeneration": 3
        });
        let ops = residue(&desired, &live);
        let paths: Vec<(&str, &str)> = ops
            .iter()
            .map(|o| (o["op"].as_str().unwrap(), o["path"].as_str().unwrap()))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("test", "/status/nextDueAt"),
                ("remove", "/status/nextDueAt"),
                ("test", "/status/state"),
                ("remove", "/status/state"),
                ("test", "/status/conditions/1"),
                ("remove", "/status/conditions/1"),
            ]
        );
        assert!(residue(&desired, &desired).is_empty());
    }
}
