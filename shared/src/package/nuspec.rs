//! The `.nuspec` manifest: NuGet XML, read with quick-xml, DTDs refused outright.
//!
//! A DOCTYPE is refused before anything else so neither entity expansion (billion laughs) nor
//! external entities can happen; quick-xml expands no entities itself, and the only ones we
//! resolve are XML's five and character references.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

use super::nupkg::Scan;
use super::{EngineKind, Problem, SUPPORTED_ABI_VERSIONS};

/// The NuGet nuspec namespaces (plus none at all) a `<package>` may use.
pub const NUSPEC_NAMESPACES: &[&str] = &[
    "http://schemas.microsoft.com/packaging/2010/07/nuspec.xsd",
    "http://schemas.microsoft.com/packaging/2011/08/nuspec.xsd",
    "http://schemas.microsoft.com/packaging/2011/10/nuspec.xsd",
    "http://schemas.microsoft.com/packaging/2012/06/nuspec.xsd",
    "http://schemas.microsoft.com/packaging/2013/01/nuspec.xsd",
    "http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd",
];

/// The longest `virtufinLibrary` accepted, in characters.
pub const MAX_LIBRARY_LEN: usize = 128;

/// The `<metadata>` elements we read, as written in the nuspec.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RawMetadata {
    pub id: Option<String>,
    pub version: Option<String>,
    pub abi_version: Option<String>,
    pub library: Option<String>,
    pub entry_point: Option<String>,
    pub free_result: Option<String>,
}

/// The metadata after the rules and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub id: String,
    pub version: String,
    pub abi_version: u32,
    pub library: String,
    pub entry_point: String,
    pub free_result: String,
}

const ELEMENTS: [&str; 6] = [
    "id",
    "version",
    "virtufinAbiVersion",
    "virtufinLibrary",
    "virtufinEntryPoint",
    "virtufinFreeResult",
];

/// Finds the root nuspec in the scan, parses it and applies the rules for `engine`. Pushes
/// every problem; returns the metadata only when the nuspec yields a usable library name
/// (other problems may still be pushed).
pub(crate) fn check(
    scan: &Scan,
    engine: EngineKind,
    problems: &mut Vec<Problem>,
) -> Option<Metadata> {
    let file = match scan.nuspecs.as_slice() {
        [] => {
            problems.push(Problem::NoNuspec {
                nested: scan.nested_nuspecs.clone(),
            });
            return None;
        }
        [one] => one,
        many => {
            problems.push(Problem::MultipleNuspecs {
                names: many.iter().map(|n| n.path.clone()).collect(),
            });
            return None;
        }
    };
    // Bytes missing: a size or read problem is already reported.
    let bytes = file.bytes.as_deref()?;
    let raw = parse(&file.path, bytes, problems)?;
    apply_rules(raw, engine, problems)
}

/// Parses nuspec bytes into the elements we read. Pushes the problems that stop parsing.
pub(crate) fn parse(name: &str, bytes: &[u8], problems: &mut Vec<Problem>) -> Option<RawMetadata> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let Ok(text) = std::str::from_utf8(bytes) else {
        problems.push(Problem::NuspecNotUtf8 {
            name: name.to_string(),
        });
        return None;
    };
    match parse_xml(name, text, problems) {
        Ok(raw) => Some(raw),
        Err(problem) => {
            problems.push(problem);
            None
        }
    }
}

/// Where the parser is in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the root element.
    Prolog,
    /// Inside `<package>`, outside `<metadata>`.
    Package,
    /// Inside `<metadata>`.
    Metadata,
    /// Inside one of [`ELEMENTS`] (its index), collecting text; the depth of markup nested
    /// in it, whose text is kept and tags ignored.
    Element(usize, usize),
    /// Inside an element we skip; the depth below the state we return to.
    Skip(usize, Return),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Return {
    Package,
    Metadata,
}

