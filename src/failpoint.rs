//! Named crash points for the crash-consistency tests. In a build with the `failpoints` feature, reaching the point
//! named by `SNAPINST_FAILPOINT` kills the process with SIGKILL, with no cleanup at all (or, with
//! `SNAPINST_FAILPOINT_ACTION=reset` in a test VM, resets the machine without syncing; with `panic`, panics, as a
//! bug would). In a normal build [`hit`]
//! compiles to nothing. Every point is listed in [`ALL`], so the test matrix cannot forget one.

/// A crash point: its name, the operation that reaches it, and the backends on which it is reached.
pub(crate) struct Point {
    pub name: &'static str,
    /// `apply` (a plan that succeeds), `apply-failing` (a plan whose last step fails), `rollback`, `recover`,
    /// `boot` (a running root's next boot).
    pub operation: &'static str,
    pub backends: &'static [&'static str],
}

const EVERY: &[&str] = &["btrfs", "overlay", "journal"];

/// Every crash point, in the order a transaction reaches them.
pub(crate) const ALL: &[Point] = &[
    Point { name: "apply-after-lock", operation: "apply", backends: EVERY },
    Point { name: "apply-after-record", operation: "apply", backends: EVERY },
    Point { name: "apply-after-stage", operation: "apply", backends: EVERY },
    Point { name: "apply-mid-delta-create", operation: "apply", backends: &["overlay", "journal"] },
    Point { name: "apply-mid-save", operation: "apply", backends: &["journal"] },
    Point { name: "apply-mid-step", operation: "apply", backends: EVERY },
    Point { name: "apply-after-steps", operation: "apply", backends: EVERY },
    Point { name: "apply-mid-carry-over", operation: "apply", backends: &["btrfs"] },
    Point { name: "apply-after-commit-record", operation: "apply", backends: EVERY },
    Point { name: "apply-mid-merge", operation: "apply", backends: &["overlay"] },
    Point { name: "apply-after-exchange", operation: "apply", backends: EVERY },
    Point { name: "apply-before-prune", operation: "apply", backends: EVERY },
    Point { name: "apply-mid-discard", operation: "apply-failing", backends: &["journal"] },
    Point { name: "rollback-after-record", operation: "rollback", backends: EVERY },
    Point { name: "rollback-mid-revert", operation: "rollback", backends: &["btrfs"] },
    Point { name: "rollback-after-commit-record", operation: "rollback", backends: EVERY },
    Point { name: "rollback-mid-swap", operation: "rollback", backends: &["overlay", "journal"] },
    Point { name: "rollback-after-exchange", operation: "rollback", backends: &["btrfs"] },
    Point { name: "recover-mid-recovery", operation: "recover", backends: EVERY },
    Point { name: "handover-mid-put", operation: "boot", backends: &["btrfs"] },
    Point { name: "boot-mid-handover", operation: "boot", backends: &["btrfs"] },
    Point { name: "boot-mid-carry-back", operation: "boot", backends: &["btrfs"] },
];

/// Set once the point has fired in this process by a panic: the recovery after it runs to the end.
static DISARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// No point fires from now on in this process (the recovery after a panic).
pub(crate) fn disarm() {
    DISARMED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Kill the process here if `SNAPINST_FAILPOINT` names this point (only in `failpoints` builds).
#[inline]
pub(crate) fn hit(name: &str) {
    debug_assert!(ALL.iter().any(|p| p.name == name), "unknown failpoint {name}");
    #[cfg(feature = "failpoints")]
    if !DISARMED.load(std::sync::atomic::Ordering::SeqCst)
        && std::env::var("SNAPINST_FAILPOINT").is_ok_and(|v| v == name)
    {
        if std::env::var("SNAPINST_FAILPOINT_ACTION").is_ok_and(|v| v == "reset") {
            // A power cut inside a test VM: reset the machine at once, without syncing anything.
            eprintln!("snapinst: failpoint {name}: resetting the machine");
            let _ = std::fs::write("/proc/sysrq-trigger", b"b");
        }
        if std::env::var("SNAPINST_FAILPOINT_ACTION").is_ok_and(|v| v == "panic") {
            // A bug: the panic unwinds to the top, which recovers the transaction.
            panic!("failpoint {name}");
        }
        eprintln!("snapinst: failpoint {name}: killing the process");
        // SAFETY: raising SIGKILL on ourselves; nothing is borrowed across the call.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}
