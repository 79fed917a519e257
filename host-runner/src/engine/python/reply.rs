//! `_virtufin_host.process`'s answer read back into a CloudEvent: `("none",)`,
//! `("error", traceback)` or `("ok", id, type, source, specversion, datacontenttype,
//! dataschema, subject, time, [(extension, value)], data bytes | None)`.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use wm_shared::CloudEvent;

pub(super) enum Reply {
    None,
    Error(String),
    Event(Box<CloudEvent>),
}

/// `_virtufin_host.process`'s answer: `("none",)`, `("error", tb)` or `("ok", fields...)`.
pub(super) fn reply(py: Python<'_>, out: &Bound<'_, PyAny>) -> Result<Reply, String> {
    let _ = py;
    let t = out.cast::<PyTuple>().map_err(|e| e.to_string())?;
    let item = |i: usize| t.get_item(i).map_err(|e| e.to_string());
    let text = |i: usize| -> Result<String, String> {
        item(i)?.extract::<String>().map_err(|e| e.to_string())
    };
    let opt = |i: usize| -> Result<Option<String>, String> {
        item(i)?
            .extract::<Option<String>>()
            .map_err(|e| e.to_string())
    };
    match text(0)?.as_str() {
        "none" => Ok(Reply::None),
        "error" => Ok(Reply::Error(text(1)?)),
        "ok" => {
            let mut ev = CloudEvent::new(text(1)?, text(2)?, text(3)?);
            ev.specversion = text(4)?;
            ev.datacontenttype = opt(5)?;
            ev.dataschema = opt(6)?;
            ev.subject = opt(7)?;
            ev.time = opt(8)?;
            let exts = item(9)?
                .extract::<Vec<(String, String)>>()
                .map_err(|e| e.to_string())?;
            for (k, v) in exts {
                ev.set_extension(k.clone(), v)
                    .map_err(|e| format!("reply attribute {k:?}: {e}"))?;
            }
            let data = item(10)?;
            if !data.is_none() {
                let b = data.cast::<PyBytes>().map_err(|e| e.to_string())?;
                ev.data = Some(b.as_bytes().to_vec());
            }
            Ok(Reply::Event(Box::new(ev)))
        }
        other => Err(format!(
            "unexpected answer {other:?} from the host's bootstrap"
        )),
    }
}
