//! The build's error type.

use super::{CacheError, Digest, ExecError, PathBuf};

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A failure at a Dockerfile instruction.
    #[error("{dockerfile}:{line}: {instruction}")]
    At {
        /// The Dockerfile's path.
        dockerfile: String,
        /// The line.
        line: usize,
        /// The instruction.
        instruction: String,
        /// What went wrong.
        #[source]
        source: Box<BuildError>,
    },
    /// The Dockerfile does not parse.
    #[error("parsing {dockerfile}")]
    Parse {
        /// The Dockerfile's path.
        dockerfile: String,
        /// Why.
        #[source]
        source: Box<dockerfile_parse::ParseError>,
    },
    /// The stages cannot be worked out (unknown target, bad instruction).
    #[error("planning {dockerfile}")]
    Plan {
        /// The Dockerfile's path.
        dockerfile: String,
        /// Why.
        #[source]
        source: Box<dockerfile_parse::stages::StageError>,
    },
    /// A `.dockerignore` that does not parse.
    #[error("reading .dockerignore")]
    Ignore(#[source] Box<dockerfile_parse::dockerignore::IgnoreError>),
    /// `--from` or `RUN --mount from=` names a stage or image that cannot be used.
    #[error("unknown stage or image {name:?}")]
    UnknownStage {
        /// The name.
        name: String,
    },
    /// A source file is not in the build context.
    #[error("{path}: not found in the build context")]
    MissingSource {
        /// The path as written.
        path: String,
    },
    /// A source path leaves the build context.
    #[error("{path}: outside the build context")]
    OutsideContext {
        /// The path as written.
        path: String,
    },
    /// A file kiln reads from a context on its own (the default
    /// Dockerfile, a `.dockerignore`) resolves outside that context.
    #[error(
        "{path} resolves to {resolved}, outside the build context {context}; kiln reads only files inside it (name a Dockerfile elsewhere with -f)"
    )]
    LeavesContext {
        /// The file as looked for.
        path: PathBuf,
        /// Where it leads.
        resolved: PathBuf,
        /// The context.
        context: PathBuf,
    },
    /// A Dockerfile or ignore file that is not a regular file (a FIFO, a device).
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A Dockerfile or ignore file over [`MAX_DOCKERFILE_SIZE`](super::MAX_DOCKERFILE_SIZE).
    #[error("{path}: larger than {limit} bytes, the most kiln reads as a Dockerfile")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The Dockerfile names a host path (`oci:DIR`, a `file://` git
    /// repository), which only the invoker may.
    #[error(
        "{name}: a Dockerfile cannot name a host path; the invoker gives host layouts and directories as named contexts (--build-context NAME=oci-layout://PATH[:TAG] or NAME=DIR) and the Dockerfile uses NAME"
    )]
    HostPath {
        /// The name as written.
        name: String,
    },
    /// More than one source needs a directory destination ending in `/`.
    #[error("{dest}: when copying several sources the destination must be a directory ending in /")]
    DestNotDir {
        /// The destination.
        dest: String,
    },
    /// A `RUN` command exited non-zero.
    #[error("command exited with code {code}: {}", String::from_utf8_lossy(output).trim_end())]
    RunFailed {
        /// Its exit code.
        code: i32,
        /// The end of its output.
        output: Vec<u8>,
    },
    /// The executor could not run the command.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A user or group name not in the image's `/etc/passwd` / `/etc/group`.
    #[error("unknown {what} {name:?} (not in the image's {file})")]
    UnknownUser {
        /// `user` or `group`.
        what: &'static str,
        /// The name.
        name: String,
        /// The file looked in.
        file: &'static str,
    },
    /// A flag value kiln cannot use.
    #[error("invalid {flag} value {value:?}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A feature this version does not build.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What.
        what: String,
    },
    /// Word expansion failed at run time.
    #[error("expanding variables")]
    Expand(#[source] Box<dockerfile_parse::shell::ExpandError>),
    /// A downloaded file's checksum differs from `--checksum`.
    #[error("{url}: checksum mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// The source.
        url: String,
        /// `--checksum`.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// A base image could not be resolved or fetched.
    #[error("base image {image}")]
    Base {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A registry request failed.
    #[error(transparent)]
    Registry(#[from] registry_client::Error),
    /// The registry credentials (docker's or podman's auth file) cannot be read.
    #[error("reading registry credentials")]
    Credentials(#[source] registry_client::AuthFileError),
    /// Making a layer failed.
    #[error(transparent)]
    Layer(#[from] layer_diff::LayerError),
    /// Applying a layer failed.
    #[error(transparent)]
    Apply(#[from] layer_diff::ApplyError),
    /// Comparing trees failed.
    #[error(transparent)]
    Snapshot(#[from] layer_diff::SnapshotError),
    /// The content store or an output layout failed.
    #[error(transparent)]
    Layout(Box<oci_image::LayoutError>),
    /// Writing an output failed.
    #[error("writing {target}")]
    Output {
        /// The output.
        target: String,
        /// Why.
        #[source]
        source: Box<crate::CopyError>,
    },
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cache directory cannot be used.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The build was cancelled ([`Build::cancel`](super::Build::cancel)): its `RUN` processes were
    /// killed and its scratch state removed before this was returned.
    #[error("build cancelled{}", if problems.is_empty() { String::new() } else { format!("; clean-up left: {}", problems.join("; ")) })]
    Cancelled {
        /// What the clean-up could not undo (the next build on the cache
        /// reclaims it).
        problems: Vec<String>,
    },
    /// Blobs in the cache did not match their digests when copied out; they
    /// were dropped (the build makes or fetches them again once).
    #[error("corrupt blobs in the cache, dropped: {}", digests.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Corrupt {
        /// The blobs dropped.
        digests: Vec<Digest>,
        /// How the copy out failed.
        #[source]
        source: Box<BuildError>,
    },
    /// [`Build::epoch_from_git`](super::Build::epoch_from_git) without a commit time to take.
    #[error("{}: no git commit time for the epoch: {reason}", context.display())]
    GitEpoch {
        /// The build context.
        context: PathBuf,
        /// What git said.
        reason: String,
    },
    /// A blocking task died.
    #[error("build task failed: {0}")]
    Task(String),
}

/// Whether `e` (or the step failure wrapping it) is a cancellation.
pub(super) fn is_cancelled_err(e: &BuildError) -> bool {
    match e {
        BuildError::Cancelled { .. } | BuildError::Exec(ExecError::Cancelled) => true,
        BuildError::At { source, .. } => is_cancelled_err(source),
        _ => false,
    }
}

impl BuildError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { op, path, source }
    }
}

impl From<oci_image::LayoutError> for BuildError {
    fn from(e: oci_image::LayoutError) -> Self {
        BuildError::Layout(Box::new(e))
    }
}
