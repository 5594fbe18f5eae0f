//! Named crash points for the crash-consistency tests. In a build with the `failpoints` feature, reaching the point
//! named by `SNAPINST_FAILPOINT` kills the process with SIGKILL, with no cleanup at all. In a normal build
//! [`hit`] compiles to nothing. Every point is listed in [`ALL`], so the test matrix cannot forget one.

/// Every crash point, in the order a transaction reaches them.
pub(crate) const ALL: &[&str] = &[
    "apply-after-lock",
    "apply-after-record",
    "apply-after-stage",
    "apply-mid-step",
    "apply-after-steps",
    "apply-after-commit-record",
    "apply-mid-merge",
    "apply-after-exchange",
    "apply-before-prune",
    "apply-mid-discard",
    "rollback-after-record",
    "rollback-after-commit-record",
    "rollback-mid-swap",
    "rollback-after-exchange",
    "recover-mid-recovery",
];

/// Kill the process here if `SNAPINST_FAILPOINT` names this point (only in `failpoints` builds).
#[inline]
pub(crate) fn hit(name: &str) {
    debug_assert!(ALL.contains(&name), "unknown failpoint {name}");
    #[cfg(feature = "failpoints")]
    if std::env::var("SNAPINST_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("snapinst: failpoint {name}: killing the process");
        // SAFETY: raising SIGKILL on ourselves; nothing is borrowed across the call.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}
