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
        [] if scan.refused_root_nuspec => return None,
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
        // Source engines never reach the nuspec rules (inspect() hands them on first).
        EngineKind::DotNet
        | EngineKind::CSharpSource
        | EngineKind::Python
        | EngineKind::PythonWheel => (1, "Process".to_string(), "FreeResult".to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd";

    fn doc(ns: &str, metadata: &str) -> String {
        let xmlns = if ns.is_empty() {
            String::new()
        } else {
            format!(r#" xmlns="{ns}""#)
        };
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<package{xmlns}>
  <metadata>
    {metadata}
  </metadata>
</package>"#
        )
    }

    /// Parses and applies the rules; returns the metadata and the problem messages.
    fn run(engine: EngineKind, xml: &str) -> (Option<Metadata>, Vec<String>) {
        let mut problems = Vec::new();
        let meta = parse("w.nuspec", xml.as_bytes(), &mut problems)
            .and_then(|raw| apply_rules(raw, engine, &mut problems));
        (meta, problems.iter().map(ToString::to_string).collect())
    }

    fn native_ok(xml: &str) -> Metadata {
        let (meta, problems) = run(EngineKind::Native, xml);
        assert_eq!(problems, Vec::<String>::new(), "{xml}");
        meta.expect("metadata")
    }

    #[test]
    fn defaults_come_from_id_and_the_spec() {
        let m = native_ok(&doc(NS, "<id>Echo.Worker</id><version>1.2.3</version>"));
        assert_eq!(
            m,
            Metadata {
                id: "Echo.Worker".into(),
                version: "1.2.3".into(),
                abi_version: 1,
                library: "Echo.Worker".into(),
                entry_point: "Process".into(),
                free_result: "FreeResult".into(),
            }
        );
    }

    #[test]
    fn every_virtufin_element_is_read() {
        let m = native_ok(&doc(
            NS,
            "<id>X</id><version>1</version><virtufinAbiVersion> 1 </virtufinAbiVersion>\
             <virtufinLibrary>echo</virtufinLibrary><virtufinEntryPoint>my_process</virtufinEntryPoint>\
             <virtufinFreeResult>_free2</virtufinFreeResult>",
        ));
        assert_eq!((m.abi_version, m.library.as_str()), (1, "echo"));
        assert_eq!(
            (m.entry_point.as_str(), m.free_result.as_str()),
            ("my_process", "_free2")
        );
    }

    #[test]
    fn every_nuget_namespace_and_none_are_accepted() {
        for ns in NUSPEC_NAMESPACES.iter().copied().chain([""]) {
            let m = native_ok(&doc(ns, "<id>X</id><version>1</version>"));
            assert_eq!(m.id, "X", "namespace {ns:?}");
        }
    }

    #[test]
    fn bom_comments_cdata_entities_and_unknown_elements_are_handled() {
        let xml = format!(
            "\u{feff}{}",
            doc(
                NS,
                "<!-- c --><id>A&amp;B</id><version><![CDATA[1.0]]></version>\
                 <dependencies><group><dependency id=\"id\" version=\"9\"/></group></dependencies>\
                 <tags>a b</tags><virtufinLibrary>&#x65;cho</virtufinLibrary>",
            )
        );
        let (meta, problems) = run(EngineKind::Native, &xml);
        // "A&B" is a fine id but not a library name; the library is given explicitly.
        assert_eq!(problems, Vec::<String>::new());
        let m = meta.unwrap();
        assert_eq!(
            (m.id.as_str(), m.version.as_str(), m.library.as_str()),
            ("A&B", "1.0", "echo")
        );
    }

    #[test]
    fn dotnet_ignores_the_native_only_elements() {
        let xml = doc(
            NS,
            "<id>W</id><version>1</version><virtufinAbiVersion>7</virtufinAbiVersion>\
             <virtufinEntryPoint>not valid</virtufinEntryPoint><virtufinLibrary>Worker.Lib</virtufinLibrary>",
        );
        let (meta, problems) = run(EngineKind::DotNet, &xml);
        assert_eq!(problems, Vec::<String>::new());
        let m = meta.unwrap();
        assert_eq!(
            (m.abi_version, m.entry_point.as_str(), m.library.as_str()),
            (1, "Process", "Worker.Lib")
        );
    }

    /// Each rule, with the exact message an author sees. Several problems in one nuspec are
    /// all reported.
    #[test]
    fn every_rule_has_its_message() {
        let long = "a".repeat(129);
        let ok128 = "a".repeat(128);
        let table: Vec<(String, Vec<String>)> = vec![
            (doc(NS, "<version>1</version>"), vec!["nuspec <metadata> has no <id>, which is required".into()]),
            (doc(NS, "<id>X</id>"), vec!["nuspec <metadata> has no <version>, which is required".into()]),
            (
                doc(NS, "<id> </id><version/>"),
                vec![
                    "nuspec <metadata> has no <id>, which is required".into(),
                    "nuspec <metadata> has no <version>, which is required".into(),
                ],
            ),
            (
                doc(NS, "<id>X</id><id>Y</id><version>1</version>"),
                vec!["nuspec <metadata> has more than one <id>".into()],
            ),
            (
                doc(NS, "<id>X</id><version>1</version><virtufinAbiVersion>one</virtufinAbiVersion>"),
                vec![r#"virtufinAbiVersion "one" is not an integer"#.into()],
            ),
            (
                doc(NS, "<id>X</id><version>1</version><virtufinAbiVersion>-1</virtufinAbiVersion>"),
                vec![r#"virtufinAbiVersion "-1" is not an integer"#.into()],
            ),
            (
                doc(NS, "<id>X</id><version>1</version><virtufinAbiVersion>2</virtufinAbiVersion>"),
                vec!["virtufinAbiVersion 2 is not supported; supported versions: 1".into()],
            ),
            (
                doc(NS, "<id>X</id><version>1</version><virtufinAbiVersion>99999999999</virtufinAbiVersion>"),
                vec!["virtufinAbiVersion 99999999999 is not supported; supported versions: 1".into()],
            ),
            (
                doc(NS, "<id>X</id><version>1</version><virtufinLibrary>../../etc/x</virtufinLibrary>"),
                vec![r#"virtufinLibrary "../../etc/x" may contain only letters, digits, '_', '.' and '-'"#.into()],
            ),
            (
                doc(NS, "<id>X</id><version>1</version><virtufinLibrary>a..b</virtufinLibrary>"),
                vec![r#"virtufinLibrary "a..b" must not contain '..'"#.into()],
            ),
            (
                doc(NS, &format!("<id>X</id><version>1</version><virtufinLibrary>{long}</virtufinLibrary>")),
                vec![format!("virtufinLibrary {long:?} is longer than 128 characters")],
            ),
            (
                doc(NS, "<id>X</id><version>1</version><virtufinLibrary></virtufinLibrary>"),
                vec![r#"virtufinLibrary "" is empty"#.into()],
            ),
            (
                doc(NS, "<id>My Worker</id><version>1</version>"),
                vec![
                    r#"the library name (taken from <id>; set <virtufinLibrary> to override) "My Worker" may contain only letters, digits, '_', '.' and '-'"#
                        .into(),
                ],
            ),
            (
                doc(NS, "<id>X</id><version>1</version><virtufinEntryPoint>1st</virtufinEntryPoint><virtufinFreeResult>free-it</virtufinFreeResult>"),
                vec![
                    r#"virtufinEntryPoint "1st" is not a valid C identifier (letters, digits and '_', not starting with a digit)"#.into(),
                    r#"virtufinFreeResult "free-it" is not a valid C identifier (letters, digits and '_', not starting with a digit)"#.into(),
                ],
            ),
            (
                doc(NS, "<id>X</id><version>1</version><virtufinEntryPoint></virtufinEntryPoint>"),
                vec![r#"virtufinEntryPoint "" is not a valid C identifier (letters, digits and '_', not starting with a digit)"#.into()],
            ),
            (
                // Everything wrong at once: all of it is reported.
                doc(NS, "<virtufinAbiVersion>3</virtufinAbiVersion><virtufinLibrary>a/b</virtufinLibrary><virtufinFreeResult>x y</virtufinFreeResult>"),
                vec![
                    "nuspec <metadata> has no <id>, which is required".into(),
                    "nuspec <metadata> has no <version>, which is required".into(),
                    "virtufinAbiVersion 3 is not supported; supported versions: 1".into(),
                    r#"virtufinFreeResult "x y" is not a valid C identifier (letters, digits and '_', not starting with a digit)"#.into(),
                    r#"virtufinLibrary "a/b" may contain only letters, digits, '_', '.' and '-'"#.into(),
                ],
            ),
            (doc(NS, &format!("<id>X</id><version>1</version><virtufinLibrary>{ok128}</virtufinLibrary>")), vec![]),
            // ---- the document ----
            (
                "this is not xml".into(),
                vec![r#"nuspec "w.nuspec" is not well-formed XML: no root element"#.into()],
            ),
            (
                "<package><metadata><id>X</id></package>".into(),
                vec![r#"nuspec "w.nuspec" is not well-formed XML: ill-formed document: expected `</metadata>`, but `</package>` was found (near byte 29)"#.into()],
            ),
            (
                r#"<?xml version="1.0"?><nuspec><metadata/></nuspec>"#.into(),
                vec![r#"nuspec "w.nuspec" has the root element <nuspec>; expected <package>"#.into()],
            ),
            (
                r#"<package xmlns="http://example.com/evil"><metadata><id>X</id><version>1</version></metadata></package>"#.into(),
                vec![r#"nuspec "w.nuspec" uses the namespace "http://example.com/evil", which is not a NuGet nuspec namespace"#.into()],
            ),
            (
                format!(r#"<package xmlns="{NS}"><files/></package>"#),
                vec![r#"nuspec "w.nuspec" has no <metadata> element"#.into()],
            ),
            (
                // <metadata> in another namespace is not NuGet's.
                format!(r#"<package xmlns="{NS}" xmlns:o="urn:other"><o:metadata><o:id>X</o:id></o:metadata></package>"#),
                vec![r#"nuspec "w.nuspec" has no <metadata> element"#.into()],
            ),
            (
                // Billion laughs: refused at the DOCTYPE, before any entity is declared.
                r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><package><metadata><id>&lol2;</id><version>1</version></metadata></package>"#.into(),
                vec![r#"nuspec "w.nuspec" has a DOCTYPE declaration; DTDs and entity declarations are refused"#.into()],
            ),
            (
                // External entity (XXE).
                r#"<?xml version="1.0"?><!DOCTYPE p [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><package><metadata><id>&xxe;</id><version>1</version></metadata></package>"#.into(),
                vec![r#"nuspec "w.nuspec" has a DOCTYPE declaration; DTDs and entity declarations are refused"#.into()],
            ),
            (
                // An entity used without any declaration.
                doc(NS, "<id>&xxe;</id><version>1</version>"),
                vec![r#"nuspec "w.nuspec" uses the undefined entity '&xxe;'"#.into()],
            ),
        ];
        for (xml, expected) in table {
            let (_, got) = run(EngineKind::Native, &xml);
            assert_eq!(got, expected, "nuspec:\n{xml}");
        }
    }

    #[test]
    fn nuspec_that_is_not_utf8_is_refused() {
        let mut problems = Vec::new();
        assert!(parse("w.nuspec", b"<package>\xff\xfe</package>", &mut problems).is_none());
        assert_eq!(
            problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec![r#"nuspec "w.nuspec" is not UTF-8 text"#]
        );
    }

    #[test]
    fn c_identifiers_and_library_names() {
        for ok in ["Process", "_x", "a1_b2", "FreeResult"] {
            assert!(is_c_identifier(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "é", "a.b"] {
            assert!(!is_c_identifier(bad), "{bad}");
        }
        for ok in ["echo", "Virtufin.Worker.Echo", "a-b_c.d", "A9"] {
            assert_eq!(library_issue(ok), None, "{ok}");
        }
        assert_eq!(
            library_issue("lib/x"),
            Some("may contain only letters, digits, '_', '.' and '-'")
        );
        assert_eq!(library_issue("x.."), Some("must not contain '..'"));
    }
}