/// Parses the XML; `Err` for a problem that stops parsing, while problems that do not
/// (a repeated element) are pushed.
fn parse_xml(name: &str, text: &str, problems: &mut Vec<Problem>) -> Result<RawMetadata, Problem> {
    let not_xml = |reason: String| Problem::NuspecNotXml {
        name: name.to_string(),
        reason,
    };
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    reader.config_mut().check_comments = true;

    let mut root_ns: Option<String> = None;
    let mut state = State::Prolog;
    let mut seen_root = false;
    let mut seen_metadata = false;
    let mut values: [Option<String>; 6] = Default::default();
    let mut repeated: Vec<&'static str> = Vec::new();
    let mut current = String::new();

    loop {
        let position = reader.buffer_position();
        let (ns, event) = match reader.read_resolved_event() {
            Ok((ns, event)) => (namespace_of(&ns), event),
            Err(e) => return Err(not_xml(format!("{e} (near byte {position})"))),
        };
        match event {
            Event::DocType(_) => {
                return Err(Problem::NuspecDoctype {
                    name: name.to_string(),
                });
            }
            Event::Eof => break,
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                let local = e.local_name().as_ref().to_string();
                state = match state {
                    State::Prolog => {
                        if seen_root {
                            return Err(not_xml("more than one root element".to_string()));
                        }
                        seen_root = true;
                        if local != "package" {
                            return Err(Problem::NuspecRoot {
                                name: name.to_string(),
                                found: local,
                            });
                        }
                        if let Some(ns) = &ns {
                            let ns_text = ns.clone();
                            if !NUSPEC_NAMESPACES.contains(&ns_text.as_str()) {
                                return Err(Problem::NuspecNamespace {
                                    name: name.to_string(),
                                    namespace: ns_text,
                                });
                            }
                        }
                        root_ns = ns;
                        if empty { State::Prolog } else { State::Package }
                    }
                    State::Package if ns == root_ns && local == "metadata" && !seen_metadata => {
                        seen_metadata = true;
                        if empty {
                            State::Package
                        } else {
                            State::Metadata
                        }
                    }
                    State::Package if empty => State::Package,
                    State::Package => State::Skip(0, Return::Package),
                    State::Metadata => {
                        let known = (ns == root_ns)
                            .then(|| ELEMENTS.iter().position(|&el| el == local))
                            .flatten();
                        match known {
                            Some(i) => {
                                if values[i].is_some() && !repeated.contains(&ELEMENTS[i]) {
                                    repeated.push(ELEMENTS[i]);
                                }
                                if empty {
                                    values[i].get_or_insert_with(String::new);
                                    State::Metadata
                                } else {
                                    current.clear();
                                    State::Element(i, 0)
                                }
                            }
                            None if empty => State::Metadata,
                            None => State::Skip(0, Return::Metadata),
                        }
                    }
                    // Markup inside one of our elements: keep its text, skip the tags.
                    State::Element(i, d) if empty => State::Element(i, d),
                    State::Element(i, d) => State::Element(i, d + 1),
                    State::Skip(d, r) if empty => State::Skip(d, r),
                    State::Skip(d, r) => State::Skip(d + 1, r),
                };
            }
            Event::End(_) => {
                state = match state {
                    State::Prolog => State::Prolog,
                    State::Package => State::Prolog,
                    State::Metadata => State::Package,
                    State::Element(i, d) if d > 0 => State::Element(i, d - 1),
                    State::Element(i, _) => {
                        let value = current.trim().to_string();
                        if values[i].is_none() {
                            values[i] = Some(value);
                        }
                        State::Metadata
                    }
                    State::Skip(0, Return::Package) => State::Package,
                    State::Skip(0, Return::Metadata) => State::Metadata,
                    State::Skip(d, r) => State::Skip(d - 1, r),
                };
            }
            Event::Text(t) => {
                if let State::Element(..) = state {
                    current.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if let State::Element(..) = state {
                    current.push_str(&c.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                let entity = r.into_inner().into_owned();
                let reference = format!("&{entity};");
                let resolved =
                    quick_xml::escape::unescape(&reference).map_err(|_| Problem::NuspecEntity {
                        name: name.to_string(),
                        entity: entity.clone(),
                    })?;
                if let State::Element(..) = state {
                    current.push_str(&resolved);
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !seen_root {
        return Err(not_xml("no root element".to_string()));
    }
    if !seen_metadata {
        return Err(Problem::NoMetadata {
            name: name.to_string(),
        });
    }
    // A repeated element is reported, and the first value still gets checked.
    for element in repeated {
        problems.push(Problem::RepeatedElement { element });
    }
    let [id, version, abi_version, library, entry_point, free_result] = values;
    Ok(RawMetadata {
        id,
        version,
        abi_version,
        library,
        entry_point,
        free_result,
    })
}

fn namespace_of(ns: &ResolveResult<'_>) -> Option<String> {
    match ns {
        ResolveResult::Bound(n) => Some(n.as_ref().to_string()),
        ResolveResult::Unbound => None,
        ResolveResult::Unknown(p) => Some(format!("(undeclared prefix {p})")),
    }
}

/// Applies the nuspec rules and defaults. The DotNet engine reads only `virtufinLibrary`
/// (the spec: it ignores the other `virtufin*` elements), so they get their defaults there.
pub(crate) fn apply_rules(
    raw: RawMetadata,
    engine: EngineKind,
    problems: &mut Vec<Problem>,
) -> Option<Metadata> {
    let before = problems.len();
    let id = required(raw.id, "id", problems);
    let version = required(raw.version, "version", problems);

    let (abi_version, entry_point, free_result) = match engine {
        EngineKind::DotNet => (1, "Process".to_string(), "FreeResult".to_string()),
        EngineKind::Native => {
            let abi = match raw.abi_version.as_deref().map(str::trim) {
                None => 1,
                Some(v) => match v.parse::<u64>() {
                    Err(_) => {
                        problems.push(Problem::AbiNotInteger {
                            value: v.to_string(),
                        });
                        1
                    }
                    Ok(n) => match u32::try_from(n)
                        .ok()
                        .filter(|n| SUPPORTED_ABI_VERSIONS.contains(n))
                    {
                        Some(n) => n,
                        None => {
                            problems.push(Problem::AbiUnsupported {
                                value: v.to_string(),
                            });
                            1
                        }
                    },
                },
            };
            let entry = symbol(raw.entry_point, "virtufinEntryPoint", "Process", problems);
            let free = symbol(
                raw.free_result,
                "virtufinFreeResult",
                "FreeResult",
                problems,
            );
            (abi, entry, free)
        }
    };

    let (library, from_id) = match raw.library {
        Some(l) => (Some(l), false),
        None => (id.clone(), true),
    };
    let library = library.and_then(|value| match library_issue(&value) {
        None => Some(value),
        Some(why) => {
            problems.push(Problem::BadLibrary {
                value,
                from_id,
                why,
            });
            None
        }
    });

    match (id, version, library) {
        (Some(id), Some(version), Some(library)) if problems.len() == before => Some(Metadata {
            id,
            version,
            abi_version,
            library,
            entry_point,
            free_result,
        }),
        // The layout can still be checked when only other rules failed, so the author sees
        // those problems too.
        (id, version, Some(library)) => Some(Metadata {
            id: id.unwrap_or_default(),
            version: version.unwrap_or_default(),
            abi_version,
            library,
            entry_point,
            free_result,
        }),
        _ => None,
    }
}

fn required(
    value: Option<String>,
    element: &'static str,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    match value {
        Some(v) if !v.is_empty() => Some(v),
        _ => {
            problems.push(Problem::MissingElement { element });
            None
        }
    }
}

fn symbol(
    value: Option<String>,
    element: &'static str,
    default: &str,
    problems: &mut Vec<Problem>,
) -> String {
    match value {
        None => default.to_string(),
        Some(v) if is_c_identifier(&v) => v,
        Some(v) => {
            problems.push(Problem::BadSymbol { element, value: v });
            default.to_string()
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_c_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why `value` is not a safe library basename, if it is not.
pub(crate) fn library_issue(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("is empty")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Some("may contain only letters, digits, '_', '.' and '-'")
    } else if value.contains("..") {
        Some("must not contain '..'")
    } else if value.chars().count() > MAX_LIBRARY_LEN {
        Some("is longer than 128 characters")
    } else {
        None
    }
}
