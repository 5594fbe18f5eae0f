//! `snapinst-docs OUTDIR`: writes what is generated from snapinst's command line into OUTDIR: the man pages
//! `man8/snapinst.8` and `man8/snapinst-<command>.8` (clap_mangen; hidden commands left out) and the completions
//! `completions/snapinst.bash`, `completions/_snapinst` (zsh) and `completions/snapinst.fish` (clap_complete).
//! The hand-written pages (`snapinst-plan(5)`) are in `docs/man/`. Built only with the `docs` feature:
//! `cargo run --features docs --bin snapinst-docs -- OUTDIR` (`make docs`).

use anyhow::{bail, Context, Result};
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// What every generated page says beyond the options, in the sections a system program's page has.
const EXIT_STATUS: &str = "0: committed, or nothing to do. 1: the transaction failed and was rolled back (nothing \
changed). 2: a bad plan or bad usage (nothing changed). 3: recovery is needed (run `snapinst recover`). 4: busy: another process holds the root's lock or dpkg's (nothing \
changed; try again later).";
const FILES: &str = "/etc/snapinst/snapinst.toml, /etc/snapinst/snapinst.d/*.toml: the configuration \
(snapinst.toml(5)). /var/lib/snapinst/roots/: the roots snapinst manages (for `recover --all`). \
<parent of root>/.snapinst-<name of root>/ (for `/`: /.snapinst-root, or beside the root's btrfs subvolume): the \
state area: transaction records, generations, stages and kept conflicts.";

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("a file in a directory"))
        .with_context(|| format!("making the directory of {}", path.display()))?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The page of `cmd` (named `name`), with the sections every page shares.
fn page(cmd: clap::Command, name: &str) -> Result<Vec<u8>> {
    // (clap names a command by a &'static str; this program runs once and exits.)
    let cmd = cmd.name(&*Box::leak(name.to_string().into_boxed_str())).version(env!("CARGO_PKG_VERSION"));
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(concat!("snapinst ", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if name == "snapinst" {
        man.render_subcommands_section(&mut out)?;
    }
    let extra = |out: &mut Vec<u8>, title: &str, text: &str| -> Result<()> {
        let roff = format!(".SH \"{title}\"\n{}\n", text.replace('\\', "\\\\").replace("\n.", "\n\\&."));
        out.extend_from_slice(roff.as_bytes());
        Ok(())
    };
    extra(&mut out, "EXIT STATUS", EXIT_STATUS)?;
    extra(&mut out, "FILES", FILES)?;
    let see = std::iter::once("snapinst(8)".to_string())
        .filter(|_| name != "snapinst")
        .chain(["snapinst-plan(5)".to_string(), "snapinst.toml(5)".to_string()])
        .collect::<Vec<_>>()
        .join(", ");
    extra(&mut out, "SEE ALSO", &see)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else { bail!("usage: snapinst-docs OUTDIR") };
    let out = PathBuf::from(out);
    let cmd = snapinst::command();
    write(&out.join("man8/snapinst.8"), &page(cmd.clone(), "snapinst")?)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("snapinst-{}", sub.get_name());
        write(&out.join(format!("man8/{name}.8")), &page(sub.clone(), &name)?)?;
    }
    for (shell, file) in [(Shell::Bash, "snapinst.bash"), (Shell::Zsh, "_snapinst"), (Shell::Fish, "snapinst.fish")] {
        let mut bytes = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "snapinst", &mut bytes);
        write(&out.join("completions").join(file), &bytes)?;
    }
    Ok(())
}
