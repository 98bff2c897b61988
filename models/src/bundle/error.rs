//! # Bundle errors
//!
//! One error type for everything a bundle can get wrong: the ONNX Runtime library, the manifest, the
//! graph files, the execution provider, the parity fixtures and the inputs of a run. Messages name
//! the file concerned and what to change.

use std::path::PathBuf;

/// Everything that can go wrong with a bundle. Messages name the file concerned and the fix when
/// there is one. (`ort` errors are not `Send`/`Sync`; they are kept as strings.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// ONNX Runtime could not be initialised.
    #[error("ONNX Runtime is not available: {0}")]
    Runtime(String),
    /// A file could not be read.
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// The manifest does not parse or is inconsistent.
    #[error("{}: invalid manifest: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
    /// A graph file is missing, corrupt, or disagrees with the manifest.
    #[error("{}: graph `{graph}`: {message}", path.display())]
    Graph {
        path: PathBuf,
        graph: String,
        message: String,
    },
    /// The requested execution provider is unavailable and `strict_device` was set.
    #[error("execution provider: {0}")]
    Provider(String),
    /// A fixture file is unreadable or inconsistent.
    #[error("{}: fixture: {message}", path.display())]
    Fixture { path: PathBuf, message: String },
    /// Inputs given to a graph do not match its manifest entry.
    #[error("graph `{graph}`: {message}")]
    Input { graph: String, message: String },
    /// ONNX Runtime failed while running a graph.
    #[error("graph `{graph}` ({}): run failed: {message}", path.display())]
    Run {
        path: PathBuf,
        graph: String,
        message: String,
    },
    /// The bundle lacks what an operation needs (e.g. a latent-space bundle asked for pixel-space use).
    #[error("bundle `{bundle}`: {message}")]
    Unsupported { bundle: String, message: String },
}
