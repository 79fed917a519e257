//! The zip walk: every entry is checked for a safe name, a plain type and honest sizes.
//!
//! Sizes are counted while decompressing, with the reader stopped one byte past the limit;
//! the sizes in the zip headers only let us refuse an honest bomb without unpacking it.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Cursor, Read, Write};

use zip::CompressionMethod;
use zip::ZipArchive;

use super::{Limits, MAX_NAME_BYTES, MAX_PATH_DEPTH, NameIssue, Problem};

/// Entries up to this size are never refused for their compression ratio: small files of
/// zeros or padding legitimately compress hundreds of times, and cost nothing to unpack.
pub(crate) const RATIO_FLOOR_BYTES: u64 = 1 << 20;

/// A zip entry that passed every check.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The normalised `/`-separated path: no `.` or empty components, no trailing `/`.
    pub path: String,
    /// A folder entry.
    pub is_dir: bool,
}

/// A `.nuspec` found at the package root, with its bytes (`None` when they could not be read
/// within the limits; the reason is among the scan's problems).
#[derive(Debug, Clone)]
pub(crate) struct NuspecFile {
    pub path: String,
    pub bytes: Option<Vec<u8>>,
}

/// What the walk found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Entries that passed every check, in central-directory order.
    pub entries: Vec<Entry>,
    /// `.nuspec` files at the root.
    pub nuspecs: Vec<NuspecFile>,
    /// `.nuspec` files in subfolders (for a hint).
    pub nested_nuspecs: Vec<String>,
    /// A root `.nuspec` entry was refused (link, encrypted, colliding...): its problem is
    /// reported, so "no nuspec" would only mislead.
    pub refused_root_nuspec: bool,
    /// Every archive problem found.
    pub problems: Vec<Problem>,
}

/// Whether `path` (normalised) is a root `.nuspec` (extension matched case-insensitively, as
/// NuGet does).
pub(crate) fn is_root_nuspec(path: &str) -> bool {
    !path.contains('/') && has_nuspec_extension(path)
}

fn has_nuspec_extension(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.len() > ".nuspec".len()
        && file.is_char_boundary(file.len() - ".nuspec".len())
        && file[file.len() - ".nuspec".len()..].eq_ignore_ascii_case(".nuspec")
}

/// Opens the zip, refusing early only what stops us reading further.
pub(crate) fn open<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<ZipArchive<Cursor<&'a [u8]>>, Vec<Problem>> {
    // The central directory is parsed whole by the zip crate, so refuse a huge declared count
    // before it allocates for it.
    if let Some(count) = declared_entry_count(bytes)
        && count > limits.max_entries as u64
    {
        return Err(vec![Problem::TooManyEntries {
            count,
            limit: limits.max_entries,
        }]);
    }
    let archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
        vec![Problem::NotZip {
            reason: e.to_string(),
        }]
    })?;
    if archive.len() > limits.max_entries {
        return Err(vec![Problem::TooManyEntries {
            count: archive.len() as u64,
            limit: limits.max_entries,
        }]);
    }
    Ok(archive)
}

