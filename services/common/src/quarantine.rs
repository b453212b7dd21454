//! Defence in depth: a bug met while handling one record costs that record, not the
//! service.
//!
//! Every handler of a record from the wire is written to be total (it returns a reason
//! instead of panicking), and fuzzed. [`guard`] runs it under `catch_unwind` anyway: if a
//! bug still panics on some record, the panic becomes that record's dead-letter reason and
//! the service goes on. Without it the service would die before storing the record's
//! offset, read the same record after its restart, and die again: the crash loop that
//! Kafka Streams' deserialization and processing exception handlers exist to prevent.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs a record handler; a panic inside it becomes `Err((None, reason))`.
pub fn guard<T>(handler: impl FnOnce() -> Result<T, (Option<String>, String)>) -> Result<T, (Option<String>, String)> {
    // The handlers only read their arguments, so nothing is left half-changed by a panic.
    match catch_unwind(AssertUnwindSafe(handler)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            crate::metrics::quarantined();
            Err((None, format!("internal error while handling this record ({what}); it was set aside so the service could go on; please report it")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::guard;

    #[test]
    fn a_panicking_handler_becomes_a_reason() {
        assert_eq!(guard(|| Ok::<_, (Option<String>, String)>(3)), Ok(3));
        let (_, reason) = guard::<u8>(|| panic!("boom on record 7")).unwrap_err();
        assert!(reason.contains("boom on record 7"), "{reason}");
    }
}
