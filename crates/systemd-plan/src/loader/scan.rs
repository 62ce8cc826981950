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
use crate::generation::{LINK_KINDS, Links, Units};
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
    Text(Arc<str>),
}

/// The texts one entry of the old generation's unit directory led to,
/// each with the identity of its file ([`generation_fs::Peek::identity`])
/// and its name in a drop-in directory (empty for a unit file): what
/// reading the same entry of the new generation may take instead of
/// reading it again.
#[derive(Debug, Default)]
struct Seen(Vec<(String, PathBuf, Arc<str>)>);

impl Seen {
    /// The text of `file` if it was read from the file `identity`.
    fn text(&self, file: &str, identity: &Path) -> Option<&Arc<str>> {
        self.0.iter().find(|(f, i, _)| f == file && i == identity).map(|(_, _, text)| text)
    }
}

/// A unit directory as read, before its units are put together.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Unit files by name.
    pub(super) fragments: BTreeMap<String, Source>,
    /// Drop-in directories by unit, each file by name, sorted.
    pub(super) drop_in_dirs: BTreeMap<String, Vec<(String, Source)>>,
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
    // What the old generation's entry of the name at hand led to.
    let mut seen = Seen::default();
    let nothing = Seen::default();
    for &name in names {
        seen.0.clear();
        if let (Some(dir), Some(g), Some(Ok(scan))) = (old, &old_g, &mut old_scan)
            && has(dir, name)
            && let Err(err) = scan_entry(g, dir, name, scan, &nothing, new.is_some().then_some(&mut seen))
        {
            old_scan = Some(Err(err));
        }
        if !matches!(old_scan, Some(Ok(_))) {
            // As if the old generation had not been read.
            seen.0.clear();
        }
        if let (Some(dir), Some(g), Some(Ok(scan))) = (new, &new_g, &mut new_scan)
            && has(dir, name)
            && let Err(err) = scan_entry(g, dir, name, scan, &seen, None)
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
/// directory or a link directory; anything else is skipped. What `twin`
/// (the old generation's entry of the same name) read from the same files
/// is taken instead of reading them again; what is read is noted in
/// `seen`, when given.
fn scan_entry(
    g: &GenerationDir,
    dir: &Dir<'_>,
    name: &str,
    scan: &mut Scan,
    twin: &Seen,
    mut seen: Option<&mut Seen>,
) -> Result<(), LoadError> {
    let shown = dir.shown.join(name);
    if let Some(unit) = name.strip_suffix(".d").filter(|u| unit_name::is_valid(u)) {
        let Some(physical) = resolve_dir_in(g, dir.physical, name, &shown)? else { return Ok(()) };
        let mut files = Vec::new();
        for file in list_dir(&shown, &physical)? {
            if file.ends_with(".conf") {
                let source = read_source(g, &physical, &file, &shown, &file, twin, seen.as_deref_mut())?;
                files.push((file, source));
            }
        }
        scan.drop_in_dirs.insert(unit.to_owned(), files);
    } else if let Some((unit, kind)) = name.rsplit_once('.').and_then(|(u, k)| {
        let kind = LINK_KINDS.iter().find(|&&known| known == k)?;
        unit_name::is_valid(u).then_some((u, *kind))
    }) {
        let Some(physical) = resolve_dir_in(g, dir.physical, name, &shown)? else { return Ok(()) };
        let mut linked = list_dir(&shown, &physical)?;
        linked.retain(|n| unit_name::is_valid(n));
        scan.deps.entry(unit.to_owned()).or_default().insert(kind, Links::join(&linked));
    } else if unit_name::is_valid(name) {
        let source = read_source(g, dir.physical, name, dir.shown, "", twin, seen)?;
        scan.fragments.insert(name.to_owned(), source);
    }
    Ok(())
}

/// Reads one unit file or drop-in, `name` in the physical directory `dir`
/// shown as `dir_shown`; `file` is its name in a drop-in directory (empty
/// for a unit file). When `twin` read the same file, its text is taken
/// instead; a text read is noted in `seen`, when given.
fn read_source(
    g: &GenerationDir,
    dir: &Path,
    name: &str,
    dir_shown: &Path,
    file: &str,
    twin: &Seen,
    seen: Option<&mut Seen>,
) -> Result<Source, LoadError> {
    let peek = g.peek(dir, name);
    let identity = peek.identity();
    if let Some(text) = identity.and_then(|identity| twin.text(file, identity)) {
        return Ok(Source::Text(Arc::clone(text)));
    }
    let shown = dir_shown.join(name);
    let source = match g.read_peeked(dir, name, &peek, &shown, UNIT_FILE_LIMIT)? {
        Entry::Masked => Source::Masked,
        Entry::Bytes(bytes) => Source::Text(Arc::from(utf8(&shown, bytes)?)),
    };
    if let (Some(seen), Some(identity), Source::Text(text)) = (seen, peek.identity(), &source) {
        seen.0.push((file.to_owned(), identity.to_owned(), Arc::clone(text)));
    }
    Ok(source)
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
    /// The texts folded into the unit's settings, in order.
    fn texts(&self) -> impl Iterator<Item = &Arc<str>> {
        let drop_ins = self.drop_ins.iter().map(|(_, _, source)| *source);
        std::iter::once(self.fragment).chain(drop_ins).filter_map(|source| match source {
            Source::Text(text) => Some(text),
            Source::Masked => None,
        })
    }

    /// Tells whether `unit` (of the other generation) is made of the very
    /// same texts, read once: then its settings are these inputs'.
    fn same_texts_as(&self, unit: &UnitFile) -> bool {
        let theirs = unit.text.iter().chain(unit.drop_ins.iter().map(|d| &d.text));
        unit.text.is_some() && self.texts().map(Arc::as_ptr).eq(theirs.map(Arc::as_ptr))
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
        for (file, source) in scan.drop_in_dirs.get(template).into_iter().flatten() {
            by_name.insert(file, (false, source));
        }
    }
    for (file, source) in scan.drop_in_dirs.get(name).into_iter().flatten() {
        by_name.insert(file, (true, source));
    }
    let drop_ins = by_name.into_iter().map(|(file, (own, source))| (file, own, source)).collect();
    Some(Inputs { fragment, whose, drop_ins })
}

/// Puts the units of a scanned directory together: each fragment with its
/// drop-ins, parsed. A unit made of the very texts of `twin`'s unit of
/// the same name (the other generation's) takes its settings from there.
/// Errors name the files under `dir_shown`, the directory as shown.
pub(super) fn units(scan: &Scan, dir_shown: &Path, twin: Option<&Units>) -> Result<Units, LoadError> {
    let mut units: Vec<(Box<str>, UnitFile)> = Vec::new();
    let names: std::collections::BTreeSet<&String> = scan.fragments.keys().chain(scan.drop_in_dirs.keys()).collect();
    for name in names {
        // Drop-ins without a fragment do not make a unit.
        let Some(inputs) = inputs(scan, name) else { continue };
        let Source::Text(text) = inputs.fragment else {
            units.push((name.as_str().into(), UnitFile { masked: true, ..UnitFile::default() }));
            continue;
        };
        let drop_ins = inputs.drop_ins.iter().filter_map(|&(file, own, source)| match source {
            Source::Text(text) => Some(DropIn { file: file.into(), own, text: Arc::clone(text) }),
            Source::Masked => None,
        });
        let mut unit = UnitFile {
            text: Some(Arc::clone(text)),
            fragment: Some(inputs.whose),
            drop_ins: drop_ins.collect(),
            ..UnitFile::default()
        };
        let same = twin.and_then(|units| units.get(name)).filter(|unit| inputs.same_texts_as(unit));
        match same {
            Some(same) => unit.settings = Arc::clone(&same.settings),
            None => {
                // The files' paths are made only to name one in an error.
                let template = || unit_name::split_instance(name).map(|(template, _)| template).unwrap_or_default();
                let mut folding = Folding::default();
                folding.apply(text).map_err(|err| match inputs.whose {
                    Fragment::Own => err.at(&dir_shown.join(name)),
                    Fragment::Template => err.at(&dir_shown.join(template())),
                })?;
                for &(file, own, source) in &inputs.drop_ins {
                    if let Source::Text(text) = source {
                        folding.apply(text).map_err(|err| {
                            let dir = format!("{}.d", if own { name.clone() } else { template() });
                            err.at(&dir_shown.join(dir).join(file))
                        })?;
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
