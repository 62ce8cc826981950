//! Reading unit directories: every unit file, drop-in and link directory
//! of one generation, or of two at once.
//!
//! Two generations of one machine mostly link the same files of the store:
//! a switch changes a few units of thousands. When both are read, each
//! name is looked at in the old generation and then in the new one, and an
//! entry of the new one that is certainly the same file
//! ([`generation_fs::Peek::same_file`]) takes the old one's text instead of
//! being read again; a unit whose every file is shared takes the old one's
//! parsed settings too. The names are split among a few threads, each with
//! its own handles on the generations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use generation_fs::{Entry, GenerationDir};
use plan_model::unit_name;

use super::{LoadError, ReadLinks, UNIT_FILE_LIMIT, list_dir, resolve_dir_in, utf8};
use crate::generation::{LINK_KINDS, Units};
use crate::unit_file::{DropIn, Folding, Fragment, UnitFile};

/// Fewer names than this are read on the calling thread: starting threads
/// would cost more than they save.
const NAMES_PER_THREAD: usize = 256;
/// The most threads that read one pair of unit directories.
const MAX_THREADS: usize = 4;

/// A unit file or drop-in as found on disk.
#[derive(Clone, Debug)]
pub(super) enum Source {
    Masked,
    Text { shown: PathBuf, text: Arc<str> },
}

