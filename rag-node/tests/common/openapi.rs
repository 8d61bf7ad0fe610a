//! The OpenAPI document a node serves, and checks of real answers against it: an answer's body
//! must fit the schema the document gives for its route, status and media type, and a status
//! the route does not document fails the check. The schemas are JSON Schema 2020-12 (the dialect
//! of OpenAPI 3.1), validated by `boon` with format assertions on (`date-time`, …). The check is
//! stricter than the document in one way: an object schema that lists its properties accepts no
//! others, so a field the server sends but the document does not describe fails too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// Answers not produced by a route (unknown route, wrong method) are JSON errors too.
const UNROUTED: [u16; 2] = [404, 405];

pub struct Spec {
    doc: Value,
    compiled: Mutex<HashMap<String, Arc<(boon::Schemas, boon::SchemaIndex)>>>,
}

impl Spec {
    pub fn new(doc: Value) -> Spec {
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "not an OpenAPI 3.1 document: {}",
            doc["openapi"]
        );
        Spec {
            doc,
            compiled: Mutex::new(HashMap::new()),
        }
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The document's path template that a request path matches (`/api/v1/jobs/j1` →
    /// `/api/v1/jobs/{id}`); a literal segment wins over a parameter.
    pub fn template(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap();
        let segments: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .filter_map(|t| {
                let ts: Vec<&str> = t.split('/').collect();
                if ts.len() != segments.len() {
                    return None;
                }
                let mut params = 0;
                for (t, s) in ts.iter().zip(&segments) {
                    if t.starts_with('{') && t.ends_with('}') && !s.is_empty() {
                        params += 1;
                    } else if t != s {
                        return None;
                    }
                }
                Some((params, t.clone()))
            })
            .min()
            .map(|(_, t)| t)
    }

    /// Checks an answer to `method path` (the request's path, parameters filled in); panics
    /// with what does not fit.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) {
        if let Err(e) = self.verify(method, path, status, content_type, body) {
            panic!(
                "{} {path} answered {status} ({}) outside the OpenAPI document: {e}\nbody: {}",
                method.to_uppercase(),
                content_type.unwrap_or("no content type"),
                truncate(&String::from_utf8_lossy(body), 2000),
            );
        }
    }

    /// What [`Spec::check`] finds wrong with an answer.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        let method = method.to_lowercase();
        let op = self
            .template(path)
            .map(|t| (t.clone(), &self.doc["paths"][&t][&method]))
            .filter(|(_, op)| op.is_object());
        let Some((template, op)) = op else {
            // The router's own answers: JSON errors.
            if !UNROUTED.contains(&status) {
                return Err(format!("no operation {method} {path} documented"));
            }
            return self.verify_json("#/components/schemas/ErrorBody", content_type, body);
        };
        let responses = &op["responses"];
        let code = status.to_string();
        let response = if responses[&code].is_object() {
            &responses[&code]
        } else if responses["default"].is_object() {
            &responses["default"]
        } else {
            return Err(format!(
                "status {status} is not documented for {method} {template}"
            ));
        };
        let Some(content) = response["content"].as_object() else {
            return match body.is_empty() {
                true => Ok(()),
                false => Err(format!("{status} is documented without a body")),
            };
        };
        let media = essence(content_type.ok_or("no content type")?);
        if !content.contains_key(&media) {
            return Err(format!(
                "media type {media} is not documented for {status} (documented: {:?})",
                content.keys().collect::<Vec<_>>()
            ));
        }
        let pointer = format!(
            "#/paths/{}/{method}/responses/{}/content/{}/schema",
            escape(&template),
            escape(if responses[&code].is_object() {
                &code
            } else {
                "default"
            }),
            escape(&media),
        );
        if media == "application/json" {
            self.verify_json(&pointer, content_type, body)
        } else {
            let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
            self.validate(&pointer, &Value::String(text.to_owned()))
        }
    }

    fn verify_json(
        &self,
        pointer: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        match content_type.map(essence).as_deref() {
            Some("application/json") => {}
            other => return Err(format!("content type {other:?}, not application/json")),
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        self.validate(pointer, &value)
    }

    /// Checks `value` against the component schema `name` (e.g. the `JobStatus` of an event);
    /// panics with what does not fit.
    pub fn check_schema(&self, name: &str, value: &Value) {
        let pointer = format!("#/components/schemas/{name}");
        assert!(
            self.doc["components"]["schemas"][name].is_object(),
            "no schema {name}"
        );
        if let Err(e) = self.validate(&pointer, value) {
            panic!(
                "not a {name} of the OpenAPI document: {e}\nvalue: {}",
                truncate(&value.to_string(), 2000)
            );
        }
    }

    /// Validates `value` against the schema at `pointer` (a `#/…` JSON pointer into the
    /// document).
    pub fn validate(&self, pointer: &str, value: &Value) -> Result<(), String> {
        let compiled = self.compiled(pointer)?;
        let (schemas, index) = &*compiled;
        schemas
            .validate(value, *index)
            .map_err(|e| format!("{e:#}"))
    }

    fn compiled(&self, pointer: &str) -> Result<Arc<(boon::Schemas, boon::SchemaIndex)>, String> {
        if let Some(c) = self.compiled.lock().unwrap().get(pointer) {
            return Ok(c.clone());
        }
        let schema = self
            .doc
            .pointer(pointer.trim_start_matches('#'))
            .ok_or_else(|| format!("nothing at {pointer}"))?;
        // One schema resource: the schema itself, with the document's component schemas as its
        // `$defs` (so `#/components/schemas/X` becomes `#/$defs/X`).
        let mut root = closed(rewrite_refs(schema.clone()));
        let root = match &mut root {
            Value::Object(m) => {
                let defs = closed(rewrite_refs(self.doc["components"]["schemas"].clone()));
                m.insert("$defs".into(), defs);
                m.insert(
                    "$schema".into(),
                    json!("https://json-schema.org/draft/2020-12/schema"),
                );
                root
            }
            other => return Err(format!("the schema at {pointer} is not an object: {other}")),
        };
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V2020_12);
        compiler.enable_format_assertions();
        let url = "urn:rag-node:openapi";
        compiler
            .add_resource(url, root)
            .map_err(|e| format!("{e:#}"))?;
        let mut schemas = boon::Schemas::new();
        let index = compiler
            .compile(url, &mut schemas)
            .map_err(|e| format!("the schema at {pointer} does not compile: {e:#}"))?;
        let c = Arc::new((schemas, index));
        self.compiled
            .lock()
            .unwrap()
            .insert(pointer.to_owned(), c.clone());
        Ok(c)
    }
}

/// `text/plain; version=0.0.4` → `text/plain`.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_ascii_lowercase()
}

/// A JSON pointer segment.
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn rewrite_refs(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => {
                        let r = r.replace("#/components/schemas/", "#/$defs/");
                        (k, Value::String(r))
                    }
                    (_, x) => (k, rewrite_refs(x)),
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(rewrite_refs).collect()),
        other => other,
    }
}

/// Every object schema that lists `properties` and says nothing of others accepts no others.
fn closed(v: Value) -> Value {
    match v {
        Value::Object(mut m) => {
            let lists_properties = m.get("properties").is_some_and(Value::is_object);
            for x in m.values_mut() {
                *x = closed(std::mem::take(x));
            }
            if lists_properties && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(m)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(closed).collect()),
        other => other,
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
