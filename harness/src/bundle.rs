//! The signed report bundle: a directory (and a deterministic `.tar.gz` of it) holding the
//! journal, `results.json`, the rendered reports, a manifest of every file's sha256 and size, and
//! an ed25519 signature over the manifest's exact bytes, which the board can verify offline.
//!
//! Every file is written atomically (temporary name in the same directory, fsync, rename, fsync
//! of the directory), so a crash leaves either the previous file or the new one, never half of
//! one. The run key's secret half is never written anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::journal::{self, JournalError};
use crate::report::{self, HarnessInfo, ReportError, RunResults};

/// The `format` of `manifest.json` this module writes and reads.
pub const BUNDLE_FORMAT: &str = "mtor-cert/bundle/1";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The signature's file name: the hex ed25519 signature over the exact bytes of the manifest.
pub const SIGNATURE: &str = "manifest.sig";
/// The canonical results.
pub const RESULTS: &str = "results.json";
/// The HTML report.
pub const REPORT_HTML: &str = "report.html";
/// The Markdown remediation report.
pub const REMEDIATION_MD: &str = "remediation.md";
/// The JUnit XML report.
pub const JUNIT_XML: &str = "junit.xml";
/// The run journal.
pub const JOURNAL: &str = "journal.ndjson";

/// Files every bundle must list: without them the board cannot re-check or read the run.
pub const REQUIRED_FILES: [&str; 5] = [JOURNAL, RESULTS, REPORT_HTML, REMEDIATION_MD, JUNIT_XML];

/// The most bytes an archive may expand to when verified (a bundle is megabytes; this is a
/// guard against decompression bombs, not a format limit).
pub const MAX_ARCHIVE_BYTES: u64 = 1 << 30;

/// The most entries an archive may hold.
const MAX_ARCHIVE_ENTRIES: usize = 10_000;

/// Prefix of the temporary files of atomic writes; never part of a bundle.
const TMP_PREFIX: &str = ".mtor-tmp-";

/// Why a bundle could not be written or examined at all. (A bundle that can be examined but does
/// not verify is not an error: see [`VerifyReport::problems`].)
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A report could not be rendered.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// A JSON file of the bundle could not be parsed or written.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The path is not a bundle directory or archive, or an output path is unusable.
    #[error("{path}: {reason}")]
    NotABundle {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An archive holds an entry that could escape the extraction directory or break the layout.
    #[error("{archive}: refusing entry `{entry}`: {reason}")]
    UnsafeArchive {
        /// The archive.
        archive: PathBuf,
        /// The entry's path as stored.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// The operating system gave no randomness for the run key.
    #[error("no randomness for the run key: {0}")]
    Random(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One file of a bundle as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// File name within the bundle directory.
    pub path: String,
    /// sha256 of its bytes, lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The plan as the manifest identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPlan {
    /// Plan id.
    pub id: String,
    /// Plan semver.
    pub version: String,
    /// sha256 of the plan's bytes.
    pub hash: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The harness that wrote the bundle.
    pub harness: HarnessInfo,
    /// The plan that was run.
    pub plan: ManifestPlan,
    /// What the realm's `/v1/manifest` answered.
    pub realm_manifest: Option<Value>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// Every file of the bundle except the manifest and the signature, sorted by path.
    pub files: Vec<FileEntry>,
    /// The run key's public half, hex ed25519.
    pub public_key: String,
}

/// What [`write_bundle`] produced.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The `.tar.gz`.
    pub archive: PathBuf,
    /// The files the manifest lists.
    pub files: Vec<FileEntry>,
    /// The run key's public half, hex.
    pub public_key: String,
    /// sha256 of `manifest.json`, hex: one value that pins the whole bundle.
    pub manifest_sha256: String,
}

/// A fresh run key from the operating system's randomness.
pub fn generate_run_key() -> Result<SigningKey, BundleError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| BundleError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    // SigningKey zeroizes itself on drop; do the same for the copy of the seed.
    seed.fill(0);
    Ok(key)
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    crate::wire::fill_random(&mut b);
    hex::encode(b)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    // A rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Writes `bytes` to `dir/name` atomically: a temporary file in the same directory, fsync,
/// rename over the target, fsync of the directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
    let target = dir.join(name);
    let tmp = dir.join(format!("{TMP_PREFIX}{name}.{}", random_suffix()));
    let attempt = || -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &target)?;
        sync_dir(dir)
    };
    attempt().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(&target)(e)
    })
}

