//! An in-memory Kubernetes API server for reconcile tests: a `kube::Client` whose requests are
//! answered from a map of objects, and a record of every call. It does what the reconcilers
//! rely on — get, create (409 if present), server-side apply (with some defaults the real
//! server adds and empty fields dropped, as it does), merge and JSON patches, delete of a
//! collection — and answers 404 in the API's own `Status` form.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub content_type: String,
}

impl Call {
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }
    /// The last path segment(s) that name the object, e.g. `statefulsets/docs`.
    pub fn object(&self) -> String {
        let parts: Vec<&str> = self.path.split('/').collect();
        let i = parts
            .iter()
            .position(|p| *p == "namespaces")
            .map_or(0, |i| i + 2);
        parts[i.min(parts.len())..].join("/")
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    version: u64,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let me = me.clone();
            async move { Ok::<_, std::convert::Infallible>(me.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    pub fn put(&self, path: &str, obj: Value) {
        let mut st = self.state.lock().unwrap();
        st.objects.insert(path.to_owned(), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Changes a stored object in place (another client's edit).
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state.lock().unwrap();
        f(st.objects.get_mut(path).expect("object to edit"));
    }

    pub fn paths(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }

    /// The calls since the last `take_calls`.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().unwrap().calls)
    }

    async fn handle(&self, req: Request<kube::client::Body>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let call = Call {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        };
        let mut st = self.state.lock().unwrap();
        st.calls.push(call.clone());
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (code, answer) = st.answer(&call, body);
        Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .expect("response")
    }
}

impl State {
    fn answer(&mut self, call: &Call, body: Value) -> (StatusCode, Value) {
        let path = call.path.clone();
        match call.method {
            Method::GET => match self.objects.get(&path) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => not_found(&path),
            },
            Method::POST => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                let key = format!("{path}/{name}");
                if self.objects.contains_key(&key) {
                    return status(StatusCode::CONFLICT, "AlreadyExists", &key);
                }
                let stored = self.stored(&key, body, None);
                (StatusCode::CREATED, stored)
            }
            Method::PATCH => {
                // The status subresource is stored in the object it belongs to.
                let target = path.strip_suffix("/status").unwrap_or(&path).to_owned();
                let existing = self.objects.get(&target).cloned();
                let ct = call.content_type.as_str();
                let new = if ct.starts_with("application/apply-patch") {
                    // Server-side apply under one manager: the applied object is what we own.
                    let mut obj = body;
                    if let Some(old) = &existing {
                        for keep in ["status"] {
                            if let Some(v) = old.get(keep) {
                                obj[keep] = v.clone();
                            }
                        }
                    }
                    obj
                } else {
                    let Some(mut obj) = existing.clone() else {
                        return not_found(&target);
                    };
                    if ct.starts_with("application/merge-patch") {
                        merge(&mut obj, &body);
                    } else if ct.starts_with("application/json-patch") {
                        if let Err(why) = json_patch(&mut obj, &body) {
                            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &why);
                        }
                    } else {
                        return status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "BadRequest", ct);
                    }
                    obj
                };
                (StatusCode::OK, self.stored(&target, new, existing))
            }
            Method::DELETE => {
                // A collection: everything below the path whose labels match the selector.
                let selector = call
                    .query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .map(percent_decoded)
                    .unwrap_or_default();
                let wanted: Vec<(String, String)> = selector
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect();
                let prefix = format!("{path}/");
                let gone: Vec<String> = self
                    .objects
                    .iter()
                    .filter(|(k, o)| {
                        k.starts_with(&prefix)
                            && wanted
                                .iter()
                                .all(|(lk, lv)| o["metadata"]["labels"][lk] == json!(lv))
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let items: Vec<Value> =
                    gone.iter().filter_map(|k| self.objects.remove(k)).collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
                )
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &path),
        }
    }

    /// Stores an object as the API server would: identity, a new resourceVersion, empty
    /// fields dropped, and a few defaults (a Service's ClusterIP, a StatefulSet's history).
    fn stored(&mut self, key: &str, mut obj: Value, old: Option<Value>) -> Value {
        self.version += 1;
        drop_empty(&mut obj);
        let old_meta = old
            .as_ref()
            .map(|o| o["metadata"].clone())
            .unwrap_or(Value::Null);
        let meta = &mut obj["metadata"];
        meta["uid"] = old_meta
            .get("uid")
            .cloned()
            .unwrap_or_else(|| json!(format!("uid-{}", self.version)));
        meta["resourceVersion"] = json!(self.version.to_string());
        meta["creationTimestamp"] = json!("2026-12-02T00:00:00Z");
        if let Some(ns) = key.split('/').skip_while(|p| *p != "namespaces").nth(1) {
            meta["namespace"] = json!(ns);
        }
        if key.contains("/services/") && obj["spec"]["clusterIP"].is_null() {
            let ip = old
                .as_ref()
                .map(|o| o["spec"]["clusterIP"].clone())
                .filter(|v| !v.is_null())
                .unwrap_or(json!("127.0.0.1"));
            obj["spec"]["clusterIP"] = ip;
        }
        if key.contains("/statefulsets/") {
            obj["spec"]["revisionHistoryLimit"] = json!(10);
            if obj["spec"]["podManagementPolicy"].is_null() {
                obj["spec"]["podManagementPolicy"] = json!("OrderedReady");
            }
        }
        self.objects.insert(key.to_owned(), obj.clone());
        obj
    }
}

fn drop_empty(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                drop_empty(x);
            }
            m.retain(|_, x| match x {
                Value::Null => false,
                Value::Object(o) => !o.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => true,
            });
        }
        Value::Array(a) => a.iter_mut().for_each(drop_empty),
        _ => {}
    }
}

/// RFC 7386.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    target.as_object_mut().unwrap().remove(k);
                } else {
                    merge(&mut target[k], v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// RFC 6902, the operations `test`, `add` and `remove` (what kube's finalizer helper sends).
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("not a list")? {
        let path = op["path"].as_str().ok_or("no path")?;
        let (parent, last) = path.rsplit_once('/').ok_or("bad path")?;
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        match op["op"].as_str() {
            Some("test") => {
                let here = target.pointer(path).cloned().unwrap_or(Value::Null);
                if here != value {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("add") => {
                let p = target.pointer_mut(parent).ok_or("no parent")?;
                match p {
                    Value::Array(a) if last == "-" => a.push(value),
                    Value::Array(a) => a.insert(last.parse().map_err(|_| "index")?, value),
                    Value::Object(m) => {
                        m.insert(last.to_owned(), value);
                    }
                    _ => return Err("parent is no container".into()),
                }
            }
            Some("remove") => {
                let p = target.pointer_mut(parent).ok_or("no parent")?;
                match p {
                    Value::Array(a) => {
                        a.remove(last.parse().map_err(|_| "index")?);
                    }
                    Value::Object(m) => {
                        m.remove(last);
                    }
                    _ => return Err("parent is no container".into()),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn not_found(path: &str) -> (StatusCode, Value) {
    status(StatusCode::NOT_FOUND, "NotFound", path)
}

fn status(code: StatusCode, reason: &str, what: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{reason}: {what}"), "reason": reason, "code": code.as_u16()}),
    )
}
