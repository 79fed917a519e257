//! The CloudEvent model shared by the bus, the dispatcher and the engines.
//!
//! One [`CloudEvent`] type with three forms:
//! - the CloudEvents 1.0 JSON format, structured mode ([`CloudEvent::from_json_value`],
//!   [`CloudEvent::to_json_value`]),
//! - the `worker_api.fbs` FlatBuffer a plugin receives ([`CloudEvent::to_flatbuffer`],
//!   [`CloudEvent::from_flatbuffer`]),
//! - the `WorkerResponse` FlatBuffer a plugin returns ([`WorkerResponse`]).
//!
//! Extensions are kept in order, with `correlationid` first when present: the seed documents
//! that a plugin finds it as the first entry. (The CNCF `cloudevents-sdk` keeps extensions in a
//! hash map and so loses that order; see docs/architecture.md.)
//!
//! `data` is bytes. In JSON, bytes that are JSON (for a JSON or absent content type) become the
//! `data` value, other UTF-8 text becomes a `data` string, anything else `data_base64`. Reading
//! JSON does the reverse: a string `data` is taken as its UTF-8 bytes, any other JSON value is
//! JSON-encoded, as the seed says ("JSON-encoded if non-string").

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::generated::worker_api::virtufin::worker::flat_buffers as fb;

/// The extension the SDKs use to pair a reply with its request.
pub const CORRELATION_ID: &str = "correlationid";
/// The extension that names the topic a reply goes to.
pub const REPLY_TOPIC: &str = "replytopic";
/// The only CloudEvents version this model speaks.
pub const SPEC_VERSION: &str = "1.0";

/// Attribute names an extension may not take.
const RESERVED: &[&str] = &[
    "id",
    "type",
    "source",
    "specversion",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "data_base64",
];

/// A CloudEvent, as the bus stores it and the engines see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CloudEvent {
    pub id: String,
    pub ty: String,
    pub source: String,
    pub specversion: String,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub data: Option<Vec<u8>>,
    /// Extension attributes, in order; `correlationid` first when present.
    extensions: Vec<(String, String)>,
}