impl Source {
    /// Tells whether two sources are the very same text read once (or
    /// both masks).
    fn shared_with(&self, other: &Source) -> bool {
        match (self, other) {
            (Source::Masked, Source::Masked) => true,
            (Source::Text { text: a, .. }, Source::Text { text: b, .. }) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A unit file or drop-in read, with the identity of the file its entry
/// led to ([`generation_fs::Peek::identity`]).
#[derive(Debug)]
pub(super) struct Read {
    identity: Option<PathBuf>,
    pub(super) source: Source,
}

/// A unit directory as read, before its units are put together.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Unit files by name.
    pub(super) fragments: BTreeMap<String, Read>,
    /// Drop-in directories by unit, each file by name, sorted.
    pub(super) drop_in_dirs: BTreeMap<String, Vec<(String, Read)>>,
    /// The `.wants`/`.requires`/`.upholds` links.
    pub(super) deps: ReadLinks,
}

impl Scan {
    fn append(&mut self, mut other: Scan) {
        self.fragments.append(&mut other.fragments);
        self.drop_in_dirs.append(&mut other.drop_in_dirs);
        self.deps.append(&mut other.deps);
    }
}

/// One generation's unit directory to read.
pub(super) struct Dir<'a> {
    /// The generation, as given.
    pub(super) root: &'a Path,
    /// The directory as errors show it.
    pub(super) shown: &'a Path,
    /// The directory after following links.
    pub(super) physical: &'a Path,
    /// Its entries, sorted.
    pub(super) names: &'a [String],
}

/// The outcome of reading one generation's directory: `None` when there
/// was no directory to read.
pub(super) type Outcome = Option<Result<Scan, LoadError>>;

/// Reads the unit directories of up to two generations. The new one takes
/// the old one's texts where an entry is the same file. Each side stops
/// at its first error, in name order, as if read alone.
pub(super) fn scan_dirs(old: Option<&Dir<'_>>, new: Option<&Dir<'_>>) -> (Outcome, Outcome) {
    let mut names: Vec<&str> = old.iter().chain(new.iter()).flat_map(|d| d.names.iter().map(String::as_str)).collect();
    names.sort_unstable();
    names.dedup();
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
    let threads = (names.len() / NAMES_PER_THREAD).clamp(1, parallel);
    let chunk = names.len().div_ceil(threads).max(1);
    let parts: Vec<(Outcome, Outcome)> = if threads == 1 {
        vec![scan_names(old, new, &names)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> =
                names.chunks(chunk).map(|part| scope.spawn(move || scan_names(old, new, part))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        })
    };
    let mut out = (old.map(|_| Ok(Scan::default())), new.map(|_| Ok(Scan::default())));
    for (o, n) in parts {
        merge(&mut out.0, o);
        merge(&mut out.1, n);
    }
    out
}

/// Adds a later part of the names to what was read before it; the first
/// error stays.
fn merge(acc: &mut Outcome, part: Outcome) {
    match (acc.as_mut(), part) {
        (Some(Ok(scan)), Some(Ok(more))) => scan.append(more),
        (Some(Ok(_)), Some(Err(err))) => *acc = Some(Err(err)),
        _ => {}
    }
}

/// Reads `names` (sorted) in both directories, on this thread.
fn scan_names(old: Option<&Dir<'_>>, new: Option<&Dir<'_>>, names: &[&str]) -> (Outcome, Outcome) {
    let (old_g, mut old_scan) = start(old);
    let (new_g, mut new_scan) = start(new);
    for &name in names {
        if let (Some(dir), Some(g), Some(Ok(scan))) = (old, &old_g, &mut old_scan)
            && has(dir, name)
            && let Err(err) = scan_entry(g, dir, name, scan, None)
        {
            old_scan = Some(Err(err));
        }
        let twin = match &old_scan {
            Some(Ok(scan)) => Some(scan),
            _ => None,
        };
        if let (Some(dir), Some(g), Some(Ok(scan))) = (new, &new_g, &mut new_scan)
            && has(dir, name)
            && let Err(err) = scan_entry(g, dir, name, scan, twin)
        {
            new_scan = Some(Err(err));
        }
    }
    (old_scan, new_scan)
}

/// Opens a generation for one thread's reading.
fn start(dir: Option<&Dir<'_>>) -> (Option<GenerationDir>, Outcome) {
    match dir.map(|d| GenerationDir::open(d.root)) {
        None => (None, None),
        Some(Ok(g)) => (Some(g), Some(Ok(Scan::default()))),
        Some(Err(err)) => (None, Some(Err(err.into()))),
    }
}

fn has(dir: &Dir<'_>, name: &str) -> bool {
    dir.names.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
}

/// Reads one entry of a unit directory into `scan`: a unit file, a drop-in
/// directory or a link directory; anything else is skipped.
fn scan_entry(
    g: &GenerationDir,
    dir: &Dir<'_>,
    name: &str,
    scan: &mut Scan,
    twin: Option<&Scan>,
) -> Result<(), LoadError> {
    let shown = dir.shown.join(name);
    if let Some(unit) = name.strip_suffix(".d").filter(|u| unit_name::is_valid(u)) {
        let Some(physical) = resolve_dir_in(g, dir.physical, name, &shown)? else { return Ok(()) };
        let twins = twin.and_then(|t| t.drop_in_dirs.get(unit)).map_or(&[][..], Vec::as_slice);
        let mut files = Vec::new();
        for file in list_dir(&shown, &physical)? {
            if file.ends_with(".conf") {
                let twin = twins.binary_search_by(|(f, _)| f.as_str().cmp(&file)).ok().map(|i| &twins[i].1);
                let read = read_source(g, &physical, &file, &shown, twin)?;
                files.push((file, read));
            }
        }
        scan.drop_in_dirs.insert(unit.to_owned(), files);
    } else if let Some((unit, kind)) = name.rsplit_once('.').and_then(|(u, k)| {
        let kind = LINK_KINDS.iter().find(|&&known| known == k)?;
        unit_name::is_valid(u).then_some((u, *kind))
    }) {
        let Some(physical) = resolve_dir_in(g, dir.physical, name, &shown)? else { return Ok(()) };
        let linked = list_dir(&shown, &physical)?.into_iter().filter(|n| unit_name::is_valid(n)).collect();
        scan.deps.entry(unit.to_owned()).or_default().insert(kind, linked);
    } else if unit_name::is_valid(name) {
        let twin = twin.and_then(|t| t.fragments.get(name));
        let read = read_source(g, dir.physical, name, dir.shown, twin)?;
        scan.fragments.insert(name.to_owned(), read);
    }
    Ok(())
}

/// Reads one unit file or drop-in, `name` in the physical directory `dir`
/// shown as `dir_shown`. When `twin`, the other generation's entry of the
/// same name, is the same file, its text is taken instead.
fn read_source(
    g: &GenerationDir,
    dir: &Path,
    name: &str,
    dir_shown: &Path,
    twin: Option<&Read>,
) -> Result<Read, LoadError> {
    let shown = dir_shown.join(name);
    let peek = g.peek(dir, name);
    let identity = peek.identity();
    let same = |t: &&Read| identity.is_some() && t.identity.as_deref() == identity;
    if let Some(Read { source: Source::Text { text, .. }, .. }) = twin.filter(same) {
        return Ok(Read {
            source: Source::Text { shown, text: Arc::clone(text) },
            identity: identity.map(Path::to_owned),
        });
    }
    let source = match g.read_peeked(dir, name, &peek, &shown, UNIT_FILE_LIMIT)? {
        Entry::Masked => Source::Masked,
        Entry::Bytes(bytes) => {
            let text = utf8(&shown, bytes)?;
            Source::Text { shown, text: Arc::from(text) }
        }
    };
    Ok(Read { identity: peek.identity().map(Path::to_owned), source })
}

/// What makes up a unit: its fragment and its drop-ins, in the order
/// systemd applies them.
struct Inputs<'s> {
    fragment: &'s Source,
    /// Whose fragment it is.
    whose: Fragment,
    /// Every drop-in by file name, with whether it is the unit's own: the
    /// template's, then the instance's own, which replace the template's of
    /// the same name.
    drop_ins: Vec<(&'s str, bool, &'s Source)>,
}

