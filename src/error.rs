//! Errors at the tower boundary.
//!
//! Layers return [`BoxError`], as tower's own middleware does, so that errors of the transport and
//! of every layer can travel through one stack. Each layer's own error type is public and can be
//! recovered with [`downcast_ref`](std::error::Error#method.downcast_ref).

/// The error type that crosses layer boundaries: any error, boxed.
///
/// # Example
///
/// ```
/// let err: courteous::BoxError = "upstream hung up".into();
/// assert_eq!(err.to_string(), "upstream hung up");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