/// sha256 (hex) and size of a file, streamed so a large journal is not held in memory.
fn hash_file(path: &Path) -> Result<(String, u64), BundleError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The regular files directly in `dir` that belong in its manifest, sorted; sub-directories
/// (such as a spawned realm's data) and links are not part of a bundle.
fn bundle_files(dir: &Path) -> Result<Vec<String>, BundleError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        if !kind.is_file() {
            continue;
        }
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| BundleError::NotABundle {
                path: path.clone(),
                reason: "file names in a bundle must be UTF-8".into(),
            })?;
        if name == MANIFEST || name == SIGNATURE || name.starts_with(TMP_PREFIX) {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Writes the bundle into `out_dir` and its archive to `<out_dir>.tar.gz`; see [`write_bundle_to`].
pub fn write_bundle(
    out_dir: &Path,
    results: &RunResults,
    journal_path: &Path,
    key: &SigningKey,
) -> Result<BundleInfo, BundleError> {
    write_bundle_to(out_dir, results, journal_path, key, None)
}

/// Writes `results.json`, `report.html`, `remediation.md` and `junit.xml` into `out_dir`
/// (copying the journal there as `journal.ndjson` if it lives elsewhere), then `manifest.json`
/// listing every file of the directory and `manifest.sig` signed with `key`, then a deterministic
/// archive at `archive` (default `<out_dir>.tar.gz`) with the files under one top folder named
/// after `out_dir`.
pub fn write_bundle_to(
    out_dir: &Path,
    results: &RunResults,
    journal_path: &Path,
    key: &SigningKey,
    archive: Option<&Path>,
) -> Result<BundleInfo, BundleError> {
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let dir = fs::canonicalize(out_dir).map_err(io_err(out_dir))?;
    let top = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| BundleError::NotABundle {
            path: dir.clone(),
            reason: "the bundle directory needs a name".into(),
        })?;
    let archive = match archive {
        Some(a) => a.to_owned(),
        None => dir.with_file_name(format!("{top}.tar.gz")),
    };
    if archive.parent().is_some_and(|p| same_file(p, &dir)) {
        return Err(BundleError::NotABundle {
            path: archive,
            reason: "the archive cannot live inside the bundle directory it archives".into(),
        });
    }

    let journal_in_bundle = dir.join(JOURNAL);
    if !same_file(journal_path, &journal_in_bundle) {
        let bytes = fs::read(journal_path).map_err(io_err(journal_path))?;
        write_atomic(&dir, JOURNAL, &bytes)?;
    }
    let records = journal::read(&journal_in_bundle)?;

    // Leftovers of an interrupted earlier write are garbage, never bundle content.
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }

    write_atomic(&dir, RESULTS, &report::to_canonical_json(results)?)?;
    write_atomic(
        &dir,
        REPORT_HTML,
        report::render_html(results, &records)?.as_bytes(),
    )?;
    write_atomic(
        &dir,
        REMEDIATION_MD,
        report::render_markdown(results).as_bytes(),
    )?;
    write_atomic(&dir, JUNIT_XML, report::render_junit(results).as_bytes())?;

    // A stale signature must not sit beside a new manifest if we crash between the two.
    match fs::remove_file(dir.join(SIGNATURE)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&dir.join(SIGNATURE))(e)),
    }

    let mut files = Vec::new();
    for name in bundle_files(&dir)? {
        let (sha256, bytes) = hash_file(&dir.join(&name))?;
        files.push(FileEntry {
            path: name,
            sha256,
            bytes,
        });
    }
    let public_key = hex::encode(key.verifying_key().to_bytes());
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT.into(),
        harness: HarnessInfo::current(),
        plan: ManifestPlan {
            id: results.plan.id.clone(),
            version: results.plan.version.clone(),
            hash: results.plan.hash.clone(),
        },
        realm_manifest: results.realm_manifest.clone(),
        started_at: results.started_at.clone(),
        finished_at: results.finished_at.clone(),
        files: files.clone(),
        public_key: public_key.clone(),
    };
    let manifest_bytes = report::canonical_json(&manifest).map_err(|source| BundleError::Json {
        path: dir.join(MANIFEST),
        source,
    })?;
    write_atomic(&dir, MANIFEST, &manifest_bytes)?;
    let signature = key.sign(&manifest_bytes);
    write_atomic(
        &dir,
        SIGNATURE,
        format!("{}\n", hex::encode(signature.to_bytes())).as_bytes(),
    )?;

    let mut members: Vec<(String, Option<&str>)> = files
        .iter()
        .map(|f| (f.path.clone(), Some(f.sha256.as_str())))
        .collect();
    members.push((MANIFEST.into(), None));
    members.push((SIGNATURE.into(), None));
    members.sort();
    write_archive(&dir, &top, &members, &archive)?;

    Ok(BundleInfo {
        dir,
        archive,
        files,
        public_key,
        manifest_sha256: hex::encode(Sha256::digest(&manifest_bytes)),
    })
}