/// Walks every entry; `Err` only when the archive cannot be walked at all.
pub(crate) fn scan(bytes: &[u8], limits: &Limits) -> Result<Scan, Vec<Problem>> {
    let mut archive = open(bytes, limits)?;
    let mut scan = Scan::default();

    if archive.has_duplicate_names() {
        // The zip crate keeps one entry per name; count the raw names to say which repeat.
        for (name, count) in raw_duplicate_names(bytes, archive.central_directory_start(), limits) {
            scan.problems.push(Problem::DuplicateName { name, count });
        }
    }

    // Honest headers let us refuse a bomb without unpacking it.
    let declared_total: u64 = (0..archive.len())
        .filter_map(|i| archive.by_index_data(i).ok())
        .map(|e| e.size())
        .fold(0u64, u64::saturating_add);
    let mut total_exceeded = declared_total > limits.max_total_bytes;
    if total_exceeded {
        scan.problems.push(Problem::TotalTooLarge {
            limit: limits.max_total_bytes,
        });
    }

    let mut total: u64 = 0;
    let mut root_nuspec_entries = 0usize;
    let mut seen: HashMap<String, String> = HashMap::new(); // folded key -> first name
    let mut files: HashMap<String, String> = HashMap::new(); // folded key of file entries
    for index in 0..archive.len() {
        let Ok(meta) = archive.by_index_data(index) else {
            continue;
        };
        let raw = meta.name_raw().to_vec();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let (path, is_dir) = match check_name(&raw) {
            Ok(p) => p,
            Err(issue) => {
                scan.problems
                    .push(Problem::UnsafeName { name: shown, issue });
                continue;
            }
        };
        if is_root_nuspec(&path) && !is_dir {
            root_nuspec_entries += 1;
        }
        let mode = if meta.system() == zip::System::Unix {
            Some(meta.external_attributes() >> 16)
        } else {
            None
        };
        let file_type = mode.map(|m| m & 0o170000).unwrap_or(0);
        if file_type == 0o120000 {
            scan.problems.push(Problem::Symlink { name: shown });
            continue;
        }
        if !matches!(file_type, 0 | 0o100000 | 0o040000) {
            scan.problems.push(Problem::SpecialFile {
                name: shown,
                mode: mode.unwrap_or(0),
            });
            continue;
        }
        let is_dir = is_dir || meta.is_dir() || file_type == 0o040000;

        let key = path.to_lowercase();
        if let Some(first) = seen.get(&key) {
            scan.problems.push(Problem::CollidingNames {
                first: first.clone(),
                second: shown,
            });
            continue;
        }
        seen.insert(key.clone(), shown.clone());
        if let Some(file) = ancestors(&key).find_map(|a| files.get(a)) {
            scan.problems.push(Problem::InsideFile {
                name: shown,
                file: file.clone(),
            });
            continue;
        }
        if !is_dir {
            files.insert(key, shown.clone());
        }

        if meta.encrypted() {
            scan.problems.push(Problem::Encrypted { name: shown });
            continue;
        }
        let method = meta.compression();
        if !matches!(
            method,
            CompressionMethod::Stored | CompressionMethod::Deflated
        ) {
            scan.problems.push(Problem::UnsupportedCompression {
                name: shown,
                method: method.to_string(),
            });
            continue;
        }
        if is_dir {
            scan.entries.push(Entry { path, is_dir });
            continue;
        }

        let is_nuspec = is_root_nuspec(&path);
        if has_nuspec_extension(&path) && !is_nuspec {
            scan.nested_nuspecs.push(path.clone());
        }
        let compressed = meta.compressed_size();
        let declared = meta.size();
        let budget = Budget::new(
            limits,
            compressed,
            limits.max_total_bytes.saturating_sub(total),
        );
        // Refuse from the headers first, without unpacking.
        if declared > limits.max_entry_bytes {
            scan.problems.push(Problem::EntryTooLarge {
                name: shown,
                limit: limits.max_entry_bytes,
            });
            continue;
        }
        if declared > budget.ratio_cap {
            scan.problems.push(Problem::RatioTooHigh {
                name: shown,
                limit: limits.max_ratio,
            });
            continue;
        }
        if total_exceeded && !is_nuspec {
            // Already refused as a whole; only the nuspec is still worth reading for its report.
            scan.entries.push(Entry { path, is_dir });
            continue;
        }

        let nuspec_cap = is_nuspec.then_some(limits.max_nuspec_bytes);
        let mut sink = Sink::new(nuspec_cap);
        let outcome = match archive.by_index(index) {
            Ok(mut reader) => copy_limited(
                &mut reader,
                &mut sink,
                budget.cap().min(nuspec_cap.unwrap_or(u64::MAX)),
            ),
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(Copied::All(n)) if n != declared => {
                total = total.saturating_add(n);
                scan.problems.push(Problem::SizeMismatch {
                    name: shown,
                    declared,
                });
            }
            Ok(Copied::All(n)) => {
                total = total.saturating_add(n);
                if is_nuspec {
                    scan.nuspecs.push(NuspecFile {
                        path: path.clone(),
                        bytes: Some(sink.into_bytes()),
                    });
                }
                scan.entries.push(Entry { path, is_dir });
            }
            Ok(Copied::Exceeded) => {
                let cap = budget.cap();
                let problem = if let Some(limit) = nuspec_cap.filter(|&n| n < cap) {
                    Problem::NuspecTooLarge { name: shown, limit }
                } else if cap == budget.remaining_total {
                    total_exceeded = true;
                    Problem::TotalTooLarge {
                        limit: limits.max_total_bytes,
                    }
                } else if cap == budget.ratio_cap {
                    Problem::RatioTooHigh {
                        name: shown,
                        limit: limits.max_ratio,
                    }
                } else {
                    Problem::EntryTooLarge {
                        name: shown,
                        limit: limits.max_entry_bytes,
                    }
                };
                if !scan.problems.contains(&problem) {
                    scan.problems.push(problem);
                }
                if is_nuspec {
                    scan.nuspecs.push(NuspecFile {
                        path: path.clone(),
                        bytes: None,
                    });
                }
            }
            Err(e) => {
                // The zip reader itself refuses to unpack past the declared size (our
                // counting is the second line); say plainly that the headers lie.
                let past_declared = e.kind() == io::ErrorKind::InvalidData
                    && e.to_string().contains("larger than its declared");
                scan.problems
                    .push(if past_declared || sink.written > declared {
                        Problem::SizeMismatch {
                            name: shown,
                            declared,
                        }
                    } else {
                        Problem::CorruptEntry {
                            name: shown,
                            reason: e.to_string(),
                        }
                    });
                if is_nuspec {
                    scan.nuspecs.push(NuspecFile {
                        path: path.clone(),
                        bytes: None,
                    });
                }
            }
        }
    }
    scan.refused_root_nuspec = root_nuspec_entries > scan.nuspecs.len();
    Ok(scan)
}