/// What is wrong with an event a user or a plugin handed us.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudEventError {
    #[error("a CloudEvent must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("required attribute '{0}' is missing or empty")]
    Missing(&'static str),
    #[error("attribute '{name}' must be a string, got {got}")]
    NotAString { name: String, got: &'static str },
    #[error("specversion '{0}' is not supported (only 1.0 is)")]
    SpecVersion(String),
    #[error(
        "extension name '{0}' is invalid: CloudEvents attribute names are 1-20 lower-case ASCII letters or digits"
    )]
    ExtensionName(String),
    #[error("extension name '{0}' is a reserved CloudEvents attribute")]
    ReservedName(String),
    #[error("both 'data' and 'data_base64' are set; an event carries one of them")]
    BothData,
    #[error("'data_base64' is not valid base64: {0}")]
    Base64(String),
    #[error("the buffer is not a valid {what} FlatBuffer: {reason}")]
    FlatBuffer { what: &'static str, reason: String },
    #[error("field '{0}' of the FlatBuffer is not valid UTF-8")]
    Utf8(&'static str),
}

/// True for a CloudEvents attribute name: lower-case ASCII letters and digits, 1 to 20 long.
pub fn is_valid_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `data` of this content type is carried as a JSON value in structured mode.
fn is_json_content_type(ct: Option<&str>) -> bool {
    match ct {
        None => true,
        Some(ct) => {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime == "text/json" || mime.ends_with("+json")
        }
    }
}

impl CloudEvent {
    /// A new event with the required attributes and specversion 1.0.
    pub fn new(id: impl Into<String>, ty: impl Into<String>, source: impl Into<String>) -> Self {
        CloudEvent {
            id: id.into(),
            ty: ty.into(),
            source: source.into(),
            specversion: SPEC_VERSION.to_string(),
            ..Default::default()
        }
    }

    /// Extension attributes in order (`correlationid` first when present).
    pub fn extensions(&self) -> &[(String, String)] {
        &self.extensions
    }

    /// The value of extension `name`, if set.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets extension `name`, replacing an existing value and keeping `correlationid` first.
    pub fn set_extension(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), CloudEventError> {
        let name = name.into();
        validate_extension_name(&name)?;
        let value = value.into();
        if let Some(slot) = self.extensions.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else if name == CORRELATION_ID {
            self.extensions.insert(0, (name, value));
        } else {
            self.extensions.push((name, value));
        }
        Ok(())
    }

    /// Sets extension `name` only if the event does not carry it yet (existing values win).
    /// Returns whether it was set.
    pub fn set_extension_if_absent(
        &mut self,
        name: &str,
        value: &str,
    ) -> Result<bool, CloudEventError> {
        if self.extension(name).is_some() {
            return Ok(false);
        }
        self.set_extension(name, value)?;
        Ok(true)
    }

    /// Removes extension `name`, returning its value.
    pub fn remove_extension(&mut self, name: &str) -> Option<String> {
        let pos = self.extensions.iter().position(|(n, _)| n == name)?;
        Some(self.extensions.remove(pos).1)
    }

    /// Checks the required attributes; call it on anything a user or a plugin produced.
    pub fn validate(&self) -> Result<(), CloudEventError> {
        if self.id.is_empty() {
            return Err(CloudEventError::Missing("id"));
        }
        if self.source.is_empty() {
            return Err(CloudEventError::Missing("source"));
        }
        if self.ty.is_empty() {
            return Err(CloudEventError::Missing("type"));
        }
        if self.specversion != SPEC_VERSION {
            return Err(CloudEventError::SpecVersion(self.specversion.clone()));
        }
        for (name, _) in &self.extensions {
            validate_extension_name(name)?;
        }
        Ok(())
    }

    // ---- JSON (structured mode) ----

    /// Parses a structured-mode JSON CloudEvent (a copy of `value`; [`CloudEvent::from_json`]
    /// takes an owned one without copying).
    pub fn from_json_value(value: &Value) -> Result<Self, CloudEventError> {
        Self::from_json(value.clone())
    }

    /// Parses a structured-mode JSON CloudEvent, moving its strings out of `value` instead of
    /// copying them (the publish path's per-event allocations). The attributes are checked in
    /// the same order as ever (id, source, type, specversion, the optional ones, data), so the
    /// first error reported for a bad event does not depend on which function read it.
    pub fn from_json(value: Value) -> Result<Self, CloudEventError> {
        let mut obj = match value {
            Value::Object(obj) => obj,
            other => return Err(CloudEventError::NotAnObject(json_type(&other))),
        };
        let mut string = |name: &'static str| -> Result<Option<String>, CloudEventError> {
            match obj.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(CloudEventError::NotAString {
                    name: name.to_string(),
                    got: json_type(&other),
                }),
            }
        };
        let mut required = |name: &'static str| -> Result<String, CloudEventError> {
            match string(name)? {
                Some(s) if !s.is_empty() => Ok(s),
                _ => Err(CloudEventError::Missing(name)),
            }
        };
        let id = required("id")?;
        let source = required("source")?;
        let ty = required("type")?;
        let specversion = required("specversion")?;
        let mut ev = CloudEvent {
            id,
            source,
            ty,
            specversion,
            datacontenttype: string("datacontenttype")?,
            dataschema: string("dataschema")?,
            subject: string("subject")?,
            time: string("time")?,
            data: None,
            extensions: Vec::new(),
        };
        if ev.specversion != SPEC_VERSION {
            return Err(CloudEventError::SpecVersion(ev.specversion));
        }
        match (obj.remove("data"), obj.remove("data_base64")) {
            (Some(d), Some(b)) if !d.is_null() && !b.is_null() => {
                return Err(CloudEventError::BothData);
            }
            (_, Some(Value::String(b64))) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| CloudEventError::Base64(e.to_string()))?;
                ev.data = Some(bytes);
            }
            (_, Some(other)) if !other.is_null() => {
                return Err(CloudEventError::NotAString {
                    name: "data_base64".into(),
                    got: json_type(&other),
                });
            }
            (Some(Value::String(s)), _) => ev.data = Some(s.into_bytes()),
            (Some(Value::Null), _) | (None, _) => {}
            (Some(other), _) => ev.data = Some(other.to_string().into_bytes()),
        }
        // What is left are the extensions, in the map's (sorted) order as before.
        for (name, v) in obj {
            if RESERVED.contains(&name.as_str()) {
                continue;
            }
            let value = match v {
                Value::String(s) => s,
                Value::Null => continue,
                other => other.to_string(),
            };
            ev.set_extension(name, value)?;
        }
        Ok(ev)
    }

    /// Parses structured-mode JSON text.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, CloudEventError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| CloudEventError::FlatBuffer {
                what: "JSON",
                reason: e.to_string(),
            })?;
        Self::from_json(value)
    }

    /// The structured-mode JSON form.
    pub fn to_json_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert(
            "specversion".into(),
            Value::String(self.specversion.clone()),
        );
        obj.insert("id".into(), Value::String(self.id.clone()));
        obj.insert("source".into(), Value::String(self.source.clone()));
        obj.insert("type".into(), Value::String(self.ty.clone()));
        let opt = |obj: &mut Map<String, Value>, k: &str, v: &Option<String>| {
            if let Some(v) = v {
                obj.insert(k.to_string(), Value::String(v.clone()));
            }
        };
        opt(&mut obj, "datacontenttype", &self.datacontenttype);
        opt(&mut obj, "dataschema", &self.dataschema);
        opt(&mut obj, "subject", &self.subject);
        opt(&mut obj, "time", &self.time);
        for (name, value) in &self.extensions {
            obj.insert(name.clone(), Value::String(value.clone()));
        }
        if let Some(data) = &self.data {
            let json = if is_json_content_type(self.datacontenttype.as_deref()) {
                serde_json::from_slice::<Value>(data).ok()
            } else {
                None
            };
            match (json, std::str::from_utf8(data)) {
                (Some(v), _) => {
                    obj.insert("data".into(), v);
                }
                (None, Ok(text)) => {
                    obj.insert("data".into(), Value::String(text.to_string()));
                }
                (None, Err(_)) => {
                    obj.insert(
                        "data_base64".into(),
                        Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
                    );
                }
            }
        }
        Value::Object(obj)
    }

    // ---- FlatBuffers ----

    /// Encodes this event as a `worker_api.fbs` CloudEvent (root table, no size prefix).
    pub fn to_flatbuffer(&self) -> Vec<u8> {
        let mut fbb = flatbuffers::FlatBufferBuilder::with_capacity(256 + self.data_len());
        let root = self.build(&mut fbb);
        fbb.finish_minimal(root);
        fbb.finished_data().to_vec()
    }

    fn data_len(&self) -> usize {
        self.data.as_ref().map_or(0, Vec::len)
    }

    /// Writes this event into `fbb` and returns its offset (for nesting in a WorkerResponse).
    pub fn build<'a>(
        &self,
        fbb: &mut flatbuffers::FlatBufferBuilder<'a>,
    ) -> flatbuffers::WIPOffset<fb::CloudEvent<'a>> {
        let ext: Vec<_> = self
            .extensions
            .iter()
            .map(|(n, v)| {
                let name = fbb.create_string(n);
                let value = fbb.create_string(v);
                fb::Extension::create(
                    fbb,
                    &fb::ExtensionArgs {
                        name: Some(name),
                        value: Some(value),
                    },
                )
            })
            .collect();
        let extensions = (!ext.is_empty()).then(|| fbb.create_vector(&ext));
        let data = self.data.as_ref().map(|d| fbb.create_vector(d));
        let s = |fbb: &mut flatbuffers::FlatBufferBuilder<'a>, v: &str| fbb.create_string(v);
        let id = s(fbb, &self.id);
        let type_ = s(fbb, &self.ty);
        let source = s(fbb, &self.source);
        let specversion = s(fbb, &self.specversion);
        let datacontenttype = self.datacontenttype.as_deref().map(|v| s(fbb, v));
        let dataschema = self.dataschema.as_deref().map(|v| s(fbb, v));
        let subject = self.subject.as_deref().map(|v| s(fbb, v));
        let time = self.time.as_deref().map(|v| s(fbb, v));
        fb::CloudEvent::create(
            fbb,
            &fb::CloudEventArgs {
                id: Some(id),
                type_: Some(type_),
                source: Some(source),
                specversion: Some(specversion),
                datacontenttype,
                dataschema,
                subject,
                time,
                data,
                extensions,
            },
        )
    }

    /// Decodes a `worker_api.fbs` CloudEvent, verifying the buffer first. Missing core strings
    /// come back empty; call [`CloudEvent::validate`] to insist on them.
    pub fn from_flatbuffer(bytes: &[u8]) -> Result<Self, CloudEventError> {
        let table = flatbuffers::root::<fb::CloudEvent>(bytes).map_err(|e| {
            CloudEventError::FlatBuffer {
                what: "CloudEvent",
                reason: e.to_string(),
            }
        })?;
        Ok(Self::from_table(&table))
    }

    /// Copies a verified CloudEvent table into the model. Extension entries with no name are
    /// skipped; the flatbuffers crate has already checked every string is UTF-8.
    pub fn from_table(t: &fb::CloudEvent<'_>) -> Self {
        let own = |s: Option<&str>| s.unwrap_or_default().to_string();
        let mut extensions: Vec<(String, String)> = Vec::new();
        if let Some(list) = t.extensions() {
            for e in list.iter() {
                if let Some(name) = e.name() {
                    extensions.push((name.to_string(), own(e.value())));
                }
            }
        }
        // Keep the documented order even if a plugin put correlationid elsewhere.
        if let Some(pos) = extensions.iter().position(|(n, _)| n == CORRELATION_ID)
            && pos != 0
        {
            let c = extensions.remove(pos);
            extensions.insert(0, c);
        }
        CloudEvent {
            id: own(t.id()),
            ty: own(t.type_()),
            source: own(t.source()),
            specversion: own(t.specversion()),
            datacontenttype: t.datacontenttype().map(str::to_string),
            dataschema: t.dataschema().map(str::to_string),
            subject: t.subject().map(str::to_string),
            time: t.time().map(str::to_string),
            data: t.data().map(|d| d.bytes().to_vec()),
            extensions,
        }
    }
}