/// Writes a deterministic `.tar.gz`: sorted entries under `top/`, mtime 0, uid/gid 0, fixed
/// modes, no user names, and a gzip header without a time or file name. Each member's bytes are
/// checked against the hash just listed, so the archive cannot disagree with its manifest.
fn write_archive(
    dir: &Path,
    top: &str,
    members: &[(String, Option<&str>)],
    archive: &Path,
) -> Result<(), BundleError> {
    let parent = match archive.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let archive_name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| BundleError::NotABundle {
            path: archive.to_owned(),
            reason: "the archive path needs a file name".into(),
        })?;
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    let fixed = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let mut header = fixed(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut header, format!("{top}/"), io::empty())
        .map_err(io_err(archive))?;
    for (name, sha) in members {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        if let Some(sha) = sha {
            if hex::encode(Sha256::digest(&bytes)) != *sha {
                return Err(BundleError::NotABundle {
                    path,
                    reason: "the file changed while the bundle was being written".into(),
                });
            }
        }
        let mut header = fixed(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        tar.append_data(&mut header, format!("{top}/{name}"), bytes.as_slice())
            .map_err(io_err(archive))?;
    }
    let tar_bytes = tar.into_inner().map_err(io_err(archive))?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).map_err(io_err(archive))?;
    let gz_bytes = gz.finish().map_err(io_err(archive))?;
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    write_atomic(&parent, &archive_name, &gz_bytes)
}

// ------------------------------------------------------------------------------------------------
// Reading and verifying

/// A directory removed (with everything in it) when dropped: where archives are extracted.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, BundleError> {
        let path = std::env::temp_dir().join(format!("mtor-cert-verify-{}", random_suffix()));
        let mut builder = fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        // `create`, not `create_all`: never reuse a directory someone else prepared.
        builder.create(&path).map_err(io_err(&path))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Fails reads once more than `left` bytes have come through: the guard against gzip bombs,
/// which covers tar headers and extension records as well as file data.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "the archive expands to more than {MAX_ARCHIVE_BYTES} bytes"
            ))
        })?;
        Ok(n)
    }
}

/// An opened bundle: the directory holding its files, and the extraction that owns it, if any.
struct Opened {
    dir: PathBuf,
    temp: Option<TempDir>,
}