/// How many bytes one entry may unpack to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub entry: u64,
    pub ratio_cap: u64,
    pub remaining_total: u64,
}

impl Budget {
    pub(crate) fn new(limits: &Limits, compressed: u64, remaining_total: u64) -> Budget {
        Budget {
            entry: limits.max_entry_bytes,
            ratio_cap: compressed
                .saturating_mul(limits.max_ratio)
                .max(RATIO_FLOOR_BYTES),
            remaining_total,
        }
    }

    /// The smallest of the three limits.
    pub(crate) fn cap(&self) -> u64 {
        self.entry.min(self.ratio_cap).min(self.remaining_total)
    }
}

/// The outcome of [`copy_limited`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Copied {
    /// The whole entry, this many bytes.
    All(u64),
    /// More than the limit; copying stopped one byte past it.
    Exceeded,
}

/// Copies at most `limit` bytes, reading one more to tell "exactly the limit" from "over".
pub(crate) fn copy_limited(
    reader: &mut impl Read,
    out: &mut impl Write,
    limit: u64,
) -> io::Result<Copied> {
    let n = io::copy(&mut reader.take(limit.saturating_add(1)), out)?;
    Ok(if n > limit {
        Copied::Exceeded
    } else {
        Copied::All(n)
    })
}

/// Discards bytes, or keeps them when asked (the nuspec).
struct Sink {
    keep: Option<Vec<u8>>,
    written: u64,
}