impl Inputs<'_> {
    /// Tells whether two units are made of the very same texts.
    fn shared_with(&self, other: &Inputs<'_>) -> bool {
        self.fragment.shared_with(other.fragment)
            && self.drop_ins.len() == other.drop_ins.len()
            && self.drop_ins.iter().zip(&other.drop_ins).all(|(a, b)| a.2.shared_with(b.2))
    }
}

/// The inputs of unit `name` (an instance takes its template's fragment
/// and drop-ins); `None` when it has no fragment.
fn inputs<'s>(scan: &'s Scan, name: &str) -> Option<Inputs<'s>> {
    let template = unit_name::split_instance(name).map(|(template, _)| template);
    let (fragment, whose) = match scan.fragments.get(name) {
        Some(own) => (own, Fragment::Own),
        None => (template.as_ref().and_then(|t| scan.fragments.get(t))?, Fragment::Template),
    };
    // systemd orders all drop-ins of a unit by file name; a drop-in in the
    // instance's own directory replaces the template's drop-in of the same
    // name, and a link to /dev/null removes it.
    let mut by_name: BTreeMap<&str, (bool, &Source)> = BTreeMap::new();
    if let Some(template) = &template {
        for (file, read) in scan.drop_in_dirs.get(template).into_iter().flatten() {
            by_name.insert(file, (false, &read.source));
        }
    }
    for (file, read) in scan.drop_in_dirs.get(name).into_iter().flatten() {
        by_name.insert(file, (true, &read.source));
    }
    let drop_ins = by_name.into_iter().map(|(file, (own, source))| (file, own, source)).collect();
    Some(Inputs { fragment: &fragment.source, whose, drop_ins })
}

/// Puts the units of a scanned directory together: each fragment with its
/// drop-ins, parsed. A unit whose every text is `twin`'s (the other
/// generation's scan and units) takes its settings from there.
pub(super) fn units(scan: &Scan, twin: Option<(&Scan, &Units)>) -> Result<Units, LoadError> {
    let mut units: Vec<(Box<str>, UnitFile)> = Vec::new();
    let names: std::collections::BTreeSet<&String> = scan.fragments.keys().chain(scan.drop_in_dirs.keys()).collect();
    for name in names {
        // Drop-ins without a fragment do not make a unit.
        let Some(inputs) = inputs(scan, name) else { continue };
        let Source::Text { shown, text } = inputs.fragment else {
            units.push((name.as_str().into(), UnitFile { masked: true, ..UnitFile::default() }));
            continue;
        };
        let drop_ins = inputs.drop_ins.iter().filter_map(|&(file, own, source)| match source {
            Source::Text { text, .. } => Some(DropIn { file: file.into(), own, text: Arc::clone(text) }),
            Source::Masked => None,
        });
        let mut unit = UnitFile {
            text: Some(Arc::clone(text)),
            fragment: Some(inputs.whose),
            drop_ins: drop_ins.collect(),
            ..UnitFile::default()
        };
        let same = twin.and_then(|(scan, units)| {
            let unit = units.get(name.as_str())?;
            inputs.shared_with(&self::inputs(scan, name)?).then_some(unit)
        });
        match same {
            Some(same) => unit.settings = Arc::clone(&same.settings),
            None => {
                let mut folding = Folding::default();
                folding.apply(shown, text)?;
                for (_, _, source) in &inputs.drop_ins {
                    if let Source::Text { shown, text } = source {
                        folding.apply(shown, text)?;
                    }
                }
                unit.settings = folding.finish();
            }
        }
        units.push((name.as_str().into(), unit));
    }
    // In name order already, each name once.
    Ok(units.into_iter().collect())
}
