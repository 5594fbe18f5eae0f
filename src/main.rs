//! The `snapinst` binary: a thin shell around the library, which holds everything.

fn main() -> std::process::ExitCode {
    snapinst::run()
}