impl Sink {
    fn new(keep_up_to: Option<u64>) -> Sink {
        Sink {
            keep: keep_up_to.map(|_| Vec::new()),
            written: 0,
        }
    }
    fn into_bytes(self) -> Vec<u8> {
        self.keep.unwrap_or_default()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(v) = &mut self.keep {
            v.extend_from_slice(buf);
        }
        self.written = self.written.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The proper ancestors of a `/`-separated path: `a/b/c` -> `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Checks a raw entry name; returns the normalised path and whether it names a folder.
pub(crate) fn check_name(raw: &[u8]) -> Result<(String, bool), NameIssue> {
    let name = std::str::from_utf8(raw).map_err(|_| NameIssue::NotUtf8)?;
    if name.len() > MAX_NAME_BYTES {
        return Err(NameIssue::TooLong(name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err(NameIssue::ControlCharacter);
    }
    if name.starts_with('/') {
        return Err(NameIssue::Absolute);
    }
    if name.contains('\\') {
        return Err(NameIssue::Backslash);
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err(NameIssue::DriveLetter);
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(NameIssue::ParentComponent),
            p if p.len() > 255 => return Err(NameIssue::ComponentTooLong),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(NameIssue::Empty);
    }
    if parts.len() > MAX_PATH_DEPTH {
        return Err(NameIssue::TooDeep(parts.len()));
    }
    Ok((parts.join("/"), name.ends_with('/')))
}

/// The entry count the end-of-central-directory record declares (zip64 aware), if found.
fn declared_entry_count(bytes: &[u8]) -> Option<u64> {
    const EOCD: [u8; 4] = [b'P', b'K', 5, 6];
    const EOCD64_LOCATOR: [u8; 4] = [b'P', b'K', 6, 7];
    const EOCD64: [u8; 4] = [b'P', b'K', 6, 6];
    if bytes.len() < 22 {
        return None;
    }
    let lowest = bytes.len().saturating_sub(22 + 0xFFFF);
    let pos = (lowest..=bytes.len() - 22)
        .rev()
        .find(|&p| bytes[p..p + 4] == EOCD)?;
    let count = u64::from(u16::from_le_bytes([bytes[pos + 10], bytes[pos + 11]]));
    if count != 0xFFFF || pos < 20 || bytes[pos - 20..pos - 16] != EOCD64_LOCATOR {
        return Some(count);
    }
    let at = u64::from_le_bytes(bytes[pos - 12..pos - 4].try_into().ok()?);
    let at = usize::try_from(at).ok()?;
    if bytes.get(at..at + 4)? != EOCD64 {
        return Some(count);
    }
    Some(u64::from_le_bytes(
        bytes.get(at + 32..at + 40)?.try_into().ok()?,
    ))
}

/// Names that appear more than once in the central directory, with their counts.
fn raw_duplicate_names(bytes: &[u8], start: u64, limits: &Limits) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut order: Vec<Vec<u8>> = Vec::new();
    let Ok(mut pos) = usize::try_from(start) else {
        return Vec::new();
    };
    let u16_at = |p: usize| usize::from(u16::from_le_bytes([bytes[p], bytes[p + 1]]));
    for _ in 0..=limits.max_entries {
        if pos + 46 > bytes.len() || bytes[pos..pos + 4] != [b'P', b'K', 1, 2] {
            break;
        }
        let (n, e, c) = (u16_at(pos + 28), u16_at(pos + 30), u16_at(pos + 32));
        let Some(name) = bytes.get(pos + 46..pos + 46 + n) else {
            break;
        };
        let count = counts.entry(name.to_vec()).or_insert(0);
        *count += 1;
        if *count == 2 {
            order.push(name.to_vec());
        }
        pos += 46 + n + e + c;
    }
    order
        .into_iter()
        .map(|name| {
            let count = counts[&name];
            (String::from_utf8_lossy(&name).into_owned(), count)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_or_refused_with_the_reason() {
        let deep = vec!["d"; MAX_PATH_DEPTH + 1].join("/");
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        let long_part = format!("a/{}", "b".repeat(256));
        type Expected<'a> = Result<(&'a str, bool), NameIssue>;
        let table: Vec<(&[u8], Expected)> = vec![
            (b"lib/net8.0/x.dll", Ok(("lib/net8.0/x.dll", false))),
            (b"./lib//net8.0/./x.dll", Ok(("lib/net8.0/x.dll", false))),
            (b"lib/", Ok(("lib", true))),
            (b"[Content_Types].xml", Ok(("[Content_Types].xml", false))),
            ("caf\u{e9}/x".as_bytes(), Ok(("caf\u{e9}/x", false))),
            (b"../evil.so", Err(NameIssue::ParentComponent)),
            (b"a/../../evil.so", Err(NameIssue::ParentComponent)),
            (b"a/..", Err(NameIssue::ParentComponent)),
            (b"/etc/passwd", Err(NameIssue::Absolute)),
            (b"a\\..\\evil", Err(NameIssue::Backslash)),
            (b"C:/evil", Err(NameIssue::DriveLetter)),
            (b"c:evil", Err(NameIssue::DriveLetter)),
            (b"a\nb", Err(NameIssue::ControlCharacter)),
            (b"a\0b", Err(NameIssue::ControlCharacter)),
            (b"", Err(NameIssue::Empty)),
            (b"./", Err(NameIssue::Empty)),
            (b"\xff\xfe.so", Err(NameIssue::NotUtf8)),
            (deep.as_bytes(), Err(NameIssue::TooDeep(MAX_PATH_DEPTH + 1))),
            (long.as_bytes(), Err(NameIssue::TooLong(MAX_NAME_BYTES + 1))),
            (long_part.as_bytes(), Err(NameIssue::ComponentTooLong)),
        ];
        for (raw, expected) in table {
            let got = check_name(raw);
            let expected = expected.map(|(p, d)| (p.to_string(), d));
            assert_eq!(got, expected, "name {:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn root_nuspec_is_matched_case_insensitively_at_the_root_only() {
        assert!(is_root_nuspec("Echo.nuspec"));
        assert!(is_root_nuspec("Echo.NuSpec"));
        assert!(!is_root_nuspec(".nuspec"));
        assert!(!is_root_nuspec("sub/Echo.nuspec"));
        assert!(!is_root_nuspec("Echo.nuspec.bak"));
        assert!(!is_root_nuspec("\u{e9}\u{e9}\u{e9}\u{e9}"));
    }

    #[test]
    fn copy_limited_stops_one_byte_past_the_limit() {
        let data = [7u8; 100];
        let mut out = Vec::new();
        assert_eq!(
            copy_limited(&mut &data[..], &mut out, 100).unwrap(),
            Copied::All(100)
        );
        let mut out = Vec::new();
        assert_eq!(
            copy_limited(&mut &data[..], &mut out, 99).unwrap(),
            Copied::Exceeded
        );
        assert_eq!(
            out.len(),
            100,
            "reads exactly one byte past the limit, no more"
        );
    }

    #[test]
    fn budget_names_the_smallest_limit() {
        let limits = Limits {
            max_ratio: 10,
            ..Limits::default()
        };
        let b = Budget::new(&limits, 1 << 20, u64::MAX);
        assert_eq!(b.ratio_cap, 10 << 20);
        assert_eq!(b.cap(), 10 << 20);
        // Small entries are never held to the ratio.
        assert_eq!(
            Budget::new(&limits, 10, u64::MAX).ratio_cap,
            RATIO_FLOOR_BYTES
        );
        assert_eq!(Budget::new(&limits, 1 << 20, 5).cap(), 5);
    }

    fn zip_of(names: &[&str]) -> Vec<u8> {
        let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for name in names {
            zw.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zw.write_all(b"x").unwrap();
        }
        zw.finish().unwrap().into_inner()
    }

    #[test]
    fn declared_entry_count_reads_the_end_record() {
        assert_eq!(declared_entry_count(&zip_of(&["a", "b", "c"])), Some(3));
        assert_eq!(declared_entry_count(&zip_of(&[])), Some(0));
        assert_eq!(declared_entry_count(b"not a zip at all, just text"), None);
        assert_eq!(declared_entry_count(b"PK"), None);
    }

    #[test]
    fn declared_entry_count_follows_the_zip64_end_record() {
        // Over 65535 entries the 16-bit count reads 0xFFFF and the real one is in the zip64
        // record, which the writer then emits.
        let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts =
            zip::write::SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for i in 0..70_000u32 {
            zw.start_file(format!("{i}"), opts).unwrap();
        }
        let bytes = zw.finish().unwrap().into_inner();
        assert_eq!(declared_entry_count(&bytes), Some(70_000));
        let err = open(&bytes, &Limits::default()).err().unwrap();
        assert_eq!(
            err,
            vec![Problem::TooManyEntries {
                count: 70_000,
                limit: 10_000
            }]
        );
    }

    #[test]
    fn raw_duplicates_are_counted_from_the_central_directory() {
        let mut bytes = zip_of(&["aa", "bb", "cc"]);
        // Rename "bb" to "aa" and "cc" to "aa" everywhere (local and central headers).
        for from in [&b"bb"[..], &b"cc"[..]] {
            let positions: Vec<usize> = bytes
                .windows(2)
                .enumerate()
                .filter(|(_, w)| *w == from)
                .map(|(i, _)| i)
                .collect();
            for p in positions {
                bytes[p..p + 2].copy_from_slice(b"aa");
            }
        }
        let archive = ZipArchive::new(Cursor::new(&bytes[..])).unwrap();
        assert!(archive.has_duplicate_names());
        let dups = raw_duplicate_names(
            &bytes,
            archive.central_directory_start(),
            &Limits::default(),
        );
        assert_eq!(dups, vec![("aa".to_string(), 3)]);
    }
}