fn open_bundle(path: &Path) -> Result<Opened, BundleError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        return Ok(Opened {
            dir: path.to_owned(),
            temp: None,
        });
    }
    let temp = TempDir::new()?;
    let dir = extract(path, &temp.0)?;
    Ok(Opened {
        dir,
        temp: Some(temp),
    })
}

/// Extracts a bundle archive into `into`, refusing anything that is not a plain file (or the top
/// folder) one level below a single top folder: absolute paths, `..`, links, devices, duplicates.
/// Returns the extracted top folder.
fn extract(archive: &Path, into: &Path) -> Result<PathBuf, BundleError> {
    let file = File::open(archive).map_err(io_err(archive))?;
    let capped = Capped {
        inner: flate2::read::GzDecoder::new(io::BufReader::new(file)),
        // Headers and padding on top of the data cap.
        left: MAX_ARCHIVE_BYTES + (MAX_ARCHIVE_ENTRIES as u64) * 1536,
    };
    let mut tar = tar::Archive::new(capped);
    let refuse = |entry: &str, reason: &str| BundleError::UnsafeArchive {
        archive: archive.to_owned(),
        entry: entry.to_owned(),
        reason: reason.to_owned(),
    };
    let broken = |e: io::Error| BundleError::NotABundle {
        path: archive.to_owned(),
        reason: format!("not a readable .tar.gz bundle: {e}"),
    };
    let mut top: Option<String> = None;
    let mut total = 0u64;
    let mut count = 0usize;
    for entry in tar.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        count += 1;
        if count > MAX_ARCHIVE_ENTRIES {
            return Err(refuse("", "the archive has too many entries"));
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue; // metadata for the archiver, not content
        }
        let path = entry.path().map_err(broken)?.into_owned();
        let mut parts = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(p) => match p.to_str() {
                    Some(s) => parts.push(s.to_owned()),
                    None => return Err(refuse(&raw, "the path is not UTF-8")),
                },
                Component::CurDir => {}
                Component::ParentDir => return Err(refuse(&raw, "the path contains `..`")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(refuse(&raw, "the path is absolute"))
                }
            }
        }
        if raw.contains('\\') {
            return Err(refuse(&raw, "the path contains a backslash"));
        }
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(refuse(&raw, "links are not allowed in a bundle"));
        }
        let Some(first) = parts.first() else {
            return Err(refuse(&raw, "the path is empty"));
        };
        match &top {
            None => top = Some(first.clone()),
            Some(t) if t != first => {
                return Err(refuse(
                    &raw,
                    "a bundle archive holds its files under one top folder",
                ))
            }
            Some(_) => {}
        }
        match (parts.len(), kind.is_dir(), kind.is_file()) {
            (1, true, _) => {
                let d = into.join(first);
                match fs::create_dir(&d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&d)(e)),
                }
            }
            (2, _, true) => {
                total = total.saturating_add(entry.size());
                if total > MAX_ARCHIVE_BYTES {
                    return Err(refuse(
                        &raw,
                        &format!("the archive holds more than {MAX_ARCHIVE_BYTES} bytes"),
                    ));
                }
                let d = into.join(first);
                match fs::create_dir(&d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&d)(e)),
                }
                let target = d.join(&parts[1]);
                let mut out = match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(refuse(&raw, "the entry appears twice"))
                    }
                    Err(e) => return Err(io_err(&target)(e)),
                };
                io::copy(&mut entry, &mut out).map_err(broken)?;
            }
            (_, _, true) | (_, true, _) => {
                return Err(refuse(
                    &raw,
                    "a bundle holds plain files directly under its top folder",
                ))
            }
            _ => {
                return Err(refuse(
                    &raw,
                    "only plain files and the top folder are allowed",
                ))
            }
        }
    }
    match top {
        Some(t) => Ok(into.join(t)),
        None => Err(BundleError::NotABundle {
            path: archive.to_owned(),
            reason: "the archive is empty".into(),
        }),
    }
}

/// One thing wrong with a bundle, attached to the file it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file's name within the bundle.
    pub file: String,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