fn validate_extension_name(name: &str) -> Result<(), CloudEventError> {
    if RESERVED.contains(&name) {
        return Err(CloudEventError::ReservedName(name.to_string()));
    }
    if !is_valid_extension_name(name) {
        return Err(CloudEventError::ExtensionName(name.to_string()));
    }
    Ok(())
}

/// What a plugin returns: a reply to publish, an error to surface, both, or neither.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerResponse {
    pub result_event: Option<CloudEvent>,
    pub error_message: Option<String>,
}

impl WorkerResponse {
    /// Encodes as a `worker_api.fbs` WorkerResponse (root table, no size prefix).
    pub fn to_flatbuffer(&self) -> Vec<u8> {
        let mut fbb = flatbuffers::FlatBufferBuilder::with_capacity(
            256 + self.result_event.as_ref().map_or(0, CloudEvent::data_len),
        );
        let result_event = self.result_event.as_ref().map(|e| e.build(&mut fbb));
        let error_message = self.error_message.as_deref().map(|m| fbb.create_string(m));
        let root = fb::WorkerResponse::create(
            &mut fbb,
            &fb::WorkerResponseArgs {
                result_event,
                error_message,
            },
        );
        fbb.finish_minimal(root);
        fbb.finished_data().to_vec()
    }

    /// Decodes a WorkerResponse, verifying the buffer first: bytes from a plugin are hostile.
    pub fn from_flatbuffer(bytes: &[u8]) -> Result<Self, CloudEventError> {
        let table = flatbuffers::root::<fb::WorkerResponse>(bytes).map_err(|e| {
            CloudEventError::FlatBuffer {
                what: "WorkerResponse",
                reason: e.to_string(),
            }
        })?;
        Ok(WorkerResponse {
            result_event: table.result_event().map(|t| CloudEvent::from_table(&t)),
            error_message: table.error_message().map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CloudEvent {
        let mut e = CloudEvent::new("id-1", "com.example.ping", "urn:test");
        e.datacontenttype = Some("application/json".into());
        e.subject = Some("sub".into());
        e.time = Some("2026-11-21T10:00:00Z".into());
        e.dataschema = Some("https://example.com/schema".into());
        e.data = Some(br#"{"n":1}"#.to_vec());
        e.set_extension("tenant", "t1").unwrap();
        e.set_extension(CORRELATION_ID, "c-42").unwrap();
        e
    }

    #[test]
    fn correlationid_goes_first_whatever_the_order_of_setting() {
        let e = sample();
        assert_eq!(e.extensions()[0], ("correlationid".into(), "c-42".into()));
        assert_eq!(e.extensions()[1], ("tenant".into(), "t1".into()));
    }

    #[test]
    fn flatbuffer_round_trip_keeps_every_field() {
        let e = sample();
        let back = CloudEvent::from_flatbuffer(&e.to_flatbuffer()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn correlationid_is_moved_first_when_a_plugin_puts_it_last() {
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let mk = |fbb: &mut flatbuffers::FlatBufferBuilder<'static>, n: &str, v: &str| {
            let name = fbb.create_string(n);
            let value = fbb.create_string(v);
            fb::Extension::create(
                fbb,
                &fb::ExtensionArgs {
                    name: Some(name),
                    value: Some(value),
                },
            )
        };
        let a = mk(&mut fbb, "a", "1");
        let c = mk(&mut fbb, "correlationid", "x");
        let ext = fbb.create_vector(&[a, c]);
        let id = fbb.create_string("i");
        let root = fb::CloudEvent::create(
            &mut fbb,
            &fb::CloudEventArgs {
                id: Some(id),
                extensions: Some(ext),
                ..Default::default()
            },
        );
        fbb.finish_minimal(root);
        let e = CloudEvent::from_flatbuffer(fbb.finished_data()).unwrap();
        assert_eq!(e.extensions()[0].0, "correlationid");
        assert_eq!(e.ty, "");
        assert_eq!(e.validate(), Err(CloudEventError::Missing("source")));
    }

    #[test]
    fn json_round_trip_for_json_text_and_binary_data() {
        let e = sample();
        let v = e.to_json_value();
        assert_eq!(v["data"], json!({"n": 1}));
        assert_eq!(v["correlationid"], "c-42");
        assert_eq!(CloudEvent::from_json_value(&v).unwrap(), e);

        let mut t = CloudEvent::new("2", "t", "s");
        t.datacontenttype = Some("text/plain".into());
        t.data = Some(b"hello".to_vec());
        let v = t.to_json_value();
        assert_eq!(v["data"], "hello");
        assert_eq!(CloudEvent::from_json_value(&v).unwrap(), t);

        let mut b = CloudEvent::new("3", "t", "s");
        b.datacontenttype = Some("application/octet-stream".into());
        b.data = Some(vec![0, 159, 146, 150]);
        let v = b.to_json_value();
        assert_eq!(v["data_base64"], "AJ+Slg==");
        assert!(v.get("data").is_none());
        assert_eq!(CloudEvent::from_json_value(&v).unwrap(), b);
    }

    #[test]
    fn non_string_json_data_and_extensions_are_json_encoded() {
        let v = json!({"specversion":"1.0","id":"1","source":"s","type":"t",
                       "data":{"a":[1,2]}, "count": 3, "flag": true});
        let e = CloudEvent::from_json_value(&v).unwrap();
        assert_eq!(e.data.as_deref(), Some(br#"{"a":[1,2]}"#.as_slice()));
        assert_eq!(e.extension("count"), Some("3"));
        assert_eq!(e.extension("flag"), Some("true"));
    }

    #[test]
    fn owned_json_moves_attributes_nulls_and_extensions_as_before() {
        // `from_json` (owned, the publish path) and `from_json_value` (borrowed) read the
        // same event: nulls are absent attributes, extensions come in the map's sorted
        // order (correlation id first), `data: null` beside `data_base64` is no conflict.
        let v = json!({"specversion":"1.0","id":"1","source":"s","type":"t",
                       "subject":null,"zeta":"z","alpha":1,"correlationid":"c","nothing":null,
                       "data":null,"data_base64":"AJ8="});
        let owned = CloudEvent::from_json(v.clone()).unwrap();
        assert_eq!(owned, CloudEvent::from_json_value(&v).unwrap());
        assert_eq!(owned.subject, None);
        assert_eq!(owned.data.as_deref(), Some([0u8, 159].as_slice()));
        let names: Vec<&str> = owned.extensions.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["correlationid", "alpha", "zeta"]);
        assert_eq!(owned.extension("alpha"), Some("1"));
    }

    #[test]
    fn bad_json_events_are_refused_with_the_reason() {
        let cases = [
            (
                json!([1]),
                "a CloudEvent must be a JSON object, got an array",
            ),
            (
                json!({"specversion":"1.0","source":"s","type":"t"}),
                "required attribute 'id' is missing or empty",
            ),
            (
                json!({"specversion":"0.3","id":"1","source":"s","type":"t"}),
                "specversion '0.3' is not supported (only 1.0 is)",
            ),
            (
                json!({"specversion":"1.0","id":1,"source":"s","type":"t"}),
                "attribute 'id' must be a string, got a number",
            ),
            (
                json!({"specversion":"1.0","id":"1","source":"s","type":"t","Bad-Name":"x"}),
                "extension name 'Bad-Name' is invalid: CloudEvents attribute names are 1-20 lower-case ASCII letters or digits",
            ),
            (
                json!({"specversion":"1.0","id":"1","source":"s","type":"t","data":"x","data_base64":"eA=="}),
                "both 'data' and 'data_base64' are set; an event carries one of them",
            ),
            (
                json!({"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!!"}),
                "'data_base64' is not valid base64: Invalid symbol 33, offset 0.",
            ),
            // Two faults: the first attribute in the fixed order (id, source, type,
            // specversion, ...) is the one reported, whatever the object's key order.
            (
                json!({"type":"t","specversion":"1.0","id":"1","source":7,"subject":3}),
                "attribute 'source' must be a string, got a number",
            ),
            (
                json!({"specversion":"1.0","id":"","source":"","type":"t"}),
                "required attribute 'id' is missing or empty",
            ),
            (
                json!({"specversion":"1.0","id":"1","source":"s","type":"t","time":false}),
                "attribute 'time' must be a string, got a boolean",
            ),
            (
                json!({"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":[1]}),
                "attribute 'data_base64' must be a string, got an array",
            ),
            (
                json!("an event"),
                "a CloudEvent must be a JSON object, got a string",
            ),
        ];
        for (input, want) in cases {
            let err = CloudEvent::from_json_value(&input).unwrap_err();
            assert_eq!(err.to_string(), want, "input {input}");
        }
    }

    #[test]
    fn reserved_and_overlong_extension_names_are_refused() {
        let mut e = CloudEvent::new("1", "t", "s");
        assert_eq!(
            e.set_extension("data", "x"),
            Err(CloudEventError::ReservedName("data".into()))
        );
        assert!(e.set_extension("a".repeat(21), "x").is_err());
        assert!(e.set_extension("a".repeat(20), "x").is_ok());
    }

    #[test]
    fn set_if_absent_keeps_existing_values() {
        let mut e = sample();
        assert!(!e.set_extension_if_absent("tenant", "other").unwrap());
        assert!(e.set_extension_if_absent("region", "eu").unwrap());
        assert_eq!(e.extension("tenant"), Some("t1"));
        assert_eq!(e.extension("region"), Some("eu"));
    }

    #[test]
    fn worker_response_round_trip_and_hostile_bytes() {
        let r = WorkerResponse {
            result_event: Some(sample()),
            error_message: Some("partial".into()),
        };
        assert_eq!(
            WorkerResponse::from_flatbuffer(&r.to_flatbuffer()).unwrap(),
            r
        );
        let empty = WorkerResponse::default();
        assert_eq!(
            WorkerResponse::from_flatbuffer(&empty.to_flatbuffer()).unwrap(),
            empty
        );
        for junk in [
            &b""[..],
            &[0xff; 3][..],
            &[0xff; 64][..],
            &b"not a flatbuffer at all"[..],
        ] {
            assert!(WorkerResponse::from_flatbuffer(junk).is_err());
        }
        // Every truncation of a valid buffer is refused or decodes, never panics.
        let bytes = r.to_flatbuffer();
        for n in 0..bytes.len() {
            let _ = WorkerResponse::from_flatbuffer(&bytes[..n]);
        }
    }
}