/// What [`verify_bundle`] found.
#[derive(Debug)]
#[must_use = "a bundle is valid only if `is_valid()` says so"]
pub struct VerifyReport {
    /// The directory holding the bundle's files (a temporary extraction for an archive, which
    /// lives as long as this report).
    pub dir: PathBuf,
    /// The manifest, when it could be parsed.
    pub manifest: Option<BundleManifest>,
    /// Whether `manifest.sig` is a valid signature of `manifest.json` by its `public_key`.
    pub signature_valid: bool,
    /// Every problem, by file. Empty (with a valid signature) means the bundle verifies.
    pub problems: Vec<Problem>,
    /// Entries of the directory that are not part of any bundle (sub-directories, links).
    pub ignored: Vec<String>,
    /// `results.json`, parsed, when its bytes match the manifest. The hook for re-checking
    /// verdicts against the journal.
    pub results: Option<RunResults>,
    /// The journal's path, when its bytes match the manifest.
    pub journal: Option<PathBuf>,
    _extracted: Option<TempDir>,
}

impl VerifyReport {
    /// Whether the bundle verifies: a valid signature and no problem.
    pub fn is_valid(&self) -> bool {
        self.signature_valid && self.problems.is_empty()
    }
}

fn short(hash: &str) -> String {
    format!("{}…", hash.get(..12).unwrap_or(hash))
}

/// A manifest path must name a file directly in the bundle directory.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != MANIFEST
        && name != SIGNATURE
        && !name.contains(['/', '\\', '\0'])
}

/// Verifies a bundle directory or `.tar.gz`: the signature of the manifest, the sha256 and size
/// of every listed file, files missing or not listed, the required files, and `results.json`
/// against the results schema and against itself. Problems are reported by file name; an `Err`
/// means the bundle could not be examined at all (unreadable, or an unsafe archive).
pub fn verify_bundle(path: &Path) -> Result<VerifyReport, BundleError> {
    let opened = open_bundle(path)?;
    verify_dir(opened.dir, opened.temp)
}

fn verify_dir(dir: PathBuf, temp: Option<TempDir>) -> Result<VerifyReport, BundleError> {
    let mut report = VerifyReport {
        dir: dir.clone(),
        manifest: None,
        signature_valid: false,
        problems: Vec::new(),
        ignored: Vec::new(),
        results: None,
        journal: None,
        _extracted: temp,
    };
    let mut problems: Vec<Problem> = Vec::new();
    let mut problem = |file: &str, message: String| {
        problems.push(Problem {
            file: file.to_owned(),
            message,
        })
    };

    let manifest_path = dir.join(MANIFEST);
    let manifest_bytes = match fs::read(&manifest_path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            problem(
                MANIFEST,
                "missing: this is not a bundle, or its manifest was deleted".into(),
            );
            report.problems = problems;
            return Ok(report);
        }
        Err(e) => return Err(io_err(&manifest_path)(e)),
    };
    let manifest: BundleManifest = match serde_json::from_slice(&manifest_bytes) {
        Ok(m) => m,
        Err(e) => {
            problem(
                MANIFEST,
                format!("not a valid bundle manifest ({e}); nothing in the bundle can be checked"),
            );
            report.problems = problems;
            return Ok(report);
        }
    };

    // The signature, over the manifest's exact bytes.
    let key = hex::decode(&manifest.public_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok());
    let sig_path = dir.join(SIGNATURE);
    let signature = match fs::read(&sig_path) {
        Ok(bytes) => {
            let parsed = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| hex::decode(s.trim()).ok())
                .and_then(|b| <[u8; 64]>::try_from(b).ok())
                .map(|b| Signature::from_bytes(&b));
            if parsed.is_none() {
                problem(
                    SIGNATURE,
                    "not a hex ed25519 signature (128 hex digits)".into(),
                );
            }
            parsed
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            problem(SIGNATURE, "missing: the manifest is unsigned".into());
            None
        }
        Err(e) => return Err(io_err(&sig_path)(e)),
    };
    let mut signature_valid = false;
    match (&key, &signature) {
        (None, _) => problem(
            MANIFEST,
            format!(
                "public_key `{}` is not a hex ed25519 public key",
                manifest.public_key
            ),
        ),
        (Some(key), Some(sig)) => {
            if key.verify_strict(&manifest_bytes, sig).is_ok() {
                signature_valid = true;
            } else {
                problem(
                    MANIFEST,
                    format!(
                        "signature in {SIGNATURE} does not verify against the manifest's public key \
                         {}: {MANIFEST} or {SIGNATURE} was altered",
                        short(&manifest.public_key)
                    ),
                );
            }
        }
        (Some(_), None) => {}
    }
    if manifest.format != BUNDLE_FORMAT {
        problem(
            MANIFEST,
            format!(
                "format is `{}`, expected `{BUNDLE_FORMAT}`",
                manifest.format
            ),
        );
    }

    // Every listed file: present, a regular file, the right size and hash.
    let mut listed: BTreeMap<&str, &FileEntry> = BTreeMap::new();
    let mut intact: BTreeSet<&str> = BTreeSet::new();
    for entry in &manifest.files {
        if !is_plain_name(&entry.path) {
            problem(
                &entry.path,
                "listed in the manifest under a name that is not a plain file name".into(),
            );
            continue;
        }
        if listed.insert(&entry.path, entry).is_some() {
            problem(&entry.path, "listed twice in the manifest".into());
            continue;
        }
        let path = dir.join(&entry.path);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                problem(&entry.path, "listed in the manifest but missing".into());
                continue;
            }
            Err(e) => return Err(io_err(&path)(e)),
            Ok(m) if !m.file_type().is_file() => {
                problem(
                    &entry.path,
                    "listed in the manifest but not a regular file".into(),
                );
                continue;
            }
            Ok(_) => {}
        }
        let (sha, bytes) = hash_file(&path)?;
        let mut wrong = Vec::new();
        if sha != entry.sha256 {
            wrong.push(format!(
                "sha256 mismatch (manifest {}, file {})",
                short(&entry.sha256),
                short(&sha)
            ));
        }
        if bytes != entry.bytes {
            wrong.push(format!(
                "size mismatch (manifest {} bytes, file {bytes} bytes)",
                entry.bytes
            ));
        }
        if wrong.is_empty() {
            intact.insert(&entry.path);
        } else {
            problem(&entry.path, wrong.join("; "));
        }
    }
    for required in REQUIRED_FILES {
        if !listed.contains_key(required) {
            problem(
                required,
                "every bundle must have this file, but the manifest does not list it".into(),
            );
        }
    }

    // Files present but not listed.
    let mut present = Vec::new();
    let mut ignored = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST || name == SIGNATURE || listed.contains_key(name.as_str()) {
            continue;
        }
        let kind = entry.file_type().map_err(io_err(&entry.path()))?;
        if kind.is_file() {
            present.push(name);
        } else {
            ignored.push(name);
        }
    }
    present.sort();
    ignored.sort();
    for name in present {
        problem(&name, "present but not listed in the manifest".into());
    }

    // results.json: the schema, its own consistency, and agreement with the manifest.
    let mut parsed = None;
    if intact.contains(RESULTS) {
        let path = dir.join(RESULTS);
        let text = fs::read(&path).map_err(io_err(&path))?;
        match serde_json::from_slice::<Value>(&text) {
            Err(e) => problem(RESULTS, format!("not JSON: {e}")),
            Ok(value) => {
                let violations = report::validate_results(&value)?;
                for v in violations.iter().take(20) {
                    problem(RESULTS, format!("does not match the results schema: {v}"));
                }
                if violations.len() > 20 {
                    problem(
                        RESULTS,
                        format!("… and {} more schema violations", violations.len() - 20),
                    );
                }
                match serde_json::from_value::<RunResults>(value) {
                    Err(e) => problem(RESULTS, format!("not a results document: {e}")),
                    Ok(results) => {
                        for inconsistency in results.inconsistencies() {
                            problem(RESULTS, inconsistency);
                        }
                        let plan = &results.plan;
                        if (&plan.id, &plan.version, &plan.hash)
                            != (
                                &manifest.plan.id,
                                &manifest.plan.version,
                                &manifest.plan.hash,
                            )
                        {
                            problem(
                                RESULTS,
                                "names a different plan (id, version or hash) than the manifest"
                                    .into(),
                            );
                        }
                        if (&results.started_at, &results.finished_at)
                            != (&manifest.started_at, &manifest.finished_at)
                        {
                            problem(
                                RESULTS,
                                "gives different start or finish times than the manifest".into(),
                            );
                        }
                        parsed = Some(results);
                    }
                }
            }
        }
    }
    if intact.contains(JOURNAL) {
        report.journal = Some(dir.join(JOURNAL));
    }
    report.problems = problems;
    report.signature_valid = signature_valid;
    report.ignored = ignored;
    report.results = parsed;
    report.manifest = Some(manifest);
    Ok(report)
}

/// The formats `rerender` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RenderFormat {
    /// The HTML report.
    Html,
    /// The Markdown remediation report.
    Md,
    /// JUnit XML.
    Junit,
    /// Canonical `results.json`.
    Json,
}

/// Reads `results.json` (and the journal, when there is one) from a bundle directory or archive,
/// without verifying it: for looking at a bundle, not for trusting one.
pub fn load_results(
    bundle: &Path,
) -> Result<(RunResults, Vec<crate::journal::Record>), BundleError> {
    let opened = open_bundle(bundle)?;
    let path = opened.dir.join(RESULTS);
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let results: RunResults =
        serde_json::from_slice(&bytes).map_err(|source| BundleError::Json { path, source })?;
    let journal_path = opened.dir.join(JOURNAL);
    let records = if journal_path.exists() {
        journal::read(&journal_path)?
    } else {
        Vec::new()
    };
    Ok((results, records))
}

/// Re-renders one report of a bundle from its `results.json` (and journal).
pub fn rerender(bundle: &Path, format: RenderFormat) -> Result<String, BundleError> {
    let (results, records) = load_results(bundle)?;
    Ok(match format {
        RenderFormat::Html => report::render_html(&results, &records)?,
        RenderFormat::Md => report::render_markdown(&results),
        RenderFormat::Junit => report::render_junit(&results),
        RenderFormat::Json => {
            String::from_utf8_lossy(&report::to_canonical_json(&results)?).into_owned()
        }
    })
}

/// The ids of the cases of a bundle that did not pass (FAIL, ERROR, UNKNOWN, WARN), in plan
/// order: what `--rerun-failed` runs again.
pub fn failed_cases(bundle: &Path) -> Result<Vec<String>, BundleError> {
    let (results, _) = load_results(bundle)?;
    Ok(results
        .cases
        .iter()
        .filter(|c| report::is_finding(c.verdict))
        .map(|c| c.id.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_exclude_paths_and_reserved_files() {
        assert!(is_plain_name("report.html"));
        for bad in ["", ".", "..", "a/b", "..\\x", MANIFEST, SIGNATURE, "a\0b"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn capped_reader_fails_past_its_limit() {
        let data = vec![7u8; 100];
        let mut r = Capped {
            inner: data.as_slice(),
            left: 50,
        };
        let mut out = Vec::new();
        let err = io::copy(&mut r, &mut out).expect_err("over the cap");
        assert!(err.to_string().contains("expands to more than"), "{err}");
    }

    #[test]
    fn run_keys_are_fresh() {
        let a = generate_run_key().expect("key");
        let b = generate_run_key().expect("key");
        assert_ne!(a.verifying_key(), b.verifying_key());
    }
}
